"""Head lists and the one replacement of heads' ``z`` (head outputs before ``W_O``):
:func:`write_heads`, used by the interventions' hooks (:func:`z_hooks`) and the fast scans'
batched hooks (:func:`copies_z_hook`)."""

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


def write_heads(z: torch.Tensor, heads: Sequence[int], values: torch.Tensor, *,
                copies: int = 1) -> torch.Tensor:
    """A copy of ``z`` in which some heads' outputs are replaced: the one z-replacement.

    Args:
        z: [copies * B, T, H, d_head] a ``hook_z`` activation; with ``copies > 1`` its rows
            are ``copies`` stacked copies of the same ``B`` prompts (copy ``i`` holds rows
            ``i * B .. (i + 1) * B - 1``).
        heads: ``n`` query-head indices.
        values: [n, B, T, d_head] (or broadcastable to it) new outputs, moved to ``z``'s
            device and dtype.
        copies: ``1``: every row gets ``values[i]`` on head ``heads[i]`` (``heads`` distinct);
            ``n``: copy ``i`` gets ``values[i]`` on head ``heads[i]`` only, so one batched pass
            intervenes on a different head in each copy (the fast scans).

    Returns:
        [copies * B, T, H, d_head]: ``z`` is never modified; only the targeted entries differ.
    """
    count = len(heads)
    if copies not in (1, count):
        raise ValueError(f"copies must be 1 or len(heads) = {count}, got {copies}")
    total, seq, n_heads, d_head = z.shape
    if total % copies:
        raise ValueError(f"z has {total} rows, not a multiple of copies = {copies}")
    rows = total // copies
    out = z.clone().reshape(copies, rows, seq, n_heads, d_head)
    head_index = torch.as_tensor(list(heads), dtype=torch.long, device=z.device)
    copy_index = (torch.arange(count, device=z.device) if copies == count > 1
                  else torch.zeros(count, dtype=torch.long, device=z.device))
    # advanced indices around slices: the indexed view is [n, B, T, d_head]
    out[copy_index, :, :, head_index] = values.to(device=z.device, dtype=z.dtype).expand(
        count, rows, seq, d_head)
    return out.reshape(total, seq, n_heads, d_head)


def copies_z_hook(heads: Sequence[int], values: torch.Tensor, copies: int) -> HookFn:
    """A ``hook_z`` hook that applies :func:`write_heads` (copy ``i`` of ``copies`` stacked
    copies of the prompts gets ``values[i]`` [B, T, d_head] on head ``heads[i]``)."""

    def hook(z: torch.Tensor, hook: Any = None) -> torch.Tensor:
        return write_heads(z, heads, values, copies=copies)

    return hook


class OnDevice:
    """Tensors kept on the model's main device, handed out on the device that asks for them.

    A model spread over devices (``load_model(..., device_map=...)``) runs each layer's hooks
    on that layer's device; ``on_device[key, device]`` moves the stored tensor there once and
    reuses the copy (a plain lookup on a single-device model).
    """

    def __init__(self, tensors: dict[Any, torch.Tensor]) -> None:
        self.tensors = tensors
        self._moved: dict[tuple[Any, torch.device], torch.Tensor] = {}

    def __getitem__(self, key_device: tuple[Any, torch.device]) -> torch.Tensor:
        key, device = key_device
        tensor = self.tensors[key]
        if tensor.device == device:
            return tensor
        if (key, device) not in self._moved:
            self._moved[(key, device)] = tensor.to(device)
        return self._moved[(key, device)]


# transform(z_head [B, T, d_head], layer, head, positions [B, T]) -> new z_head [B, T, d_head];
# positions are the absolute positions of the columns (headprobe.runtime.positions).
ZTransform = Callable[[torch.Tensor, int, int, torch.Tensor], torch.Tensor]


def z_hooks(spec: ModelSpec, grouped: dict[int, list[int]], transform: ZTransform) -> HookList:
    """One ``hook_z`` ([B, T, H, d_head]) hook per layer applying ``transform`` to each
    targeted head (each sees the received ``z``); the received tensor is never modified
    (:func:`write_heads` returns a new one). ``transform`` gets ``z``'s device in its
    tensors (the layer's device on a model spread over devices) and returns a tensor on
    any device (moved to ``z``'s)."""
    hooks: HookList = []
    for layer, head_list in grouped.items():

        def hook(z: torch.Tensor, hook: Any, layer: int = layer,
                 head_list: tuple[int, ...] = tuple(head_list)) -> torch.Tensor:
            batch, seq, _, d_head = z.shape
            positions = query_positions(batch, seq, z.device)
            values = torch.stack([
                transform(z[:, :, head], layer, head, positions).to(z.device, z.dtype).expand(
                    batch, seq, d_head)
                for head in head_list])  # [n, B, T, d_head]
            return write_heads(z, head_list, values)

        hooks.append((spec.hooks.at("z", layer), hook))
    return hooks
