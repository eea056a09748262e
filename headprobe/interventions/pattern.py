"""Interventions on a head's attention pattern ([B, H, T_q, T_k] at ``hook_pattern``): set a
given pattern, or redistribute the attention sink's mass.

Which keys are visible (causal mask, padding, sliding window) is read from the masked
pre-softmax scores of the same forward pass (``hook_attn_scores``), so both methods respect
padding on either side and work on a one-row decode step ([B, H, 1, T_k])."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from headprobe.arch import ModelSpec
from headprobe.errors import InterventionError
from headprobe.interventions.heads import HookList, OnDevice, finite, prepare
from headprobe.runtime.hooks import model_device
from headprobe.runtime.positions import key_positions, query_positions

# transform(pattern [B, T_q, T_k], visible [B, T_q, T_k] bool, layer, head,
#           query positions [B, T_q], key positions [B, T_k]) -> new pattern [B, T_q, T_k]
PatternTransform = Callable[
    [torch.Tensor, torch.Tensor, int, int, torch.Tensor, torch.Tensor], torch.Tensor]


def pattern_hooks(spec: ModelSpec, grouped: dict[int, list[int]],
                  transform: PatternTransform) -> HookList:
    """A recording hook on ``hook_attn_scores`` (which keys are visible) and an editing hook
    on ``hook_pattern`` per layer."""
    hooks: HookList = []
    for layer, head_list in grouped.items():
        state: dict[str, torch.Tensor] = {}
        index = list(head_list)

        def record(scores: torch.Tensor, hook: Any, state: dict[str, torch.Tensor] = state,
                   index: list[int] = index) -> None:
            selected = scores[:, index]
            state["visible"] = selected > torch.finfo(scores.dtype).min / 2

        def edit(pattern: torch.Tensor, hook: Any, layer: int = layer,
                 state: dict[str, torch.Tensor] = state,
                 index: list[int] = index) -> torch.Tensor:
            visible = state.pop("visible", None)
            if visible is None or visible.shape[-2:] != pattern.shape[-2:]:
                raise InterventionError(f"{hook.name}: no masked scores seen for this pass")
            batch, _, n_query, n_key = pattern.shape
            at_query = query_positions(batch, n_query, pattern.device)
            at_key = key_positions(batch, n_key, pattern.device)
            out = pattern.clone()
            for i, head in enumerate(index):
                out[:, head] = transform(pattern[:, head], visible[:, i], layer, head,
                                         at_query, at_key).to(pattern.dtype)
            return out

        hooks.append((spec.hooks.at("attn_scores", layer), record))
        hooks.append((spec.hooks.at("pattern", layer), edit))
    return hooks


def set_pattern(model: Any, heads: Iterable[Sequence[int]], pattern: torch.Tensor) -> HookList:
    """Replace each targeted head's attention pattern with ``pattern``.

    Args:
        pattern: [T, T] (same for every prompt) or [B, T, T], non-negative and finite,
            square in its last two dimensions, indexed by *absolute* positions
            ``[query position, key position]`` (BOS = 0): a padded row or a KV-cached decode
            step (one query row, [B, H, 1, T_k]) takes the entries of its own positions. It
            must cover every position reached. At run time it is masked to the visible keys
            (causal mask and padding) and each row is renormalised to sum to 1; a row of a
            real query with no mass on its visible keys raises :class:`InterventionError`.
    """
    spec, grouped = prepare(model, heads)
    given = torch.as_tensor(pattern).detach().float()
    if given.ndim not in (2, 3) or given.shape[-1] != given.shape[-2]:
        raise InterventionError(
            f"pattern must be [T, T] or [B, T, T], got shape {tuple(given.shape)}")
    if not bool(torch.isfinite(given).all()) or bool((given < 0).any()):
        raise InterventionError("pattern must be finite and non-negative")
    device = model_device(model)
    stored = OnDevice({"pattern": given.to(device)})  # read on each layer's device

    def transform(old: torch.Tensor, visible: torch.Tensor, layer: int, head: int,
                  at_query: torch.Tensor, at_key: torch.Tensor) -> torch.Tensor:
        given = stored["pattern", old.device]
        reached = int(torch.maximum(at_query.max(), at_key.max())) + 1
        if given.shape[-1] < reached:
            raise InterventionError(
                f"set_pattern: the pattern covers {given.shape[-1]} positions, the input "
                f"reaches {reached}")
        rows, cols = at_query[:, :, None], at_key[:, None, :]
        if given.ndim == 3:
            if given.shape[0] != old.shape[0]:
                raise InterventionError(
                    f"set_pattern: the pattern holds {given.shape[0]} prompts, the batch has "
                    f"{old.shape[0]}")
            batch = torch.arange(old.shape[0], device=old.device)[:, None, None]
            new = given[batch, rows, cols]
        else:
            new = given[rows, cols]
        new = new * visible
        mass = new.sum(-1, keepdim=True)
        has_keys = visible.any(-1, keepdim=True)
        if bool((has_keys & (mass <= 0)).any()):
            raise InterventionError(
                "set_pattern: a query row puts no weight on any visible key; give each row "
                "some mass on positions 0..t")
        return torch.where(has_keys, new / mass.clamp_min(1e-30), torch.zeros_like(new))

    return pattern_hooks(spec, grouped, transform)


def redistribute_sink(model: Any, heads: Iterable[Sequence[int]], beta: float = 0.4) -> HookList:
    """Sink redistribution (Baek et al. 2025, "How Do Large Vision-Language Models See Text in
    Image? Unveiling the Distinctive Role of OCR Heads").

    For each query row with attention ``a`` over visible keys, the sink is the first visible
    key ``s`` (the BOS token of a prompt, padded on either side, also in a decode step). The
    head keeps ``beta * a_s`` on the sink and gives the removed ``(1 - beta) * a_s`` to the
    other visible keys in proportion to their current attention:
    ``a'_j = a_j (1 + (1 - beta) a_s / sum_{k != s} a_k)``. Rows sum to 1 still; rows whose
    other keys carry no attention (e.g. position 0) are unchanged.
    """
    spec, grouped = prepare(model, heads)
    beta = finite(beta, "beta")
    if not 0.0 <= beta <= 1.0:
        raise InterventionError(f"beta must lie in [0, 1], got {beta}")

    def transform(old: torch.Tensor, visible: torch.Tensor, layer: int, head: int,
                  at_query: torch.Tensor, at_key: torch.Tensor) -> torch.Tensor:
        work = old.float() * visible
        sink = visible.long().argmax(-1, keepdim=True)  # first visible key, [B, T_q, 1]
        sink_mass = work.gather(-1, sink)
        rest = work.scatter(-1, sink, 0.0)
        rest_mass = rest.sum(-1, keepdim=True)
        movable = (rest_mass > 0) & visible.any(-1, keepdim=True)
        gain = 1.0 + (1.0 - beta) * sink_mass / rest_mass.clamp_min(1e-30)
        new = (rest * gain).scatter(-1, sink, beta * sink_mass)
        return torch.where(movable, new, old.float())

    return pattern_hooks(spec, grouped, transform)
