"""``ocr``: OCR heads, scored while a vision-language model reads the text in an image.

Method (Baek et al. 2025, "How Do Large Vision-Language Models See Text in Image? Unveiling
the Distinctive Role of OCR Heads"), as their reference computes it, on the decode-time route
of the retrieval score (:mod:`headprobe.heads.retrieval.retrieval`):

- Data: image prompts whose answer is the text shown, with the text's pixel box (``box``) and,
  for the per-character variant, one box per character (``char_boxes``) in the item's
  ``meta`` (default: :mod:`headprobe.heads.ocr.ocr_read`, whose renderer knows every box exactly).
- Evidence: a patch (image token) is evidence when ``area(patch ∩ box) / area(box) > 0.1``
  for the text box or, when the item has them, any character box
  (:func:`headprobe.image_patches.evidence_patches`; the patch's pixel box comes from the
  processor's geometry, :func:`headprobe.image_patches.patch_boxes`). The character boxes
  matter when the text is large next to a patch: a string spread over more than ten patches
  leaves each under 10% of its box, so the box alone would mark no patch at all.
- Run: greedy KV-cached decoding (step 0 is the last prompt token's query). At each step and
  for every (layer, query head), ``j`` = the argmax of the head's attention row over the
  prompt's keys (:class:`~headprobe.runtime.observer.AttentionObserver`: one row per layer and
  step, never a T x T matrix). Decoding stops at EOS or after ``max_new_tokens``.
- Credit: a generated token *belongs to the answer* when its id is one of the answer's token
  ids. For each such token the head earns ``overlap / n_answer`` when ``j`` is an evidence
  patch, where ``overlap`` = longest common contiguous run of the generated and the answer
  tokens / answer length (in tokens) and ``n_answer`` = the answer's length in tokens, so a
  perfect reading with every token looking at the text scores 1 (no token-identity check: the
  keys are patches). Score of a head = mean over samples.
- Per-character variant (``char_score``, ``char_agreement``): the evidence of a token is the
  patches of the very characters it emits (the output's characters aligned to the answer's by
  ``difflib``; a character's patches: overlap / character box area > 0.1). ``char_score`` is
  weighted as ``score``; ``char_agreement`` is the unweighted share of answer tokens (of
  readings that overlap the answer) whose argmax lands on the right character: the
  ground-truth agreement no public VLM study can measure.

Columns: ``score``, ``evidence_share`` (unweighted share of answer tokens whose argmax is
evidence), ``char_score``, ``char_agreement``. Metadata: reading accuracy (exact match), the
number of samples, per-sample outputs and overlaps.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from headprobe.arch import ModelSpec
from headprobe.errors import OCRDataError, TaskError
from headprobe.image_patches import EVIDENCE_THRESHOLD, evidence_patches, image_hw, patch_boxes
from headprobe.inputs import Encoded, ImagePrompt, encode_prompts, fingerprint
from headprobe.runtime.decode import generate
from headprobe.runtime.observer import AttentionObserver, AttentionRows, argmax_positions
from headprobe.scorers.base import Scorer, ScorerData, ScoreResult
from headprobe.scorers.params import Params, param
from headprobe.tasks.base import Task
from headprobe.tasks.pairs import task_items

REFERENCE = ('Baek et al. 2025, "How Do Large Vision-Language Models See Text in Image? '
             'Unveiling the Distinctive Role of OCR Heads"')

@dataclass(frozen=True)
class OCRParams(Params):
    """Parameters of :data:`SCORER` (``ocr``)."""

    max_new_tokens: int = param(8, "greedy tokens generated per sample (stops at EOS)", ge=1)
    evidence_threshold: float = param(EVIDENCE_THRESHOLD, "a patch is evidence when its overlap "
                                      "with the text box, divided by the box's area, is above "
                                      "this (the paper: 0.1)", ge=0, lt=1)
    difficulty: str = param("train", "difficulty of the default ocr_read images (train, small, "
                            "noisy)")
    threshold: float = param(0.1, "heads with a score above this are counted as OCR heads in "
                             "the metadata")

@dataclass
class OCRSample:
    """One prepared sample.

    Attributes:
        encoded: the prompt's ids [T] and spans (an ``image`` span with its patch grid).
        answer: the text in the image.
        answer_ids: the answer's token ids (as a continuation).
        evidence: [T] bool, True at the prompt positions of evidence patches.
        char_evidence: one [T] bool per answer character (empty: no character boxes).
        meta: the item's labels.
    """

    encoded: Encoded
    answer: str
    answer_ids: list[int]
    evidence: torch.Tensor
    char_evidence: list[torch.Tensor]
    meta: dict[str, Any]


def _image_span(encoded: Encoded, index: int) -> Any:
    spans = [name for name in encoded.spans if name == "image" or name.startswith("image_")]
    if len(spans) != 1:
        raise OCRDataError(f"sample {index} has {len(spans)} images; the ocr scorer takes "
                           "prompts with exactly one image")
    span = encoded.spans[spans[0]]
    if span.grid is None:
        raise OCRDataError(f"sample {index}: the image span has no patch grid, so patches "
                           "cannot be mapped to pixels")
    return span


def _positions(span: Any, mask: np.ndarray, length: int) -> torch.Tensor:
    out = torch.zeros(length, dtype=torch.bool)
    out[span.start:span.stop] = torch.from_numpy(mask)
    return out


def prepare_samples(model: Any, spec: ModelSpec, prompts: Any, n: int, seed: int,
                    params: dict[str, Any]) -> ScorerData:
    """``ScorerData`` whose payload is a list of :class:`OCRSample`.

    ``prompts``: None (the ``ocr_read`` task, ``n`` images of ``params["difficulty"]``), a
    :class:`Task` or a list of :class:`TaskItem` with one-image prompts and ``meta["box"]``
    (``meta["char_boxes"]`` optional) in the image's pixel coordinates.

    Raises:
        OCRDataError: an item with no evidence box (missing, empty, or covering no patch),
            character boxes that do not match the answer, or not exactly one image.
    """
    if prompts is None:
        from headprobe.heads.ocr.ocr_read import make_task

        task = make_task(n=n, seed=seed, difficulty=str(params["difficulty"]))
        items = list(task.items)
        description = task.description
    else:
        items, name = task_items(prompts)
        description = (prompts.description or name if isinstance(prompts, Task)
                       else f"{len(items)} user samples")
    if not all(isinstance(item.prompt, ImagePrompt) for item in items):
        raise TaskError("the ocr scorer needs task items whose prompts are ImagePrompt (one "
                        "image each)")
    threshold = float(params["evidence_threshold"])
    encoded = encode_prompts(model, [item.prompt for item in items], spec)
    processor = getattr(model, "headprobe_processor", None)
    samples = []
    for index, (item, enc) in enumerate(zip(items, encoded, strict=True)):
        box = item.meta.get("box")
        if box is None or len(box) != 4:
            raise OCRDataError(f"sample {index} (answer {item.answer!r}) has no evidence box: "
                               "give meta['box'] = (x0, y0, x1, y1), the text's pixel box")
        if not item.answer.strip():
            raise OCRDataError(f"sample {index} has an empty answer")
        span = _image_span(enc, index)
        if len(item.prompt.images) != 1:
            raise OCRDataError(f"sample {index} has {len(item.prompt.images)} images; the ocr "
                               "scorer takes exactly one")
        boxes = patch_boxes(span.grid, image_hw(item.prompt.images[0]), processor=processor)
        char_boxes = item.meta.get("char_boxes")
        if char_boxes is not None and len(char_boxes) != len(item.answer):
            raise OCRDataError(f"sample {index}: {len(char_boxes)} character boxes for an "
                               f"answer of {len(item.answer)} characters")
        text_boxes = [box] + [b for b, c in zip(char_boxes or [], item.answer, strict=False)
                              if not c.isspace()]
        try:
            mask = evidence_patches(boxes, text_boxes, threshold)
        except ValueError as error:
            raise OCRDataError(f"sample {index}: bad evidence box in {text_boxes}: "
                               f"{error}") from error
        if not mask.any():
            raise OCRDataError(f"sample {index}: the evidence box {box} covers no image patch "
                               f"(overlap / box area > {threshold}); is it inside the image?")
        char_masks = []
        if char_boxes is not None:
            for char, char_box in zip(item.answer, char_boxes, strict=True):
                char_mask = (evidence_patches(boxes, [char_box], threshold)
                             if not char.isspace() else np.zeros(len(boxes), dtype=bool))
                char_masks.append(_positions(span, char_mask, len(enc)))
        answer_ids = model.tokenizer(item.answer, add_special_tokens=False)["input_ids"]
        samples.append(OCRSample(enc, item.answer, [int(i) for i in answer_ids],
                                 _positions(span, mask, len(enc)), char_masks,
                                 dict(item.meta)))
    digest = fingerprint([*encoded, *(s.evidence for s in samples),
                          torch.tensor([b for s in samples for b in s.answer.encode()])])
    return ScorerData(samples, digest, len(samples), description)


class _ArgmaxRecorder:
    """The observer's callback: records each head's argmax over the prompt keys,
    ``positions[row, step, layer, head]`` (-1 where not reached)."""

    def __init__(self, positions: torch.Tensor, prompt_lengths: torch.Tensor) -> None:
        self.positions, self.prompt_lengths = positions, prompt_lengths

    def __call__(self, rows: AttentionRows) -> None:
        local = rows.batch.indices.cpu()
        below = self.prompt_lengths[local].to(rows.weights.device)
        argmax = argmax_positions(rows, below=below).cpu()  # [B, H]
        live = rows.live.cpu().bool()
        if rows.step < self.positions.shape[1]:
            self.positions[local[live], rows.step, rows.layer] = argmax[live]


def record_argmax(model: Any, spec: ModelSpec, samples: Sequence[OCRSample], *,
                  max_new_tokens: int, batch_size: int = 8, progress: bool = False,
                  hooks: Sequence[Any] = ()) -> tuple[torch.Tensor, torch.Tensor,
                                                      torch.Tensor]:
    """Greedy decoding of every sample with each head's prompt argmax recorded.

    Returns:
        ``(positions, tokens, lengths)``: [N, S, L, H] long argmax positions (S =
        ``max_new_tokens``; -1 after a row stopped), [N, S] generated ids, [N] number
        generated (EOS included when reached).
    """
    count = len(samples)
    positions = torch.full((count, max_new_tokens, spec.n_layers, spec.n_heads), -1,
                           dtype=torch.long)
    prompt_lengths = torch.tensor([len(s.encoded) for s in samples])
    eos = getattr(model.tokenizer, "eos_token_id", None)
    tokens = torch.zeros((count, max_new_tokens), dtype=torch.long)
    lengths = torch.zeros(count, dtype=torch.long)
    n_batches = -(-count // batch_size)
    for batch_index in range(n_batches):
        begin = batch_index * batch_size
        chunk = list(samples[begin:begin + batch_size])
        recorder = _ArgmaxRecorder(positions[begin:begin + len(chunk)],
                                   prompt_lengths[begin:begin + len(chunk)])
        generation = generate(model, [s.encoded for s in chunk], max_new_tokens=max_new_tokens,
                              batch_size=len(chunk), stop_at_eos=eos is not None,
                              eos_token_id=eos, hooks=hooks,
                              observers=[AttentionObserver(recorder, include_prefill=True)],
                              progress=progress,
                              desc=f"ocr batch {batch_index + 1}/{n_batches}")
        tokens[begin:begin + len(chunk)] = generation.tokens
        lengths[begin:begin + len(chunk)] = generation.lengths
    return positions, tokens, lengths


def longest_common_run(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Length of the longest common contiguous run of ``a`` and ``b``."""
    if not a or not b:
        return 0
    match = difflib.SequenceMatcher(None, list(a), list(b), autojunk=False)
    return match.find_longest_match(0, len(a), 0, len(b)).size


