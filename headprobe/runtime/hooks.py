"""Attaching hooks and capturing activations: the one place headprobe touches bridge hooks.

Every hook headprobe attaches goes through :func:`attached` (``model.hooks``), so it is
removed when the block ends, also when it raises. :func:`capture` is the one capture
mechanism: it records (detached clones of) activations at named hook points during whatever
forward passes run inside its block, never changing them.

Models spread over devices (``load_model(..., device_map=...)``, Hugging Face accelerate):
:func:`model_device` is the device inputs go to and full-forward outputs come back on (the
main device), not the first parameter's (which may be a ``meta`` placeholder of a weight
offloaded to disk); activations seen by hooks live on their layer's device, so hooks move
what they combine to the activation's device. :func:`onloaded` materializes offloaded weights
for code that reads them outside a forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from headprobe.arch import ModelSpec
from headprobe.errors import InterventionError
from headprobe.placement import (  # re-exported: device facts live in placement
    hf_input_device as hf_input_device,
)
from headprobe.placement import model_device as model_device
from headprobe.placement import onloaded as onloaded

HookFn = Callable[..., Any]
Hook = tuple[str, HookFn]


@contextmanager
def attached(model: Any, fwd_hooks: Sequence[Hook]) -> Iterator[Any]:
    """Attach forward hooks for the duration of a block; they are removed even on error."""
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        yield model


def model_dtype(model: Any) -> torch.dtype:
    """The dtype of the model's first floating-point parameter."""
    for param in model.original_model.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32


class Capture(dict[str, torch.Tensor]):
    """``{hook name: activation}`` recorded by :func:`capture` (the last value seen wins)."""


def capture_hooks(names: Sequence[str], store: dict[str, torch.Tensor], *,
                  clone: bool = True) -> list[Hook]:
    """Hooks that record the activation at each of ``names`` into ``store`` (never edit it).

    ``clone=False`` keeps the tensor itself (still detached): cheaper, and safe when nothing
    later edits it in place.
    """

    def make(name: str) -> HookFn:
        def hook(activation: torch.Tensor, hook: Any = None) -> None:
            value = activation.detach()
            store[name] = value.clone() if clone else value
        return hook

    return [(name, make(name)) for name in dict.fromkeys(names)]


@contextmanager
def capture(model: Any, names: Sequence[str], *, clone: bool = True,
            extra_hooks: Sequence[Hook] = ()) -> Iterator[Capture]:
    """Record the activations at hook points ``names`` during the block.

    Example::

        with capture(model, ["blocks.0.attn.hook_z"]) as seen:
            model(tokens)
        z0 = seen["blocks.0.attn.hook_z"]   # [B, T, H, d_head]

    ``extra_hooks`` are attached alongside (e.g. an intervention whose effect is captured);
    they run in the order given, capture hooks last, so a captured value includes the edits
    of hooks at the same point.
    """
    store = Capture()
    hooks = [*extra_hooks, *capture_hooks(names, store, clone=clone)]
    with attached(model, hooks):
        yield store


def check_fired(store: dict[str, torch.Tensor], names: Sequence[str]) -> None:
    """Raise ``RuntimeError`` naming the hooks that did not fire during a forward pass."""
    missing = [name for name in names if name not in store]
    if missing:
        raise RuntimeError(f"hooks {missing} did not fire during the forward pass")


def query_hook_point(model: Any, spec: ModelSpec, layer: int) -> tuple[str, int]:
    """The hook carrying head queries *after* any query norm, and its head axis.

    - rotary models (Llama, Gemma 3): ``hook_rot_q`` [B, T, H, d_head], after the q norm
      and after rotary; rotary is linear, so scaling here equals scaling before it;
    - models with a q norm but no rotary hook: ``hook_q_normed`` [B, H, T, d_head];
    - otherwise (GPT-2): ``hook_q`` [B, T, H, d_head].

    Scaling the q projection output of a model with a query norm (Gemma 3) does *not*
    make its attention uniform: the norm undoes the scale.
    """
    rot = spec.hooks.at("rot_q", layer)
    if rot in model.hook_dict:
        return rot, 2
    if spec.facts.has_qk_norm:
        normed = spec.hooks.at("q_normed", layer)
        if normed in model.hook_dict:
            return normed, 1
        raise InterventionError(
            f"{spec.name} normalises queries but exposes neither hook_rot_q nor hook_q_normed "
            f"at layer {layer}; uniform attention cannot be applied after the q norm")
    return spec.hooks.at("q", layer), 2
