"""Head lists and the shared hook builder on ``z`` (head outputs before ``W_O``)."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from headprobe.arch import ModelSpec
from headprobe.errors import InterventionError
from headprobe.models import describe_model
from headprobe.runtime.positions import query_positions
from headprobe.types import Head

HookFn = Callable[[torch.Tensor, Any], torch.Tensor | None]
HookList = list[tuple[str, HookFn]]
Factory = Callable[..., HookList]

DEFAULT_EPS = 1e-5


def normalize_heads(spec: ModelSpec, heads: Iterable[Sequence[int]]) -> list[Head]:
    """Validate ``(layer, head)`` pairs; returns them sorted without duplicates.

    Raises:
        InterventionError: no heads, or an entry that is not a pair.
        HeadIndexError: a layer or head outside the model.
    """
    if isinstance(heads, tuple) and len(heads) == 2 and all(
        isinstance(x, int) for x in heads
    ):
        raise InterventionError(
            f"heads must be a list of (layer, head) pairs; got one pair {heads!r}: "
            f"wrap it as [{heads!r}]"
        )
    out: set[Head] = set()
    for entry in heads:
        try:
            layer, head = entry
        except (TypeError, ValueError) as error:
            raise InterventionError(
                f"each head must be a (layer, head) pair, got {entry!r}") from error
        layer, head = _as_int(layer), _as_int(head)
        out.add(spec.check_head(layer, head))
    if not out:
        raise InterventionError(
            "the head list is empty: give at least one (layer, head) pair, e.g. [(3, 1)]")
    return sorted(out)


def _as_int(value: Any) -> Any:
    try:
        return operator.index(value)  # accepts numpy / torch integers, refuses floats
    except TypeError:
        return value  # check_head reports it


def heads_by_layer(heads: Iterable[Head]) -> dict[int, list[int]]:
    """``{layer: [heads]}`` in ascending order."""
    grouped: dict[int, list[int]] = {}
    for layer, head in sorted(set(heads)):
        grouped.setdefault(layer, []).append(head)
    return grouped


def prepare(model: Any, heads: Iterable[Sequence[int]]) -> tuple[ModelSpec, dict[int, list[int]]]:
    """The model's spec and the validated heads grouped by layer."""
    spec = describe_model(model)
    return spec, heads_by_layer(normalize_heads(spec, heads))


def finite(value: float, name: str) -> float:
    """``value`` as a float; :class:`InterventionError` if it is NaN or infinite."""
    value = float(value)
    if not math.isfinite(value):
        raise InterventionError(f"{name} must be a finite number, got {value}")
    return value


# transform(z_head [B, T, d_head], layer, head, positions [B, T]) -> new z_head [B, T, d_head];
# positions are the absolute positions of the columns (headprobe.runtime.positions).
ZTransform = Callable[[torch.Tensor, int, int, torch.Tensor], torch.Tensor]


def z_hooks(spec: ModelSpec, grouped: dict[int, list[int]], transform: ZTransform) -> HookList:
    """One ``hook_z`` ([B, T, H, d_head]) hook per layer applying ``transform`` to each
    targeted head; the received tensor is never modified (a clone is returned)."""
    hooks: HookList = []
    for layer, head_list in grouped.items():

        def hook(z: torch.Tensor, hook: Any, layer: int = layer,
                 head_list: tuple[int, ...] = tuple(head_list)) -> torch.Tensor:
            positions = query_positions(z.shape[0], z.shape[1], z.device)
            out = z.clone()
            for head in head_list:
                out[:, :, head] = transform(z[:, :, head], layer, head, positions).to(z.dtype)
            return out

        hooks.append((spec.hooks.at("z", layer), hook))
    return hooks
