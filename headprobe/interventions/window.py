"""Streaming attention on chosen kv heads: only the attention sink and a recent window.

A *streaming head* in DuoAttention (Xiao et al. 2024, "DuoAttention: Efficient Long-Context LLM
Inference with Retrieval and Streaming Heads") and RazorAttention (Tang et al. 2024,
"RazorAttention: Efficient KV Cache Compression Through Retrieval Heads") keeps in its KV cache
only the first ``sink`` tokens of the sequence (the attention sinks) and the ``window`` most
recent tokens; every other key is dropped. :func:`streaming_attention` makes a model behave as
if the chosen kv heads had such a cache, so a task can be judged under a KV-budget plan
(the retrieval head type's ``kv_budget``).

Definition, for a query at absolute position ``t`` (BOS = 0) of a restricted kv head ``g``,
for every query head ``h`` reading ``g`` (``spec.kv_head(h) == g``)::

    keep(t, s) = visible(t, s) and (s < sink or t - s < window)
    A'_h[t, s] = A_h[t, s] keep(t, s) / sum_s' A_h[t, s'] keep(t, s')

``visible`` is the model's own mask (causal, padding, sliding window), read from the masked
pre-softmax scores ``hook_attn_scores`` of the same forward pass; ``s`` and ``t`` are absolute
positions (:mod:`headprobe.runtime.positions`), so the restriction is the same with left and
right padding and with and without the KV cache. Renormalising the softmax over the kept keys
equals a softmax of the scores masked to the kept keys, i.e. the head really attends only to
sink + window. A row whose kept mass underflows to 0 in the pattern's dtype takes the softmax of
the scores restricted to the kept keys instead. Padding query rows (no visible key) get zeros.
The edit is made at ``hook_pattern`` ([B, H, T_q, T_k]; [B, H, 1, T_k] in a decode step); the
query heads of kv groups outside the plan are returned unchanged.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from headprobe.arch import ModelSpec
from headprobe.errors import HeadIndexError, InterventionError
from headprobe.interventions.heads import HookList
from headprobe.models import describe_model
from headprobe.runtime.positions import key_positions, query_positions
from headprobe.types import KVHead

DEFAULT_SINK = 4
DEFAULT_WINDOW = 32


def normalize_kv_heads(spec: ModelSpec, heads: Iterable[Sequence[int]]) -> list[KVHead]:
    """Validate ``(layer, kv head)`` pairs; returns them sorted without duplicates.

    Raises:
        InterventionError: no pairs, or an entry that is not a pair of integers.
        HeadIndexError: a layer outside ``0..L-1`` or a kv head outside ``0..H_kv-1``.
    """
    if isinstance(heads, tuple) and len(heads) == 2 and all(isinstance(x, int) for x in heads):
        raise InterventionError(
            f"heads must be a list of (layer, kv head) pairs; got one pair {heads!r}: wrap it "
            f"as [{heads!r}]")
    out: set[KVHead] = set()
    for entry in heads:
        try:
            layer, kv = (operator.index(x) for x in entry)
        except (TypeError, ValueError) as error:
            raise InterventionError(
                f"each kv head must be a (layer, kv head) pair of integers, got {entry!r}"
            ) from error
        if not 0 <= layer < spec.n_layers:
            raise HeadIndexError(
                f"layer {layer} is out of range: {spec.name} has layers 0..{spec.n_layers - 1}")
        if not 0 <= kv < spec.n_kv_heads:
            raise HeadIndexError(
                f"kv head {kv} is out of range: {spec.name} has kv heads "
                f"0..{spec.n_kv_heads - 1} per layer (streaming_attention takes kv heads, not "
                "query heads)")
        out.add(KVHead(layer, kv))
    if not out:
        raise InterventionError(
            "the kv head list is empty: give at least one (layer, kv head) pair, e.g. [(3, 1)]")
    return sorted(out)


def query_heads_of(spec: ModelSpec, kv_head: int) -> list[int]:
    """The query heads that read ``kv_head`` (``spec.group_size`` of them)."""
    return [h for h in range(spec.n_heads) if spec.kv_head(h) == kv_head]


def streaming_keep(visible: torch.Tensor, at_query: torch.Tensor, at_key: torch.Tensor,
                   sink: int, window: int) -> torch.Tensor:
    """Which keys a streaming head keeps.

    Args:
        visible: [B, T_q, T_k] bool, the model's own mask.
        at_query: [B, T_q] absolute query positions; at_key: [B, T_k] absolute key positions.

    Returns:
        [B, T_q, T_k] bool: ``visible and (pos_k < sink or pos_q - pos_k < window)``.
    """
    q, k = at_query[:, :, None], at_key[:, None, :]
    return visible & ((k < sink) | (q - k < window))


def streaming_attention(model: Any, heads: Iterable[Sequence[int]], sink: int = DEFAULT_SINK,
                        window: int = DEFAULT_WINDOW) -> HookList:
    """Restrict kv heads to sink + recent window (streaming heads of DuoAttention, Xiao et al.
    2024, and RazorAttention, Tang et al. 2024; see the module docstring for the definition).

    Args:
        model: a causal TransformerLens bridge.
        heads: ``(layer, kv head)`` pairs; every query head of each group is restricted.
        sink: the first ``sink`` absolute positions of each prompt stay visible (>= 0).
        window: keys with ``pos_q - pos_k < window`` stay visible (>= 1; the query's own
            position always).

    Returns:
        hooks: per layer, one recording hook on ``hook_attn_scores`` ([B, H, T_q, T_k],
        masked pre-softmax scores) and one editing hook on ``hook_pattern``.
    """
    spec = describe_model(model)
    pairs = normalize_kv_heads(spec, heads)
    sink, window = _as_count(sink, "sink", 0), _as_count(window, "window", 1)
    grouped: dict[int, list[int]] = {}
    for layer, kv in pairs:
        grouped.setdefault(layer, []).extend(query_heads_of(spec, kv))
    hooks: HookList = []
    for layer, query_heads in grouped.items():
        state: dict[str, torch.Tensor] = {}
        index = sorted(query_heads)

        def record(scores: torch.Tensor, hook: Any, state: dict[str, torch.Tensor] = state,
                   index: list[int] = index) -> None:
            state["scores"] = scores[:, index].detach()

        def edit(pattern: torch.Tensor, hook: Any, state: dict[str, torch.Tensor] = state,
                 index: list[int] = index) -> torch.Tensor:
            scores = state.pop("scores", None)
            if scores is None or scores.shape[-2:] != pattern.shape[-2:]:
                raise InterventionError(f"{hook.name}: no masked scores seen for this pass")
            return restrict_pattern(pattern, scores, index, sink, window)

        hooks.append((spec.hooks.at("attn_scores", layer), record))
        hooks.append((spec.hooks.at("pattern", layer), edit))
    return hooks


def restrict_pattern(pattern: torch.Tensor, scores: torch.Tensor, index: Sequence[int],
                     sink: int, window: int) -> torch.Tensor:
    """A copy of ``pattern`` with heads ``index`` restricted to sink + window.

    Args:
        pattern: [B, H, T_q, T_k] attention pattern (rows sum to 1 over visible keys).
        scores: [B, n, T_q, T_k] masked pre-softmax scores of heads ``index`` (same pass).
        index: the ``n`` query heads to restrict.

    Returns:
        [B, H, T_q, T_k]: heads outside ``index`` unchanged; heads in it renormalised over the
        kept keys (zeros elsewhere; zero rows where a query has no visible key).
    """
    batch, _, n_query, n_key = pattern.shape
    at_query = query_positions(batch, n_query, pattern.device)
    at_key = key_positions(batch, n_key, pattern.device)
    visible = scores > torch.finfo(scores.dtype).min / 2
    out = pattern.clone()
    for i, head in enumerate(index):
        keep = streaming_keep(visible[:, i], at_query, at_key, sink, window)
        old = pattern[:, head].float() * keep
        mass = old.sum(-1, keepdim=True)
        renormalised = old / mass.clamp_min(1e-30)
        fallback = torch.softmax(scores[:, i].float().masked_fill(~keep, float("-inf")), -1)
        has_keys = keep.any(-1, keepdim=True)
        new = torch.where(mass > 0, renormalised, fallback)
        out[:, head] = torch.where(has_keys, new, torch.zeros_like(new)).to(pattern.dtype)
    return out


def _as_count(value: int, name: str, minimum: int) -> int:
    try:
        count = operator.index(value)
    except TypeError as error:
        raise InterventionError(f"{name} must be an integer, got {value!r}") from error
    if count < minimum:
        raise InterventionError(f"{name} must be >= {minimum}, got {count}")
    return count