def _token_answer_chars(tokenizer: Any, generated: Sequence[int], answer: str
                        ) -> list[list[int]]:
    """For each generated token, the answer characters it emits (output characters aligned
    to the answer's by ``difflib``; empty when none align)."""
    pieces = [tokenizer.decode(list(generated[:k + 1]), skip_special_tokens=True)
              for k in range(len(generated))]
    text = pieces[-1] if pieces else ""
    aligned: dict[int, int] = {}
    matcher = difflib.SequenceMatcher(None, text, answer, autojunk=False)
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            aligned[block.a + k] = block.b + k
    out, previous = [], 0
    for piece in pieces:
        out.append([aligned[i] for i in range(previous, len(piece)) if i in aligned])
        previous = len(piece)
    return out


@dataclass
class SampleCredit:
    """Per-sample results of :func:`credit_samples` (N samples, L layers, H heads).

    Attributes:
        score, char_score: [N, L, H] float64 per-sample credits (see the module docstring).
        evidence_hits, char_hits: [N, L, H] float64 answer tokens whose argmax was evidence /
            on the emitted character's patches.
        answer_tokens: [N] long answer tokens scored; ``char_tokens``: [N] those with
            character boxes and an aligned character.
        overlaps: [N] float64 answer overlap; ``texts``: the readings.
    """

    score: torch.Tensor
    char_score: torch.Tensor
    evidence_hits: torch.Tensor
    char_hits: torch.Tensor
    answer_tokens: torch.Tensor
    char_tokens: torch.Tensor
    overlaps: torch.Tensor
    texts: list[str]


