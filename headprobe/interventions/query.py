"""Interventions on a head's query: uniform (undifferentiated) attention."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from headprobe.errors import InterventionError
from headprobe.interventions.heads import HookList, finite, prepare
from headprobe.runtime.hooks import query_hook_point as query_hook_point  # re-exported
from headprobe.types import DEFAULT_EPS


def uniform_attention(
    model: Any, heads: Iterable[Sequence[int]], eps: float = DEFAULT_EPS
) -> HookList:
    """Undifferentiated attention (Zhou et al. 2025, "On the Role of Attention Heads in Large
    Language Model Safety"): multiply the head's query by ``eps`` so that every score is
    ~0 and the softmax is uniform over the visible keys, ``1 / (number visible)``
    (``1 / (t + 1)`` at position ``t`` of an unpadded causal prompt).

    The scale is applied after any query norm (see :func:`query_hook_point`); the key,
    value and mask are untouched. It depends on no position, so it acts the same on a
    full pass and on a one-column decode step ([B, 1, H, d_head]).
    """
    spec, grouped = prepare(model, heads)
    eps = finite(eps, "eps")
    hooks: HookList = []
    for layer, head_list in grouped.items():
        name, axis = query_hook_point(model, spec, layer)
        index = torch.tensor(head_list)

        def hook(q: torch.Tensor, hook: Any, axis: int = axis,
                 index: torch.Tensor = index) -> torch.Tensor:
            if q.shape[axis] != spec.n_heads:
                raise InterventionError(
                    f"{hook.name}: expected {spec.n_heads} query heads on axis {axis}, got "
                    f"shape {tuple(q.shape)}")
            scale = torch.ones(spec.n_heads, dtype=q.dtype, device=q.device)
            scale[index.to(q.device)] = eps
            shape = [1] * q.ndim
            shape[axis] = spec.n_heads
            return q * scale.view(shape)

        hooks.append((name, hook))
    return hooks
