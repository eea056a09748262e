"""Interventions on a head's output ``z_h`` ([B, T, d_head] per head at ``hook_z``): zero,
scale (output or value vectors) and add a steering vector at chosen absolute positions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch

from headprobe.errors import InterventionError
from headprobe.interventions.heads import HookList, finite, prepare, z_hooks
from headprobe.models import describe_model
from headprobe.runtime.hooks import model_device, onloaded
from headprobe.types import DEFAULT_EPS, Head
from headprobe.weights import head_output_weights


def zero_ablation(model: Any, heads: Iterable[Sequence[int]]) -> HookList:
    """Zero ablation: ``z_h = 0`` for every targeted head ([B, T, d_head] at ``hook_z``).

    The head then adds nothing to the residual stream (output biases, which are shared by
    all heads of a layer, stay).
    """
    spec, grouped = prepare(model, heads)
    return z_hooks(spec, grouped, lambda z, layer, head, positions: torch.zeros_like(z))


def scale_output(
    model: Any, heads: Iterable[Sequence[int]], factor: float = DEFAULT_EPS
) -> HookList:
    """Scale each targeted head's output: ``z_h <- factor * z_h``.

    With a small ``factor`` (default :data:`~headprobe.types.DEFAULT_EPS`, 1e-5) this is the
    "scaling contribution" ablation of Zhou et al. 2025, "On the Role of Attention Heads in
    Large Language Model Safety".
    """
    spec, grouped = prepare(model, heads)
    factor = finite(factor, "factor")
    return z_hooks(spec, grouped, lambda z, layer, head, positions: z * factor)


def scale_value(model: Any, heads: Iterable[Sequence[int]], alpha: float = 2.0) -> HookList:
    """Value scaling (Yu et al. 2023, "Characterizing Mechanisms for Factual Recall in
    Language Models"): multiply head ``h``'s value vectors by ``alpha``.

    Implemented on ``z`` per query head: ``z_h = A_h V_{kv(h)}`` is linear in ``V``, so
    ``A_h (alpha V) = alpha z_h`` exactly (value biases included, since they are part of
    ``V``). Under grouped-query attention the value head ``V_{kv(h)}`` is shared by the
    ``H / H_kv`` query heads of its group; scaling ``hook_v`` would scale all of them, while
    scaling ``z_h`` scales the value vectors *as read by head h only*, which is the
    per-head intervention of the paper (and the same thing when there is no GQA).
    """
    spec, grouped = prepare(model, heads)
    alpha = finite(alpha, "alpha")
    return z_hooks(spec, grouped, lambda z, layer, head, positions: z * alpha)


def head_output_matrix(model: Any, layer: int, head: int) -> torch.Tensor:
    """``W_O^h`` [d_head, d_model]: head ``h``'s block of the output projection (see
    :func:`headprobe.weights.head_output_weights`)."""
    spec = describe_model(model)
    spec.check_head(layer, head)
    with onloaded(model.blocks[layer]):  # weights offloaded by a device map: loaded here
        return head_output_weights(model, spec, layer)[head].clone()


def add_to_output(
    model: Any,
    heads: Iterable[Sequence[int]],
    vector: torch.Tensor,
    *,
    coefficient: float = 1.0,
    space: Literal["z", "residual"] = "z",
    positions: int | Sequence[int] | None = None,
) -> HookList:
    """Steer by adding a vector to each targeted head's output.

    Args:
        vector: ``space="z"``: a [d_head] vector ``u`` added to ``z_h`` before ``W_O`` (the
            residual stream then moves by ``c * u W_O^h``). ``space="residual"``: a
            [d_model] vector ``r``; it is mapped to ``u = r pinv(W_O^h)``, the least-squares
            z-space vector, so the residual moves by the projection of ``c * r`` onto the
            head's output space (the part a single head can write).
        coefficient: ``c``.
        positions: absolute token positions to steer (position within each prompt, BOS = 0,
            whatever the padding, also during KV-cached decoding; see
            :mod:`headprobe.runtime.positions`); ``None``: all.
    """
    spec, grouped = prepare(model, heads)
    coefficient = finite(coefficient, "coefficient")
    vector = torch.as_tensor(vector).detach()
    if space not in ("z", "residual"):
        raise InterventionError(f"space must be 'z' or 'residual', got {space!r}")
    expected = spec.d_head if space == "z" else spec.d_model
    if vector.shape != (expected,):
        raise InterventionError(
            f"add_to_output with space={space!r} needs a vector of shape [{expected}], got "
            f"{tuple(vector.shape)}")
    if not bool(torch.isfinite(vector).all()):
        raise InterventionError("add_to_output: the vector has NaN or infinite entries")
    device = model_device(model)
    per_head: dict[Head, torch.Tensor] = {}
    for layer, hs in grouped.items():
        for head in hs:
            if space == "z":
                u = vector.float()
            else:
                w_o = head_output_matrix(model, layer, head).float().cpu()  # [d_head, d_model]
                u = vector.float() @ torch.linalg.pinv(w_o)
            per_head[(layer, head)] = (coefficient * u).to(device)
    if positions is None:
        selected = None
    else:
        listed = [positions] if isinstance(positions, int) else list(positions)
        if any(int(p) < 0 for p in listed):
            raise InterventionError(
                f"add_to_output: positions are absolute (0 = first token), got {listed}")
        selected = torch.tensor([int(p) for p in listed], dtype=torch.long, device=device)

    def transform(z: torch.Tensor, layer: int, head: int, at: torch.Tensor) -> torch.Tensor:
        added = per_head[(layer, head)].to(z.device, z.dtype)  # z: on its layer's device
        if selected is None:
            return z + added
        hit = torch.isin(at, selected.to(at.device))  # [B, T]
        return z + hit[..., None].to(z.dtype) * added

    return z_hooks(spec, grouped, transform)