def credit_samples(tokenizer: Any, samples: Sequence[OCRSample], positions: torch.Tensor,
                   tokens: torch.Tensor, lengths: torch.Tensor) -> SampleCredit:
    """The credits of recorded argmax positions (a pure function of the run's record)."""
    count, _, n_layers, n_heads = positions.shape
    shape = (count, n_layers, n_heads)
    score, char_score = torch.zeros(shape, dtype=torch.float64), torch.zeros(shape,
                                                                             dtype=torch.float64)
    evidence_hits, char_hits = torch.zeros(shape, dtype=torch.float64), torch.zeros(
        shape, dtype=torch.float64)
    answer_tokens = torch.zeros(count, dtype=torch.long)
    char_tokens = torch.zeros(count, dtype=torch.long)
    overlaps = torch.zeros(count, dtype=torch.float64)
    eos = getattr(tokenizer, "eos_token_id", None)
    texts = []
    for i, sample in enumerate(samples):
        generated = [int(t) for t in tokens[i, :int(lengths[i])]]
        if eos is not None and eos in generated:
            generated = generated[:generated.index(eos)]
        texts.append(tokenizer.decode(generated, skip_special_tokens=True))
        overlap = longest_common_run(generated, sample.answer_ids) / len(sample.answer_ids)
        overlaps[i] = overlap
        belongs = set(sample.answer_ids)
        chars = _token_answer_chars(tokenizer, generated, sample.answer)
        weight = overlap / len(sample.answer_ids)
        for step, token in enumerate(generated):
            if token not in belongs:
                continue
            where = positions[i, step]  # [L, H]
            answer_tokens[i] += 1
            on_text = sample.evidence[where.clamp_min(0)] & (where >= 0)
            evidence_hits[i] += on_text.double()
            score[i] += on_text.double() * weight
            if sample.char_evidence and chars[step]:
                own = torch.zeros(len(sample.encoded), dtype=torch.bool)
                for c in chars[step]:
                    own |= sample.char_evidence[c]
                on_char = own[where.clamp_min(0)] & (where >= 0)
                char_tokens[i] += 1
                char_hits[i] += on_char.double()
                char_score[i] += on_char.double() * weight
    return SampleCredit(score, char_score, evidence_hits, char_hits, answer_tokens,
                        char_tokens, overlaps, texts)


