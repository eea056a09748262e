"""Per-head weight matrices and Hugging Face modules read off a bridge, in one place.

The bridge exposes each block's output projection split by head as ``attn.W_O``
([H, d_head, d_model]); it handles ``nn.Linear`` (Llama, Gemma) and GPT-2's ``Conv1D`` alike,
so every module that needs a head's write into the residual stream reads it here.
"""

from __future__ import annotations

from typing import Any

import torch

from headprobe.arch import ModelSpec


def head_output_weights(model: Any, spec: ModelSpec, layer: int | None = None) -> torch.Tensor:
    """``W_O`` per head, detached: [L, H, d_head, d_model], or [H, d_head, d_model] for ``layer``.

    A head's write into the residual stream is ``z_h @ W_O[layer, h]`` (plus the layer's output
    bias, which belongs to no head).
    """
    if layer is None:
        weights = model.W_O.detach()
        expected: tuple[int, ...] = (spec.n_layers, spec.n_heads, spec.d_head, spec.d_model)
    else:
        spec.check_layer(layer)
        weights = model.blocks[layer].attn.W_O.detach()
        expected = (spec.n_heads, spec.d_head, spec.d_model)
    if tuple(weights.shape) != expected:
        raise RuntimeError(f"bridge W_O has shape {tuple(weights.shape)}, expected {expected}")
    return weights


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
