"""Batched single-head interventions for the fast scans.

A layer's heads are scanned in one pass: the batch is stacked ``c`` times along the batch
dimension ([c * B, ...], copy-major: rows ``i * B .. (i + 1) * B - 1`` are copy ``i``) and copy
``i`` intervenes on head ``heads[i]`` only. :func:`copies_hook` builds that hook for each
method the fast scans take:

- ``patch`` / ``zero`` / ``mean``: head ``heads[i]``'s ``z`` replaced
  (:func:`headprobe.interventions.heads.copies_z_hook`);
- ``scale_output``: head ``heads[i]``'s ``z`` multiplied by ``eps`` ("scaling contribution",
  Zhou et al. 2025, "On the Role of Attention Heads in Large Language Model Safety";
  :func:`headprobe.interventions.output.scale_output` for one head);
- ``uniform_attention``: head ``heads[i]``'s query multiplied by ``eps`` after any query norm
  ("undifferentiated attention", the same paper;
  :func:`headprobe.interventions.query.uniform_attention` for one head), at the hook
  :func:`~headprobe.interventions.query.query_hook_point` names (Gemma 3: after its q norm).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from headprobe.arch import ModelSpec
from headprobe.errors import InterventionError, UnknownMethodError
from headprobe.interventions import build_hooks
from headprobe.interventions.heads import HookFn, HookList, copies_z_hook
from headprobe.interventions.query import query_hook_point
from headprobe.registry import unknown_name_message
from headprobe.types import DEFAULT_EPS, SCALING_METHODS, SCAN_METHODS

__all__ = ["SCALING_METHODS", "copies_hook", "scale_copies", "scaling_hooks"]


def scale_copies(tensor: torch.Tensor, heads: Sequence[int], factor: float, copies: int,
                 axis: int) -> torch.Tensor:
    """Copy ``i`` of ``tensor`` [c * B, ..., H (at ``axis``), ...] with head ``heads[i]``
    multiplied by ``factor``; a new tensor (the input is not modified).

    One broadcast multiply by a [c, H] table of factors (``factor`` at ``(i, heads[i])``,
    1 elsewhere).
    """
    n_heads = tensor.shape[axis]
    rows = tensor.shape[0] // copies
    table = torch.ones(copies, n_heads, dtype=tensor.dtype, device=tensor.device)
    table[torch.arange(copies), torch.as_tensor(list(heads))] = factor
    shape = [copies, 1] + [1] * (tensor.ndim - 1)  # [c, 1 (B), ...]
    shape[axis + 1] = n_heads
    scaled = tensor.reshape(copies, rows, *tensor.shape[1:]) * table.reshape(shape)
    return scaled.reshape(tensor.shape)


def copies_hook(model: Any, spec: ModelSpec, method: str, layer: int, heads: Sequence[int],
                copies: int, *, eps: float = DEFAULT_EPS,
                replacement: torch.Tensor | None = None) -> tuple[str, HookFn]:
    """``(hook name, hook)`` giving copy ``i`` the intervention ``method`` on ``heads[i]``.

    Args:
        method: ``patch`` / ``zero`` / ``mean`` (``replacement`` [c, B, T, d_head] z values,
            or a broadcastable zero tensor), ``scale_output`` or ``uniform_attention``
            (``eps``).
    """
    if method in ("patch", "zero", "mean"):
        if replacement is None:
            raise InterventionError(f"method {method!r} needs replacement z values")
        return spec.hooks.at("z", layer), copies_z_hook(heads, replacement, copies)
    if method == "scale_output":
        name, axis = spec.hooks.at("z", layer), 2  # [B, T, H, d_head]
    elif method == "uniform_attention":
        name, axis = query_hook_point(model, spec, layer)
    else:
        raise UnknownMethodError(unknown_name_message("fast-scan method", method, SCAN_METHODS))

    def hook(tensor: torch.Tensor, hook: Any = None) -> torch.Tensor:
        return scale_copies(tensor, heads, eps, copies, axis)

    return name, hook


def scaling_hooks(model: Any, heads: Sequence[Sequence[int]], method: str,
                  eps: float) -> HookList:
    """The registered intervention ``method`` (``scale_output`` or ``uniform_attention``) on
    every head of ``heads`` at once, scale ``eps`` (the loop references' route)."""
    option = "eps" if method == "uniform_attention" else "factor"
    return build_hooks(model, [tuple(h) for h in heads], method, **{option: eps})
