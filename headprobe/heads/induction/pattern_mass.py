"""Attention-pattern head scores shared by the previous-token, duplicate-token and induction
scorers (the TransformerLens head detector's "mul" score, batched and padding-safe).

For each query position ``i`` with at least one target key, the row score is the attention
mass on the target keys divided by the mass on the allowed keys, where allowed keys are real,
causal and optionally exclude the first (BOS / sink) position and the current token:

    row_score(i) = sum_{j in target(i)} A[i, j] / sum_{j in allowed(i)} A[i, j]

A prompt's score for a head is the mean row score over its scored rows; the head's score is
the mean over prompts. Unlike TransformerLens' ``detect_head`` this works on batches, uses the
attention mask (so padding never enters a score), and never edits a cache in place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from headprobe.arch import ModelSpec
from headprobe.checkpoint import Checkpoint
from headprobe.inputs import Batch, Encoded, encode_prompts, fingerprint
from headprobe.prompts import repeated_random_tokens
from headprobe.runtime.stream import ReduceContext, stream_reduce
from headprobe.scorers.base import ScorerData, ScoreResult
from headprobe.scorers.params import Params, param

# target_fn(batch) -> [B, T_q, T_k] bool: keys that the pattern says the query should attend to
TargetFn = Callable[[Batch], torch.Tensor]

PATTERN_PROMPTS = ("None (BOS + seq_len random tokens x repeats, n prompts), or a list of "
                   "prompts of any kind (text, chat, image prompts, token ids)")


@dataclass(frozen=True)
class PatternParams(Params):
    """Parameters of the attention-pattern scorers (``induction``, ``duplicate_token``)."""

    seq_len: int = param(50, "random tokens per copy in the default prompts (BOS + seq_len x "
                         "repeats)", ge=1)
    repeats: int = param(2, "copies of the random sequence in each default prompt (>= 2)",
                         ge=2)
    exclude_bos: bool = param(True, "leave the first (BOS / sink) key out of each row's "
                              "denominator")
    exclude_current: bool = param(True, "leave the query's own key out of each row's "
                                  "denominator")
    padding_side: Literal["right", "left"] = param(
        "right", "'right' or 'left' padding of batched prompts (scores do not depend on it)")


@dataclass(frozen=True)
class PreviousTokenParams(PatternParams):
    """Parameters of ``previous_token``: the pattern scorers', the current key kept."""

    exclude_current: bool = param(False, "leave the query's own key out of each row's "
                                  "denominator")


def previous_token_targets(batch: Batch) -> torch.Tensor:
    """Target of query ``i`` is key ``i - 1`` (within the prompt's real tokens)."""
    size, width = batch.tokens.shape
    eye = torch.ones(width, width, dtype=torch.bool, device=batch.tokens.device).tril(-1).triu(-1)
    targets = eye.unsqueeze(0).expand(size, width, width).clone()
    return targets & batch.key_query_mask()


def duplicate_token_targets(batch: Batch) -> torch.Tensor:
    """Targets of query ``i``: earlier keys ``j < i`` holding the same token."""
    same = batch.tokens[:, :, None] == batch.tokens[:, None, :]
    strictly_before = torch.ones_like(same[0]).tril(-1)
    return same & strictly_before & batch.key_query_mask()


def induction_targets(batch: Batch) -> torch.Tensor:
    """Targets of query ``i``: keys ``j <= i`` whose previous token equals token ``i``
    (the token after an earlier copy of the current token), with ``j - 1 < i``."""
    tokens = batch.tokens
    previous = torch.roll(tokens, 1, dims=1)
    match = tokens[:, :, None] == previous[:, None, :]  # [B, i, j]: tok[i] == tok[j-1]
    match[:, :, 0] = False  # key 0 has no previous token
    # key j-1 must be a real token of the same prompt
    previous_real = torch.roll(batch.attention_mask, 1, dims=1)
    previous_real[:, 0] = False
    return match & previous_real[:, None, :] & batch.key_query_mask()


def allowed_keys(batch: Batch, *, exclude_bos: bool, exclude_current: bool) -> torch.Tensor:
    """[B, T_q, T_k] keys counted in a row's denominator."""
    allowed = batch.key_query_mask()
    if exclude_bos:
        rows = torch.arange(batch.size, device=allowed.device)
        allowed[rows, :, batch.start] = False
    if exclude_current:
        allowed &= ~torch.eye(batch.seq_len, dtype=torch.bool, device=allowed.device)
    return allowed


def prepare_pattern_data(
    model: Any, spec: ModelSpec, prompts: Any, n: int, seed: int, params: dict[str, Any]
) -> ScorerData:
    """Default data: ``n`` sequences of ``seq_len`` random tokens repeated ``repeats`` times.

    User ``prompts`` may be any prompt kind (text, chat, image prompts, token ids): they are
    encoded (:func:`headprobe.inputs.encode_prompts`), so image prompts carry their pixel
    values to the forward pass and the pattern covers text and image positions. The
    fingerprint of a text-only set is the hash of its token ids, as before.
    """
    if prompts is None:
        token_lists = repeated_random_tokens(
            model, spec, n, seq_len=params["seq_len"], repeats=params["repeats"], seed=seed
        )
        description = (f"{n} x (BOS + {params['seq_len']} random tokens x {params['repeats']}),"
                       f" seed {seed}")
        token_lists = encode_prompts(model, token_lists, spec)  # checks context length
    else:
        token_lists = encode_prompts(model, prompts, spec)
        description = f"{len(token_lists)} user prompts"
    return ScorerData(token_lists, fingerprint(token_lists), len(token_lists), description)


