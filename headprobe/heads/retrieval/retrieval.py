"""``retrieval``: retrieval heads, scored while the model copies a needle out of a haystack.

Method (Wu et al. 2024, "Retrieval Head Mechanistically Explains Long-Context Factuality"),
as their reference code computes it:

- Data: needle-in-a-haystack trials (:mod:`headprobe.heads.retrieval.niah`): a needle sentence
  holding an invented fact, hidden at a depth of a context of a given length, then the question.
- Run: greedy decoding with the KV cache. The reference prefills all prompt tokens but the
  last and feeds the last one at its first step, so the first scored query is the last prompt
  token's (headprobe's step 0, ``include_prefill=True``); each later step feeds the token just
  generated. Decoding stops after ``max_new_tokens`` tokens, at EOS, and (``stop_at_newline``,
  as the reference) after the first token that holds a newline (that step is still scored).
- Per step and per (layer, query head): ``j = argmax`` of the current query's attention row
  over *all* keys (prompt and generated tokens, as the reference). The head scores a *hit*
  when ``j`` lies inside the needle span AND the token at ``j`` equals the token generated at
  this step (copy-paste); a hit adds ``1 / len(needle span)`` to the trial's score.
- Gate: a trial counts only when ROUGE-1 recall of the answer in the output text is
  ``> gate`` (0.5; :func:`headprobe.heads.retrieval.niah.rouge1_recall`).
- Score of a head: the mean of its per-trial sums over the counted trials. Heads with
  score ``> threshold`` (0.1, the paper's) are called retrieval heads.

Columns: ``score``; ``counted_trials`` (trials that passed the gate, the score's
denominator; the same for every head); ``trials_with_hit`` (counted trials in which the head
hit at least once); ``hit_share`` (share of the counted trials' scored steps at which the
head hit). With grouped-query attention the score is per query head.

Cost. The attention row of each head comes from
:class:`headprobe.runtime.observer.AttentionObserver`: one ``q . K`` product per layer and step
against the cached keys, O(B * H * T) memory, never a T x T matrix and never
``output_attentions`` (the reference route, full attention matrices at every step, is what
``tests/test_retrieval.py`` checks this scorer against). When no trial passes the gate the
scorer raises :class:`~headprobe.errors.NoRetrievalError` saying what the model answered,
instead of returning an all-zero table.

Resumable per batch of trials: with a checkpoint the per-trial sums, hit counts, outputs and
gate values are saved after every batch, and a restarted run skips the finished batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from headprobe.arch import ModelSpec
from headprobe.checkpoint import Checkpoint
from headprobe.errors import NoRetrievalError, TaskError
from headprobe.heads.retrieval.niah import rouge1_recall
from headprobe.inputs import Encoded, encode_prompts, fingerprint
from headprobe.runtime.decode import generate
from headprobe.runtime.observer import AttentionObserver, AttentionRows, argmax_positions
from headprobe.scorers.base import Scorer, ScorerData, ScoreResult
from headprobe.scorers.params import Params, as_dict, param
from headprobe.tasks.base import Task, TaskItem

REFERENCE = ('Wu et al. 2024, "Retrieval Head Mechanistically Explains Long-Context '
             'Factuality"')
TEXT_LIMIT = 200  # characters of each trial's output kept in the table's metadata

@dataclass(frozen=True)
class RetrievalParams(Params):
    """Parameters of :data:`SCORER` (``retrieval``)."""

    context_lengths: tuple[int, ...] = param((256, 512), "prompt lengths in tokens of the "
                                             "default NIAH trials", ge=1)
    depths: tuple[float, ...] = param((0.0, 0.25, 0.5, 0.75, 1.0), "needle depths (0 start .. "
                                      "1 end) of the default NIAH trials", ge=0, le=1)
    max_new_tokens: int = param(24, "greedy tokens generated per trial (the reference: 50)",
                                ge=1)
    stop_at_newline: bool = param(True, "stop a trial after its first generated newline (as "
                                  "the reference)")
    prefill_chunk: int = param(256, "prompt columns per prefill forward (bounds the eager "
                               "attention scores to chunk x T per layer; 0: the whole prompt "
                               "at once)", ge=0)
    gate: float = param(0.5, "a trial counts when ROUGE-1 recall of the answer in the output "
                        "is above this", ge=0, lt=1)
    threshold: float = param(0.1, "heads with a score above this are retrieval heads (the "
                             "paper: 0.1)")


DEFAULTS: dict[str, Any] = as_dict(RetrievalParams())

@dataclass
class Trial:
    """One prepared trial.

    Attributes:
        encoded: the prompt's token ids [T] and spans (``needle`` required).
        answer: the text whose ROUGE-1 recall in the output gates the trial.
        meta: the task item's labels (depth, context length, needle id, ...).
    """

    encoded: Encoded
    answer: str
    meta: dict[str, Any]


@dataclass
class TrialScores:
    """Per-trial results of :func:`score_trials` (N trials, L layers, H query heads).

    Attributes:
        sums: [N, L, H] float64 per-trial retrieval score (sum of credits over steps).
        hits: [N, L, H] float64 number of scored steps at which the head hit.
        steps: [N] long number of scored steps of each trial.
        tokens: [N, max_new_tokens] long generated ids (pad after the trial stopped).
        texts: the output text of each trial (its scored tokens, special tokens skipped).
        recalls: [N] float64 ROUGE-1 recall of each answer in its output.
        far_hits: [N, L, H] float64 hits of sliding-window layers' heads on keys at least
            their window behind the query (must stay 0; a check of the observer's masks).
        windows: {layer: window} of the model's sliding-window layers (empty: none).
    """

    sums: torch.Tensor
    hits: torch.Tensor
    steps: torch.Tensor
    tokens: torch.Tensor
    texts: list[str]
    recalls: torch.Tensor
    far_hits: torch.Tensor | None = None
    windows: dict[int, int] = field(default_factory=dict)


def copy_credit(positions: torch.Tensor, generated: torch.Tensor, sequences: torch.Tensor,
                needle_start: torch.Tensor, needle_stop: torch.Tensor) -> torch.Tensor:
    """The reference's credit of one decode step (Wu et al. 2024, "Retrieval Head
    Mechanistically Explains Long-Context Factuality").

    A head earns ``1 / (needle_stop - needle_start)`` when the position it attends to most
    lies inside the needle span AND the token there equals the token generated at this step.

    Args:
        positions: [B, H] long absolute position of each head's attention argmax.
        generated: [B] long token generated from this step's query.
        sequences: [B, T] long token id at each absolute position (at least the prompt's;
            any value, e.g. -1, beyond it: positions outside the needle never count).
        needle_start, needle_stop: [B] long needle span ``[start, stop)`` of each row.

    Returns:
        [B, H] float64 credit (0 or ``1 / len(needle)``).
    """
    start = needle_start.to(positions.device)[:, None]
    stop = needle_stop.to(positions.device)[:, None]
    inside = (positions >= start) & (positions < stop)
    index = positions.clamp(0, sequences.shape[1] - 1)
    there = torch.gather(sequences.to(positions.device), 1, index)
    hit = inside & (there == generated.to(positions.device)[:, None])
    return hit.double() / (stop - start).double()


def newline_ids(tokenizer: Any, ids: Sequence[int], cache: dict[int, bool]) -> list[bool]:
    """Whether each token id decodes to text holding a newline (``cache``: id -> answer)."""
    out = []
    for token in ids:
        if token not in cache:
            cache[token] = "\n" in tokenizer.decode([token])
        out.append(cache[token])
    return out


class _BatchCredit:
    """The ``on_row`` callback of one batch of trials: adds each scored step's
    :func:`copy_credit` into views of the run's [N, L, H] sums and hit counts.

    ``sums``, ``hits`` ([n, L, H] float64) and ``steps`` ([n] long) are the batch's slices of
    the run's tensors (written in place); ``stopped_at`` [n] is the step of each trial's first
    newline (``max_new_tokens`` when none). ``windows``: {layer: window} of the
    sliding-window layers; ``far_hits`` [n, L, H] counts their hits at keys ``>= window``
    positions behind the query (a correct run has none: the window masks those keys).
    """

    def __init__(self, chunk: Sequence[Trial], tokenizer: Any, stop_at_newline: bool,
                 max_new_tokens: int, is_newline: dict[int, bool], sums: torch.Tensor,
                 hits: torch.Tensor, steps: torch.Tensor, far_hits: torch.Tensor,
                 windows: dict[int, int]) -> None:
        width = max(len(t.encoded) for t in chunk)
        self.sequences = torch.full((len(chunk), width), -1, dtype=torch.long)  # [n, T]
        for row, trial in enumerate(chunk):
            self.sequences[row, :len(trial.encoded)] = trial.encoded.ids
        self.starts = torch.tensor([t.encoded.spans["needle"].start for t in chunk])
        self.stops = torch.tensor([t.encoded.spans["needle"].stop for t in chunk])
        self.stopped_at = torch.full((len(chunk),), max_new_tokens, dtype=torch.long)
        self.tokenizer, self.stop_at_newline, self.is_newline = (tokenizer, stop_at_newline,
                                                                 is_newline)
        self.sums, self.hits, self.steps = sums, hits, steps
        self.far_hits, self.windows = far_hits, windows

    def __call__(self, rows: AttentionRows) -> None:
        """Credit one (step, layer)'s rows (``rows.weights`` [B, H, T_k])."""
        local = rows.batch.indices.cpu()  # [B] indices into the chunk
        generated = rows.tokens.cpu()  # [B]
        if rows.layer == 0 and self.stop_at_newline:
            flags = newline_ids(self.tokenizer, generated.tolist(), self.is_newline)
            for b, flag in enumerate(flags):
                if flag and rows.step < self.stopped_at[local[b]]:
                    self.stopped_at[local[b]] = rows.step
        scored = rows.live.cpu().bool() & (rows.step <= self.stopped_at[local])  # [B]
        if not bool(scored.any()):
            return
        if rows.layer == 0:
            self.steps[local[scored]] += 1
        positions = argmax_positions(rows)  # [B, H] over the whole row, as the reference
        credit = copy_credit(positions, generated, self.sequences[local], self.starts[local],
                             self.stops[local]).cpu() * scored[:, None]
        self.sums[local, rows.layer] += credit
        self.hits[local, rows.layer] += (credit > 0).double()
        window = self.windows.get(rows.layer)
        if window is not None:  # a sliding-window head must never hit beyond its window
            distance = rows.query_positions.cpu()[:, None] - positions.cpu()  # [B, H]
            self.far_hits[local, rows.layer] += ((credit > 0) & (distance >= window)).double()


def prepare_trials(model: Any, spec: ModelSpec, prompts: Any, n: int, seed: int,
                   params: dict[str, Any]) -> ScorerData:
    """``ScorerData`` whose payload is a list of :class:`Trial`.

    ``prompts``: None (the NIAH task with ``n`` items over ``params["context_lengths"]`` x
    ``params["depths"]``, seed ``seed``), a :class:`Task` or a list of :class:`TaskItem`
    whose prompts carry a ``needle`` span (their ``answer`` is the gate's reference).

    Raises:
        TaskError: an item without a ``needle`` span, an empty needle, or a bad NIAH setting.
    """
    if prompts is None:
        from headprobe.heads.retrieval.niah import make_task

        task = make_task(n=n, context_lengths=params["context_lengths"],
                         depths=params["depths"], seed=seed, model=model)
        items = list(task.items)
        description = (f"NIAH, {len(items)} trials over lengths "
                       f"{list(params['context_lengths'])} x depths {list(params['depths'])}, "
                       f"seed {seed}")
    else:
        if isinstance(prompts, Task):
            items = list(prompts.items)
        elif isinstance(prompts, Sequence) and not isinstance(prompts, str | bytes):
            items = list(prompts)
        else:
            raise TaskError("the retrieval scorer takes a Task or a list of TaskItem whose "
                            "prompts have a 'needle' span (or no prompts: NIAH trials)")
        if not items or not all(isinstance(item, TaskItem) for item in items):
            raise TaskError("the retrieval scorer needs a non-empty list of TaskItem "
                            "(prompt with a 'needle' span, answer)")
        description = f"{len(items)} user trials"
    encoded = encode_prompts(model, [item.prompt for item in items], spec)
    trials = []
    for index, (item, enc) in enumerate(zip(items, encoded, strict=True)):
        span = enc.spans.get("needle")
        if span is None or span.stop <= span.start:
            raise TaskError(f"trial {index} has no (non-empty) 'needle' span; mark the needle "
                            "sentence, e.g. Text(text, spans={'needle': sentence})")
        if not item.answer.strip():
            raise TaskError(f"trial {index} has an empty answer; the retrieval gate needs one")
        trials.append(Trial(enc, item.answer, dict(item.meta)))
    spans = torch.tensor([[t.encoded.spans["needle"].start, t.encoded.spans["needle"].stop]
                          for t in trials])
    answers = [t.answer for t in trials]
    digest = fingerprint([*encoded, spans.flatten(),
                          torch.tensor([b for a in answers for b in a.encode()] or [0])])
    return ScorerData(trials, digest, len(trials), description)


def score_trials(
    model: Any,
    spec: ModelSpec,
    trials: Sequence[Trial],
    *,
    max_new_tokens: int,
    stop_at_newline: bool = True,
    stop_at_eos: bool = True,
    prefill_chunk: int | None = 256,
    batch_size: int = 8,
    progress: bool = False,
    checkpoint: Checkpoint | None = None,
) -> TrialScores:
    """Decode every trial greedily with the KV cache and accumulate each head's credit
    (:func:`copy_credit` of the argmax of its attention row at every step; Wu et al. 2024,
    "Retrieval Head Mechanistically Explains Long-Context Factuality").

    Steps are scored from the last prompt token's query (step 0) on; a row stops being
    scored after EOS (unless ``stop_at_eos`` is False) and, with ``stop_at_newline``, after
    its first newline token. The prompt is prefilled in chunks of ``prefill_chunk`` columns
    (``None``: at once; see :func:`~headprobe.runtime.decode.generate`), so attention memory
    is O(B * H * chunk * T) at the prefill and O(B * H * T) per layer and step after it (the
    observer's rows), plus the [N, L, H] sums.

    With a ``checkpoint`` the state is saved after every batch of ``batch_size`` trials and a
    restarted run skips the finished batches (the result equals an uninterrupted run's).
    """
    count = len(trials)
    shape = (count, spec.n_layers, spec.n_heads)
    sums = torch.zeros(shape, dtype=torch.float64)
    hits = torch.zeros(shape, dtype=torch.float64)
    steps = torch.zeros(count, dtype=torch.long)
    far_hits = torch.zeros(shape, dtype=torch.float64)
    windows = {layer: int(spec.sliding_window) for layer, kind in enumerate(spec.layer_types)
               if kind == "sliding_attention" and spec.sliding_window is not None}
    pad = spec.pad_token_id if spec.pad_token_id is not None else 0
    tokens = torch.full((count, max_new_tokens), pad, dtype=torch.long)
    texts = [""] * count
    recalls = torch.zeros(count, dtype=torch.float64)
    done = 0
    n_batches = -(-count // batch_size)
    state = checkpoint.load() if checkpoint is not None else None
    if state is not None and tuple(state["sums"].shape) == shape and \
            tuple(state["tokens"].shape) == tuple(tokens.shape):
        sums.copy_(state["sums"])
        hits.copy_(state["hits"])
        steps.copy_(state["steps"])
        tokens.copy_(state["tokens"])
        recalls.copy_(state["recalls"])
        if "far_hits" in state:
            far_hits.copy_(state["far_hits"])
        texts = list(state["texts"])
        done = int(state["batches_done"])
    tokenizer = model.tokenizer
    is_newline: dict[int, bool] = {}
    eos = getattr(tokenizer, "eos_token_id", None)
    for batch_index in range(done, n_batches):
        chunk = list(trials[batch_index * batch_size:(batch_index + 1) * batch_size])
        offset = batch_index * batch_size
        accumulator = _BatchCredit(chunk, tokenizer, stop_at_newline, max_new_tokens,
                                   is_newline, sums[offset:offset + len(chunk)],
                                   hits[offset:offset + len(chunk)],
                                   steps[offset:offset + len(chunk)],
                                   far_hits[offset:offset + len(chunk)], windows)
        generation = generate(
            model, [t.encoded for t in chunk], max_new_tokens=max_new_tokens,
            batch_size=len(chunk), stop_at_eos=stop_at_eos and eos is not None, eos_token_id=eos,
            observers=[AttentionObserver(accumulator, include_prefill=True)],
            prefill_chunk=prefill_chunk,
            progress=progress, desc=f"retrieval batch {batch_index + 1}/{n_batches}")
        stopped_at = accumulator.stopped_at
        for row, trial in enumerate(chunk):
            kept = min(int(generation.lengths[row]), int(stopped_at[row]) + 1)
            tokens[offset + row, :kept] = generation.tokens[row, :kept]
            text = tokenizer.decode(generation.tokens[row, :kept].tolist(),
                                    skip_special_tokens=True)
            texts[offset + row] = text
            recalls[offset + row] = rouge1_recall(trial.answer, text)
        if checkpoint is not None:
            checkpoint.save({"sums": sums, "hits": hits, "steps": steps, "tokens": tokens,
                             "texts": texts, "recalls": recalls, "far_hits": far_hits,
                             "batches_done": batch_index + 1},
                            progress=f"batch {batch_index + 1} of {n_batches} done")
    return TrialScores(sums, hits, steps, tokens, texts, recalls, far_hits, windows)


def summarize(scores: TrialScores, trials: Sequence[Trial], *, gate: float,
              threshold: float) -> ScoreResult:
    """Gate the trials and average (Wu et al. 2024, "Retrieval Head Mechanistically Explains
    Long-Context Factuality"): score [L, H] = mean of the counted trials' sums.

    Raises:
        NoRetrievalError: no trial passed the gate (says how many ran and what the model
            answered).
    """
    counted = scores.recalls > gate  # [N]
    n_counted = int(counted.sum())
    count = len(trials)
    if n_counted == 0:
        shown = "; ".join(
            f"trial {i}: expected {trials[i].answer!r}, answered "
            f"{_short(scores.texts[i], 80)!r} (recall {float(scores.recalls[i]):.2f})"
            for i in range(min(count, 4)))
        raise NoRetrievalError(
            f"retrieval: none of the {count} trials passed the retrieval gate (ROUGE-1 recall "
            f"of the answer in the output > {gate}), so no head can be scored and no table is "
            f"written. The model answered: {shown}{' ...' if count > 4 else ''}. Use a model "
            "that can answer these questions, shorter contexts, or more max_new_tokens")
    score = scores.sums[counted].mean(0)  # [L, H]
    hit_share = scores.hits[counted].sum(0) / max(int(scores.steps[counted].sum()), 1)
    with_hit = (scores.hits[counted] > 0).sum(0)
    above = score > threshold
    columns = {
        "counted_trials": torch.full_like(score, float(n_counted)),
        "trials_with_hit": with_hit.double(),
        "hit_share": hit_share,
    }
    trial_meta = [
        {"output": _short(scores.texts[i], TEXT_LIMIT), "answer": trials[i].answer,
         "rouge1_recall": float(scores.recalls[i]), "counted": bool(counted[i]),
         "steps": int(scores.steps[i]),
         **{k: v for k, v in trials[i].meta.items()
            if k in ("depth", "context_length", "needle_id")}}
        for i in range(count)]
    for i, trial in enumerate(trials):
        # tokens between the needle's last token and the first scored query (the last
        # prompt token): a window of this size or less cannot see the needle at any step
        trial_meta[i]["needle_distance"] = len(trial.encoded) - trial.encoded.spans[
            "needle"].stop
    meta = {"n_trials": count, "n_counted": n_counted, "gate": gate, "threshold": threshold,
            "n_above_threshold": int(above.sum()),
            "share_above_threshold": float(above.double().mean()), "trials": trial_meta}
    if scores.windows:
        meta["window_check"] = window_check(scores, trials)
    return ScoreResult(score=score.float(), columns=columns, meta=meta)


def window_check(scores: TrialScores, trials: Sequence[Trial]) -> dict[str, Any]:
    """What sliding-window heads scored where they cannot see the needle.

    A head of a sliding-window layer (window ``W``) gives keys ``W`` or more positions behind
    its query exactly zero weight, so it can never hit a needle that far back. Returns the
    window, the sliding layers, the number of trials whose whole needle lies ``>= W`` tokens
    behind the first scored query (``far_trials``), the sliding heads' largest mean score
    over those trials (``max_sliding_score_far_trials``, must be 0) and the number of
    sliding-head hits on keys ``>= W`` behind the query in all trials
    (``hits_beyond_window``, must be 0).
    """
    layers = sorted(scores.windows)
    window = min(scores.windows.values())
    far = torch.tensor([len(t.encoded) - t.encoded.spans["needle"].stop >= window
                        for t in trials])
    sliding = scores.sums[:, layers]  # [N, L_sliding, H]
    far_score = float(sliding[far].mean(0).max()) if bool(far.any()) else None
    hits_beyond = 0 if scores.far_hits is None else int(scores.far_hits.sum())
    return {"window": window, "sliding_layers": layers, "far_trials": int(far.sum()),
            "max_sliding_score_far_trials": far_score, "hits_beyond_window": hits_beyond}


def compute(model: Any, spec: ModelSpec, data: ScorerData, params: dict[str, Any],
            batch_size: int, progress: bool,
            checkpoint: Checkpoint | None = None) -> ScoreResult:
    """Score the prepared trials (:func:`score_trials`) and gate them (:func:`summarize`)."""
    trials: list[Trial] = data.payload
    scores = score_trials(model, spec, trials, max_new_tokens=int(params["max_new_tokens"]),
                          stop_at_newline=bool(params["stop_at_newline"]),
                          prefill_chunk=int(params["prefill_chunk"]) or None,
                          batch_size=batch_size, progress=progress, checkpoint=checkpoint)
    return summarize(scores, trials, gate=float(params["gate"]),
                     threshold=float(params["threshold"]))


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


SCORER = Scorer(
    name="retrieval",
    description="retrieval heads: copy-paste attention on the needle while answering NIAH",
    reference=REFERENCE,
    prepare=prepare_trials,
    compute=compute,
    prompts="None (the NIAH task, n items over context_lengths x depths), a Task, or a list "
            "of TaskItem whose prompts carry a needle span (their answer gates the trial)",
    params=RetrievalParams,
    default_n=10,
    cheap=False,
    needs=frozenset({"generation"}),
)
