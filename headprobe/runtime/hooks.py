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
from contextlib import ExitStack, contextmanager
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
    """Where the model's inputs go: the device of its first parameter, or for a model
    dispatched over several devices its main device (:func:`hf_input_device`)."""
    return hf_input_device(model.original_model)


def hf_input_device(hf_model: torch.nn.Module) -> torch.device:
    """The device a Hugging Face model takes its inputs on and returns its outputs on.

    A model dispatched by accelerate (``dispatch_model``) carries a hook on its top module
    whose execution device is the main device (inputs are moved there, outputs come back on
    the input's device); otherwise the first parameter's device that is not ``meta``
    (CPU when there is none).
    """
    device = _execution_device(getattr(hf_model, "_hf_hook", None))
    if device is not None:
        return device
    for param in hf_model.parameters():
        if param.device.type != "meta":
            return param.device
    return torch.device("cpu")


def _execution_device(hook: Any) -> torch.device | None:
    """The execution device of an accelerate hook (or of the first hook of a sequence)."""
    if hook is None:
        return None
    for inner in getattr(hook, "hooks", ()):  # SequentialHook
        found = _execution_device(inner)
        if found is not None:
            return found
    device = getattr(hook, "execution_device", None)
    if device is None:
        return None
    return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)


@contextmanager
def onloaded(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Within the block, the weights of ``module`` and its submodules that accelerate offloaded
    (``meta`` placeholders of a model dispatched with ``"cpu"`` / ``"disk"`` entries) are
    loaded on their execution devices; they are offloaded again afterwards, also on error.
    A no-op for modules without offloaded weights. Read weights inside the block and copy
    what is kept (``.detach().clone()`` or ``.to(...)``)."""
    with ExitStack() as stack:
        hooked = [m for m in module.modules() if "_hf_hook" in vars(m)]
        if hooked:
            from accelerate.utils import align_module_device

            for submodule in hooked:
                stack.enter_context(align_module_device(submodule))
        yield module


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
