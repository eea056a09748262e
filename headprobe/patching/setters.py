"""Setters: write a source activation into the target run at one hook, for a selection.

A :class:`Setter` names a hook, a selection along the head axis and a token position. The
constructors :func:`head_z`, :func:`head_q`, :func:`head_k`, :func:`head_v`, :func:`resid`,
:func:`mlp_out` and :func:`attn_out` read the hook-name templates from ``spec.hooks``.
:func:`run_with_setters` runs one batch with setters applied (and activations observed through
:func:`headprobe.runtime.hooks.capture`).

With grouped-query attention keys and values live per *kv head* (``hook_k``/``hook_v``
[B, T, H_kv, d_head]): a k or v setter names kv heads and changes every query head of the
group (``spec.kv_head(h)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from headprobe.arch import ModelSpec
from headprobe.errors import HeadIndexError, PromptPairError
from headprobe.inputs import Batch
from headprobe.runtime.forward import forward_batch
from headprobe.runtime.hooks import Hook, capture, check_fired
from headprobe.types import Position


@dataclass(frozen=True)
class Setter:
    """Write a source activation into the target one at one hook, for a selection.

    Attributes:
        hook: full hook name (e.g. ``blocks.3.attn.hook_z``).
        index: entries along the head axis (dim 2) to write, e.g. query heads for ``z``/``q``
            or kv heads for ``k``/``v``; ``None`` writes the whole vector (residual, MLP).
        position: token position (dim 1): an int (absolute, the same for every prompt),
            ``"last"`` (each prompt's last real token) or ``None`` (all positions).
    """

    hook: str
    index: tuple[int, ...] | None = None
    position: Position = None

    def write(self, target: torch.Tensor, source: torch.Tensor,
              last: torch.Tensor | None = None) -> None:
        """Overwrite the selection of ``target`` with ``source``, in place.

        Args:
            target, source: activations of the same shape, [B, T, ...] (``[B, T, H, d]`` for
                per-head hooks, ``[B, T, d_model]`` for residual / MLP hooks).
            last: [B] last real position of each prompt (needed for ``"last"``).
        """
        if target.shape != source.shape:
            raise PromptPairError(
                f"cannot patch {self.hook}: source activation has shape "
                f"{tuple(source.shape)} but the target has {tuple(target.shape)}; clean and "
                "corrupt prompts must have the same token length"
            )
        heads: Any = slice(None) if self.index is None else list(self.index)
        if self.position is None:
            if self.index is None:
                target.copy_(source)
            else:
                target[:, :, heads] = source[:, :, heads]
            return
        if self.position == "last":
            if last is None:
                raise ValueError("position 'last' needs the prompts' last positions")
            rows = torch.arange(target.shape[0], device=target.device)
            pos = last.to(target.device)
            picked = target[rows, pos]
            picked[:, heads] = source[rows, pos][:, heads]
            target[rows, pos] = picked
            return
        position = int(self.position)
        if not 0 <= position < target.shape[1]:
            raise HeadIndexError(
                f"position {position} is outside prompts of {target.shape[1]} tokens "
                f"(hook {self.hook}); positions count from 0 (BOS), use 'last' for each "
                "prompt's final token"
            )
        target[:, position, heads] = source[:, position, heads]


def _heads(values: int | Sequence[int], limit: int, what: str, layer: int,
           spec: ModelSpec) -> tuple[int, ...]:
    items = (values,) if isinstance(values, int) else tuple(values)
    for value in items:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < limit:
            raise HeadIndexError(
                f"{what} {value!r} is out of range: {spec.name} has {what}s 0..{limit - 1} "
                f"in each layer (asked for layer {layer})"
            )
    return items


def head_z(spec: ModelSpec, layer: int, heads: int | Sequence[int],
           position: Position = None) -> Setter:
    """Setter of query heads' outputs ``z`` (``hook_z`` [B, T, H, d_head]) at ``layer``."""
    spec.check_layer(layer)
    return Setter(spec.hooks.at("z", layer), _heads(heads, spec.n_heads, "head", layer, spec),
                  position)


def head_q(spec: ModelSpec, layer: int, heads: int | Sequence[int],
           position: Position = None) -> Setter:
    """Setter of query heads' queries (``hook_q`` [B, T, H, d_head]): their query input."""
    spec.check_layer(layer)
    return Setter(spec.hooks.at("q", layer), _heads(heads, spec.n_heads, "head", layer, spec),
                  position)


def head_k(spec: ModelSpec, layer: int, kv_heads: int | Sequence[int],
           position: Position = None) -> Setter:
    """Setter of **kv heads'** keys (``hook_k`` [B, T, H_kv, d_head]).

    With grouped-query attention a kv head serves ``spec.group_size`` query heads; all of
    them see the patched key.
    """
    spec.check_layer(layer)
    return Setter(spec.hooks.at("k", layer),
                  _heads(kv_heads, spec.n_kv_heads, "kv head", layer, spec), position)


def head_v(spec: ModelSpec, layer: int, kv_heads: int | Sequence[int],
           position: Position = None) -> Setter:
    """Setter of **kv heads'** values (``hook_v`` [B, T, H_kv, d_head]); see :func:`head_k`."""
    spec.check_layer(layer)
    return Setter(spec.hooks.at("v", layer),
                  _heads(kv_heads, spec.n_kv_heads, "kv head", layer, spec), position)


def resid(spec: ModelSpec, layer: int, where: Literal["pre", "post"] = "pre",
          position: Position = None) -> Setter:
    """Setter of the residual stream (``hook_resid_{where}`` [B, T, d_model]) at ``layer``.

    ``mid`` is not offered: on a TransformerLens bridge ``hook_resid_mid`` is the MLP
    branch's input (``ln2.hook_in``), so writing it would change the MLP's input but not the
    residual stream that the next layers read.
    """
    spec.check_layer(layer)
    if where not in ("pre", "post"):
        raise ValueError(f"where must be 'pre' or 'post', got {where!r}")
    return Setter(spec.hooks.at(f"resid_{where}", layer), None, position)


def mlp_out(spec: ModelSpec, layer: int, position: Position = None) -> Setter:
    """Setter of an MLP's output (``hook_mlp_out`` [B, T, d_model])."""
    spec.check_layer(layer)
    return Setter(spec.hooks.at("mlp_out", layer), None, position)


def attn_out(spec: ModelSpec, layer: int, position: Position = None) -> Setter:
    """Setter of a whole attention layer's output (``hook_attn_out`` [B, T, d_model])."""
    spec.check_layer(layer)
    return Setter(spec.hooks.at("attn_out", layer), None, position)


def setter_hooks(patches: Sequence[tuple[Setter, torch.Tensor]],
                 last: torch.Tensor | None) -> list[Hook]:
    """One hook per patched hook point applying its setters in order (on a clone).

    ``patches``: ``(setter, source)`` with ``source`` the full activation at ``setter.hook``
    ([B, T, ...]), cast to the target's device and dtype.
    """
    by_hook: dict[str, list[tuple[Setter, torch.Tensor]]] = {}
    for setter, source in patches:
        by_hook.setdefault(setter.hook, []).append((setter, source))

    def make(todo: list[tuple[Setter, torch.Tensor]]) -> Any:
        def hook(activation: torch.Tensor, hook: Any = None) -> torch.Tensor:
            out = activation.clone()
            for setter, source in todo:
                setter.write(out, source.to(out.device, out.dtype), last)
            return out
        return hook

    return [(name, make(todo)) for name, todo in by_hook.items()]


def run_with_setters(
    model: Any,
    batch: Batch,
    patches: Sequence[tuple[Setter, torch.Tensor]] = (),
    observe: Sequence[str] = (),
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run one batch with setters applied; optionally record activations.

    Args:
        model: a TransformerLens bridge.
        batch: the target input.
        patches: ``(setter, source)`` pairs; ``source`` is the full activation at
            ``setter.hook`` for this batch ([B, T, ...]). Several setters may share a hook;
            they are applied in order.
        observe: hook names whose (patched) activations to return.

    Returns:
        ``(logits [B, T, V], {hook: activation})``. Runs under ``torch.inference_mode``;
        the hooks are removed when it returns, also on error.
    """
    hooks = setter_hooks(patches, batch.last)
    with torch.inference_mode(), capture(model, list(observe), extra_hooks=hooks) as seen:
        logits = forward_batch(model, batch)
    check_fired(seen, list(observe))
    return logits, dict(seen)