def summarize(credit: SampleCredit, samples: Sequence[OCRSample], threshold: float
              ) -> ScoreResult:
    """Average the per-sample credits into the [L, H] table (see the module docstring)."""
    score = credit.score.mean(0)
    char_score = credit.char_score.mean(0)
    n_tokens = max(int(credit.answer_tokens.sum()), 1)
    evidence_share = credit.evidence_hits.sum(0) / n_tokens
    n_char = int(credit.char_tokens.sum())
    char_agreement = (credit.char_hits.sum(0) / n_char if n_char
                      else torch.full_like(score, float("nan")))
    exact = [text.strip() == s.answer.strip() for text, s in zip(credit.texts, samples,
                                                                 strict=True)]
    above = score > threshold
    meta = {
        "n_samples": len(samples),
        "reading_accuracy": float(np.mean(exact)),
        "mean_overlap": float(credit.overlaps.mean()),
        "answer_tokens": int(credit.answer_tokens.sum()),
        "char_tokens": n_char,
        "threshold": threshold,
        "n_above_threshold": int(above.sum()),
        "share_above_threshold": float(above.double().mean()),
        "samples": [{"answer": s.answer, "output": text, "overlap": float(o),
                     "exact": bool(e), **{k: s.meta[k] for k in ("font_size", "noise",
                                                                  "difficulty") if k in s.meta}}
                    for s, text, o, e in zip(samples, credit.texts, credit.overlaps.tolist(),
                                             exact, strict=True)],
    }
    columns = {"evidence_share": evidence_share, "char_score": char_score,
               "char_agreement": char_agreement}
    return ScoreResult(score=score.float(), columns=columns, meta=meta)


def compute(model: Any, spec: ModelSpec, data: ScorerData, params: dict[str, Any],
            batch_size: int, progress: bool) -> ScoreResult:
    """Decode every sample (:func:`record_argmax`), credit (:func:`credit_samples`) and
    average (:func:`summarize`)."""
    samples: list[OCRSample] = data.payload
    positions, tokens, lengths = record_argmax(
        model, spec, samples, max_new_tokens=int(params["max_new_tokens"]),
        batch_size=batch_size, progress=progress)
    credit = credit_samples(model.tokenizer, samples, positions, tokens, lengths)
    return summarize(credit, samples, float(params["threshold"]))


SCORER = Scorer(
    name="ocr",
    description="OCR heads: attention argmax on the text's image patches while reading it",
    reference=REFERENCE,
    prepare=prepare_samples,
    compute=compute,
    prompts="None (the ocr_read task, n images of the difficulty parameter), a Task, or a "
            "list of TaskItem with one-image prompts and meta['box'] (meta['char_boxes'] "
            "optional) in the image's pixel coordinates",
    params=OCRParams,
    default_n=32,
    cheap=False,
    needs=frozenset({"generation", "images"}),
)
