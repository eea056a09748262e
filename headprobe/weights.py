"""Per-head weight matrices and Hugging Face modules read off a bridge, in one place.

The bridge exposes each block's output projection split by head as ``attn.W_O``
([H, d_head, d_model]); it handles ``nn.Linear`` (Llama, Gemma) and GPT-2's ``Conv1D`` alike,
so every module that needs a head's write into the residual stream reads it here.
"""

from __future__ import annotations

from typing import Any

import torch

from headprobe.arch import ModelSpec
from headprobe.placement import is_placed, model_device, onloaded


def head_output_weights(model: Any, spec: ModelSpec, layer: int | None = None) -> torch.Tensor:
    """``W_O`` per head, detached: [L, H, d_head, d_model], or [H, d_head, d_model] for ``layer``.

    A head's write into the residual stream is ``z_h @ W_O[layer, h]`` (plus the layer's output
    bias, which belongs to no head).
    """
    if layer is None:
        expected: tuple[int, ...] = (spec.n_layers, spec.n_heads, spec.d_head, spec.d_model)
        if not placed(model):
            weights = model.W_O.detach()
        else:  # layer by layer, each loaded where accelerate keeps it, gathered on one device
            weights = torch.stack([_offloaded_w_o(model, spec, index)
                                   for index in range(spec.n_layers)])
    else:
        spec.check_layer(layer)
        weights = (_offloaded_w_o(model, spec, layer) if placed(model)
                   else model.blocks[layer].attn.W_O.detach())
        expected = (spec.n_heads, spec.d_head, spec.d_model)
    if tuple(weights.shape) != expected:
        raise RuntimeError(f"bridge W_O has shape {tuple(weights.shape)}, expected {expected}")
    return weights


def placed(model: Any) -> bool:
    """Whether ``model`` was spread over devices or offloaded by a device map
    (:mod:`headprobe.placement`): its weights must then be read through :func:`read_weight`
    or :func:`~headprobe.placement.onloaded`; the predicate of
    :func:`headprobe.placement.is_placed`, so a one-device map is not placed."""
    return is_placed(model.original_model)


def read_weight(model: Any, module: torch.nn.Module, name: str = "weight") -> torch.Tensor:
    """``module.<name>`` detached, on the model's main device: loaded first when a device map
    offloaded it (``meta`` outside a forward pass), copied so it outlives the load."""
    with onloaded(module):
        tensor = getattr(module, name).detach()
        if placed(model):
            tensor = tensor.to(model_device(model), copy=True)
    return tensor


def _offloaded_w_o(model: Any, spec: ModelSpec, layer: int) -> torch.Tensor:
    """Layer ``layer``'s ``W_O`` [H, d_head, d_model] of a model spread by a device map, read
    with the layer's weights loaded and moved to the main device."""
    with onloaded(hf_module(model, f"{spec.facts.layers_path}.{layer}")):
        return model.blocks[layer].attn.W_O.detach().to(model_device(model), copy=True)


def hf_module(model: Any, path: str, *, bridged: bool = False) -> Any:
    """The module at ``path`` (an :class:`~headprobe.arch.ArchitectureFacts` path such as
    ``model.norm``) under ``model.original_model``.

    ``bridged=False``: bridge wrappers unwrapped, the plain HF module (to read weights).
    ``bridged=True``: as the HF model holds it, bridge components included, so that running
    it fires the bridge's hooks (the layer runner runs these).
    """
    module = model.original_model if bridged else unwrap(model.original_model)
    for part in path.split("."):
        module = module[int(part)] if part.isdigit() else getattr(module, part)
        if not bridged:
            module = unwrap(module)
    return module


def unwrap(module: Any) -> Any:
    """The original HF module behind a bridge component (the module itself otherwise)."""
    while getattr(module, "_original_component", None) is not None:
        module = module._original_component
    return module
