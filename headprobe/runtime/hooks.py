"""Attaching hooks and capturing activations: the one place headprobe touches bridge hooks.

Every hook headprobe attaches goes through :func:`attached` (``model.hooks``), so it is
removed when the block ends, also when it raises. :func:`capture` is the one capture
mechanism: it records (detached clones of) activations at named hook points during whatever
forward passes run inside its block, never changing them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

HookFn = Callable[..., Any]
Hook = tuple[str, HookFn]


@contextmanager
def attached(model: Any, fwd_hooks: Sequence[Hook]) -> Iterator[Any]:
    """Attach forward hooks for the duration of a block; they are removed even on error."""
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        yield model


def model_device(model: Any) -> torch.device:
    """The device of the model's first parameter."""
    return next(model.original_model.parameters()).device


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
