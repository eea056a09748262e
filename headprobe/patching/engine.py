"""The patching engine: clean/corrupt prompt pairs, answers, cached sources, baselines, metrics.

Activation patching (Meng et al. 2022, "Locating and Editing Factual Associations in GPT";
Heimersheim & Nanda 2024, "How to use and interpret activation patching") runs a *target*
input while overwriting activations with their values from a *source* input and measures a
metric on the final-position logits. :class:`PatchingEngine` holds the prompt pairs (in padded
batches), caches source activations per hook on first use, computes the unpatched baselines
and turns per-prompt metric values into one number (:func:`headprobe.metrics.aggregate_metric`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from headprobe.answers import token_ids
from headprobe.errors import PromptPairError, TaskError
from headprobe.inputs import Batch, Prompts, encode_prompts, fingerprint, iter_batches
from headprobe.metrics import (
    Metric,
    aggregate_metric,
    check_finite,
    final_logits,
    metric_label,
    per_prompt_metric,
    resolve_metric,
)
from headprobe.models import describe_model
from headprobe.patching.setters import Setter, run_with_setters
from headprobe.provenance import Timer, result_meta
from headprobe.runtime.hooks import model_device
from headprobe.tasks.pairs import check_pairs, prepare_scan_data
from headprobe.types import Which, direction_runs

REFERENCES = {
    "activation": "Meng et al. 2022, Locating and Editing Factual Associations in GPT; "
    "Heimersheim & Nanda 2024, How to use and interpret activation patching",
    "path": "Wang et al. 2022, Interpretability in the Wild (IOI); Goldowsky-Dill et al. 2023, "
    "Localizing Model Behavior with Path Patching",
}


@dataclass
class PairBatch:
    """One batch of prompt pairs (same padding layout for clean and corrupt).

    Attributes:
        clean, corrupt: :class:`Batch` [B, T] each (right padded).
        answer: [B] correct-answer ids (on the model's device).
        distractor: [B] incorrect-answer ids, or None.
        offset: index of the batch's first prompt in the prompt set.
    """

    clean: Batch
    corrupt: Batch
    answer: torch.Tensor
    distractor: torch.Tensor | None
    offset: int

    def inputs(self, which: Which) -> Batch:
        return self.clean if which == "clean" else self.corrupt


class PatchingEngine:
    """Clean/corrupt prompt pairs with answers, ready for patching experiments.

    Args:
        model: a TransformerLens bridge.
        clean, corrupt: the prompt pairs (any prompt kind: strings, :class:`Text`,
            :class:`Chat`, :class:`ImagePrompt`, token-id lists or an [N, T] tensor); pair
            ``i`` must encode to the same length (different pairs may differ), e.g. the same
            text with different images.
        answer: [N] correct-answer token ids, or single-token strings (``" Mary"``).
        distractor: [N] incorrect-answer ids / strings (needed for logit differences).
        prompts: texts used in error messages (default: the clean prompts when strings).
        batch_size: prompts per forward pass.
        prepend_bos: prepend BOS when tokenizing strings.

    Raises:
        PromptPairError: counts differ, or a pair has different token lengths.

    Attributes ``clean_encoded`` / ``corrupt_encoded`` hold the encoded prompts (ids, spans,
    extra inputs); ``clean_tokens`` / ``corrupt_tokens`` their [T_i] ids.

    Source activations (clean / corrupt runs) are cached per hook on first use and kept (in
    the model's dtype); the baselines (clean and corrupt final logits, float32) are computed
    at construction and checked for NaN (:class:`MetricError` naming the prompt).

    Every method taking ``metric`` accepts a name or a function (see
    :func:`headprobe.metrics.resolve_metric`).
    """

    def __init__(
        self,
        model: Any,
        clean: Prompts,
        corrupt: Prompts,
        answer: Sequence[int] | Sequence[str] | torch.Tensor,
        distractor: Sequence[int] | Sequence[str] | torch.Tensor | None = None,
        *,
        prompts: Sequence[str] | None = None,
        batch_size: int = 8,
        prepend_bos: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.spec = describe_model(model)
        self.batch_size = batch_size
        self.device = model_device(model)
        # any prompt kind: image prompts carry their pixel values into every run
        self.clean_encoded = encode_prompts(model, clean, self.spec, prepend_bos=prepend_bos)
        self.corrupt_encoded = encode_prompts(model, corrupt, self.spec,
                                              prepend_bos=prepend_bos)
        self.clean_tokens = [item.ids for item in self.clean_encoded]
        self.corrupt_tokens = [item.ids for item in self.corrupt_encoded]
        if prompts is None and not isinstance(clean, torch.Tensor) and all(
                isinstance(p, str) for p in clean):
            prompts = list(clean)  # type: ignore[arg-type]
        self.prompts: list[str] | None = list(prompts) if prompts is not None else None
        check_pairs(self.clean_tokens, self.corrupt_tokens, self.prompts)
        self.answer = self._ids(answer, "answer")
        self.distractor = None if distractor is None else self._ids(distractor, "distractor")
        self._cache: dict[tuple[str, str], list[torch.Tensor]] = {}
        self.clean_final, self.corrupt_final = self._baseline_logits()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_task(cls, model: Any, task: Any, *, batch_size: int = 8) -> PatchingEngine:
        """An engine over a :class:`~headprobe.tasks.base.Task` (or its items) whose items have
        ``corrupt_prompt`` and, for logit differences, ``distractor`` (e.g. the ``ioi`` task).
        """
        items = list(task.items) if hasattr(task, "items") else list(task)
        missing = [i for i, item in enumerate(items) if item.corrupt_prompt is None]
        if missing:
            raise TaskError(f"task {getattr(task, 'name', 'items')!r}: items {missing[:5]} have "
                            "no corrupt_prompt; patching needs a corrupt prompt per item")
        data = prepare_scan_data(model, task, need_corrupt=True, need_distractor=False)
        assert data.corrupt is not None
        return cls(model, data.clean, data.corrupt, data.answers, data.distractors,
                   prompts=data.prompts, batch_size=batch_size)

    def _ids(self, values: Any, what: str) -> torch.Tensor:
        ids = token_ids(self.model, values, what=what)
        if ids.numel() != self.n:
            raise PromptPairError(f"{ids.numel()} {what}s for {self.n} prompt pairs")
        return ids

    @property
    def n(self) -> int:
        """Number of prompt pairs."""
        return len(self.clean_tokens)

    @property
    def seq_lens(self) -> list[int]:
        """Token length of each pair."""
        return [len(ids) for ids in self.clean_tokens]

    def fingerprint(self) -> str:
        """sha256 prefix of the tokenized pairs (result metadata)."""
        return fingerprint(self.clean_encoded + self.corrupt_encoded)

    # ------------------------------------------------------------------ batches and caches
    def batches(self) -> Iterator[PairBatch]:
        """The prompt pairs in padded batches (same order every time)."""
        pad = self.spec.pad_token_id if self.spec.pad_token_id is not None else 0
        clean = iter_batches(self.clean_encoded, self.batch_size, pad_token_id=pad,
                             device=self.device)
        corrupt = iter_batches(self.corrupt_encoded, self.batch_size, pad_token_id=pad,
                               device=self.device)
        for clean_batch, corrupt_batch in zip(clean, corrupt, strict=True):
            lo = int(clean_batch.indices[0])
            hi = lo + clean_batch.size
            yield PairBatch(
                clean=clean_batch,
                corrupt=corrupt_batch,
                answer=self.answer[lo:hi].to(self.device),
                distractor=None if self.distractor is None else
                self.distractor[lo:hi].to(self.device),
                offset=lo,
            )

    def cache(self, which: Which, hooks: Sequence[str]) -> None:
        """Run ``which`` once per batch and keep its activations at ``hooks`` (on device)."""
        missing = [h for h in dict.fromkeys(hooks) if (which, h) not in self._cache]
        if not missing:
            return
        store: dict[str, list[torch.Tensor]] = {h: [] for h in missing}
        for pair in self.batches():
            _, observed = run_with_setters(self.model, pair.inputs(which), observe=missing)
            for h in missing:
                store[h].append(observed[h])
        for h in missing:
            self._cache[(which, h)] = store[h]

    def activations(self, which: Which, hook: str, batch_index: int) -> torch.Tensor:
        """The cached activation of ``which`` at ``hook`` for batch ``batch_index``."""
        self.cache(which, [hook])
        return self._cache[(which, hook)][batch_index]

    def clear_cache(self) -> None:
        self._cache.clear()

    def _baseline_logits(self) -> tuple[torch.Tensor, torch.Tensor]:
        finals: dict[str, list[torch.Tensor]] = {"clean": [], "corrupt": []}
        for pair in self.batches():
            for which in ("clean", "corrupt"):
                batch = pair.inputs(which)  # type: ignore[arg-type]
                logits, _ = run_with_setters(self.model, batch)
                final = final_logits(logits, batch.last).float()
                check_finite(final.reshape(final.shape[0], -1), f"{which} logits", self.prompts,
                             offset=pair.offset)
                finals[which].append(final)
        return torch.cat(finals["clean"]), torch.cat(finals["corrupt"])

    # ------------------------------------------------------------------ metrics
    def values(self, metric: Metric, logits: torch.Tensor, pair: PairBatch) -> torch.Tensor:
        """Per-prompt metric values [B] (float32) for final logits [B, V] of one batch."""
        resolved = resolve_metric(metric)
        lo, hi = pair.offset, pair.offset + pair.clean.size
        clean = self.clean_final[lo:hi] if resolved.needs_clean else None
        values = per_prompt_metric(resolved, logits.float(), pair.answer, pair.distractor, clean)
        return check_finite(values, f"metric {resolved.name!r}", self.prompts, offset=lo)

    def baseline_values(self, metric: Metric) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-prompt values [N] of ``metric`` on the unpatched clean and corrupt runs."""
        resolved = resolve_metric(metric)
        out = []
        for final in (self.clean_final, self.corrupt_final):
            values = per_prompt_metric(resolved, final, self.answer.to(final.device),
                                       None if self.distractor is None else
                                       self.distractor.to(final.device), self.clean_final)
            out.append(check_finite(values, f"unpatched metric {resolved.name!r}",
                                    self.prompts))
        return out[0], out[1]

    def aggregate(self, metric: Metric, values: torch.Tensor) -> float:
        """One number from per-prompt values [N] (see :func:`aggregate_metric`)."""
        clean, corrupt = self.baseline_values(metric)
        return float(aggregate_metric(resolve_metric(metric), values.to(clean.device), clean,
                                      corrupt))

    def baseline(self, metric: Metric) -> dict[str, float]:
        """``{"clean": ..., "corrupt": ...}``: the metric on the unpatched runs."""
        clean, corrupt = self.baseline_values(metric)
        return {"clean": self.aggregate(metric, clean), "corrupt": self.aggregate(metric, corrupt)}

    # ------------------------------------------------------------------ running
    def run_values(
        self,
        setters: Sequence[Setter],
        *,
        target: Which = "corrupt",
        source: Which = "clean",
        metric: Metric = "normalized_logit_diff",
    ) -> torch.Tensor:
        """Per-prompt values [N]: run ``target`` with ``setters`` fed from ``source``."""
        _check_which(target, "target")
        _check_which(source, "source")
        resolved = resolve_metric(metric)
        self.cache(source, [s.hook for s in setters])
        out = []
        for index, pair in enumerate(self.batches()):
            patches = [(s, self._cache[(source, s.hook)][index]) for s in setters]
            logits, _ = run_with_setters(self.model, pair.inputs(target), patches)
            out.append(self.values(resolved, final_logits(logits, pair.inputs(target).last),
                                   pair))
        return torch.cat(out)

    def run(
        self,
        setters: Sequence[Setter],
        *,
        target: Which = "corrupt",
        source: Which = "clean",
        metric: Metric = "normalized_logit_diff",
    ) -> float:
        """Run the ``target`` input with ``setters`` writing ``source`` activations; the metric.

        Default: denoising (run corrupt, patch in clean activations). For
        ``normalized_logit_diff`` 0 = corrupt behaviour, 1 = clean behaviour; ``kl`` is
        KL(clean || patched); ``probability`` is the clean answer's probability; a function's
        values are averaged over prompts.
        """
        return self.aggregate(metric, self.run_values(setters, target=target, source=source,
                                                      metric=metric))


def _check_which(value: str, what: str) -> None:
    if value not in ("clean", "corrupt"):
        raise ValueError(f"{what} must be 'clean' or 'corrupt', got {value!r}")


def patch_meta(engine: PatchingEngine, kind: str, name: str, metric: Metric, direction: str,
               timer: Timer, **extra: Any) -> dict[str, Any]:
    """Result metadata of a patching table (:func:`headprobe.provenance.result_meta`), with the
    extra keys ``baseline`` (clean / corrupt metric) and ``unpatched`` (the target run's)."""
    baseline = engine.baseline(metric)
    target, _ = direction_runs(direction)
    label = metric_label(metric)
    return result_meta(
        kind="patching", name=name, spec=engine.spec,
        params={"metric": label, "direction": direction, **extra},
        fingerprint=engine.fingerprint(), n_prompts=engine.n, timer=timer,
        description=f"{kind} patching ({direction}), metric {label}",
        reference=REFERENCES[kind], baseline=baseline, unpatched=baseline[target])