def per_prompt_pattern_scores(
    model: Any,
    spec: ModelSpec,
    token_lists: Sequence[torch.Tensor | Encoded],
    target_fn: TargetFn,
    *,
    exclude_bos: bool,
    exclude_current: bool,
    batch_size: int,
    padding_side: str,
    progress: bool,
    desc: str,
    checkpoint: Checkpoint | None = None,
) -> torch.Tensor:
    """[N, L, H] per-prompt scores (NaN where a prompt has no scored row).

    With a ``checkpoint`` the [N, L, H] tensor and the number of finished batches are saved
    after every batch, and a run started again under the same run key restores them and skips
    the finished batches; the result is bitwise that of an uninterrupted run (each batch
    fills only its own rows).
    """
    shape = (len(token_lists), spec.n_layers, spec.n_heads)
    scores = torch.full(shape, float("nan"))
    done = 0
    state = checkpoint.load() if checkpoint is not None else None
    if state is not None and tuple(state["scores"].shape) == shape:
        scores.copy_(state["scores"])
        done = int(state["batches_done"])
    n_batches = -(-len(token_lists) // batch_size)
    masks: dict[str, torch.Tensor] = {}

    def reducer(pattern: torch.Tensor, context: ReduceContext) -> None:
        batch, layer = context.batch, context.layer
        if masks.get("batch_id") is not batch.indices:  # build masks once per batch
            targets = target_fn(batch)
            allowed = allowed_keys(batch, exclude_bos=exclude_bos, exclude_current=exclude_current)
            targets &= allowed
            masks.update(batch_id=batch.indices, targets=targets.float(),
                         allowed=allowed.float(), rows=targets.any(-1))
        probs = pattern.float()  # [B, H, T_q, T_k]
        on_target = torch.einsum("bhqk,bqk->bhq", probs, masks["targets"])
        on_allowed = torch.einsum("bhqk,bqk->bhq", probs, masks["allowed"])
        rows = masks["rows"]  # [B, T_q]
        row_scores = on_target / on_allowed.clamp_min(1e-12)
        row_scores = torch.where(rows[:, None, :], row_scores, torch.zeros_like(row_scores))
        counts = rows.sum(-1)  # [B]
        means = row_scores.sum(-1) / counts.clamp_min(1)[:, None]  # [B, H]
        means[counts == 0] = float("nan")
        scores[batch.indices.cpu(), layer] = means.cpu()

    def on_batch_end(batch: Batch) -> None:
        nonlocal done
        done += 1
        if checkpoint is not None:
            checkpoint.save({"scores": scores, "batches_done": done},
                            progress=f"batch {done} of {n_batches} done")

    stream_reduce(model, spec, token_lists, {"pattern": reducer}, batch_size=batch_size,
                  padding_side=padding_side, progress=progress, desc=desc,  # type: ignore[arg-type]
                  on_batch_end=on_batch_end, start_batch=done)
    return scores


def pattern_compute(target_fn: TargetFn, desc: str) -> Callable[..., ScoreResult]:
    """A scorer ``compute`` function for the pattern ``target_fn``; it takes an optional
    ``checkpoint`` and so resumes per batch (:func:`per_prompt_pattern_scores`)."""

    def compute(model: Any, spec: ModelSpec, data: ScorerData, params: dict[str, Any],
                batch_size: int, progress: bool,
                checkpoint: Checkpoint | None = None) -> ScoreResult:
        per_prompt = per_prompt_pattern_scores(
            model, spec, data.payload, target_fn,
            exclude_bos=params["exclude_bos"], exclude_current=params["exclude_current"],
            batch_size=batch_size, padding_side=params["padding_side"], progress=progress,
            desc=desc, checkpoint=checkpoint,
        )
        scored = ~torch.isnan(per_prompt)
        n_scored = scored.sum(0)
        if int(n_scored.max()) == 0:
            raise ValueError(
                f"{desc}: no prompt has a position where the pattern is defined "
                "(e.g. no repeated token for induction); use prompts with repeats"
            )
        mean = torch.nanmean(per_prompt, dim=0)
        std = _nanstd(per_prompt)
        return ScoreResult(
            score=mean,
            columns={"score_std": std, "n_prompts_scored": n_scored},
            meta={"per_prompt_shape": list(per_prompt.shape)},
        )

    return compute


def _nanstd(values: torch.Tensor) -> torch.Tensor:
    mean = torch.nanmean(values, dim=0, keepdim=True)
    squared = torch.nanmean((values - mean) ** 2, dim=0)
    return squared.sqrt()
