"""Activation patching and path patching: one engine, small setters.

Activation patching (Meng et al. 2022, "Locating and Editing Factual Associations in GPT";
Heimersheim & Nanda 2024, "How to use and interpret activation patching") runs a *target*
input while overwriting one activation with its value from a *source* input, and measures a
metric on the final-position logits. Two directions:

- ``denoising`` (default): target = corrupt prompt, source = clean prompt. A head whose clean
  output restores the clean behaviour is *sufficient* (with the rest of the corrupt run);
  normalised logit difference 0 = corrupt behaviour, 1 = clean behaviour.
- ``noising``: target = clean prompt, source = corrupt prompt. A head whose corrupt output
  destroys the clean behaviour is *necessary*; normalised 1 = no effect, 0 = fully broken.

Path patching (Wang et al. 2022, "Interpretability in the Wild: a Circuit for Indirect Object
Identification in GPT-2 small"; Goldowsky-Dill et al. 2023, "Localizing Model Behavior with
Path Patching") measures the effect of *sender* heads only through chosen *receivers* (the
final residual stream, i.e. the logits, or the q/k/v inputs of chosen heads). The three-step
reference algorithm, for the default ``noising`` direction:

1. run clean and corrupt, caching every head's output ``z``;
2. rerun the clean input with the senders' ``z`` taken from the corrupt run and every other
   head's ``z`` frozen to its clean value (MLPs recomputed unless ``freeze_mlps``), and cache
   the receivers' inputs;
3. rerun the clean input with only the receivers' inputs replaced by the step-2 values
   (for receivers = ``"end"`` step 2's logits are already the answer).

A head's query input is patched through ``hook_q`` (its projected query, ``[B, T, H, d_head]``),
which is a function of that head's query input alone, so replacing it is replacing the head's
query input. With grouped-query attention, keys and values live per *kv head*
(``hook_k``/``hook_v`` ``[B, T, H_kv, d_head]``): a k or v setter / receiver names kv heads
and changes every query head of the group (``spec.kv_head(h)``).

Building blocks:

- :class:`Setter`: a hook name, a selection along the head axis and a token position; writes
  a source activation into the target one. Made by :func:`head_z`, :func:`head_q`,
  :func:`head_k`, :func:`head_v`, :func:`resid`, :func:`mlp_out`, :func:`attn_out`.
- :func:`run_with_setters`: one forward pass with setters applied (and activations observed).
- :class:`PatchingEngine`: clean/corrupt prompt pairs, answers, batching, cached source
  activations, baselines and metrics; :meth:`PatchingEngine.run` returns one metric value.
- :func:`activation_patch_heads` (-> :class:`HeadTable`), :func:`activation_patch_heads_by_position`
  (-> long DataFrame, :func:`position_grid` -> [L, H, T]), :func:`path_patch` (one value) and
  :func:`path_patch_senders` (-> :class:`HeadTable`).

The per-(layer, head) loops here are deliberately simple: they are the reference that
``headprobe.fastscan`` is checked against.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from headprobe.arch import ModelSpec
from headprobe.errors import HeadIndexError, MetricError, PromptPairError, TaskError
from headprobe.headtable import HeadTable
from headprobe.inputs import Batch, Prompts, iter_batches, tokenize_prompts
from headprobe.metrics import (
    check_finite,
    final_logits,
    kl_divergence,
    logit_difference,
    probability,
)
from headprobe.models import describe_model
from headprobe.runtime.hooks import attached, model_device

MetricName = Literal["logit_diff", "normalized_logit_diff", "kl", "probability"]
METRICS: tuple[str, ...] = get_args(MetricName)
Direction = Literal["denoising", "noising"]
Which = Literal["clean", "corrupt"]
# A token position: an absolute index (BOS = 0; the same for every prompt), "last" (each
# prompt's last real token) or None (all positions).
Position = int | Literal["last"] | None

REFERENCES = {
    "activation": "Meng et al. 2022, Locating and Editing Factual Associations in GPT; "
    "Heimersheim & Nanda 2024, How to use and interpret activation patching",
    "path": "Wang et al. 2022, Interpretability in the Wild (IOI); Goldowsky-Dill et al. 2023, "
    "Localizing Model Behavior with Path Patching",
}


# ---------------------------------------------------------------------------------------------
# Setters


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


# ---------------------------------------------------------------------------------------------
# One forward pass with setters


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
    by_hook: dict[str, list[tuple[Setter, torch.Tensor]]] = {}
    for setter, source in patches:
        by_hook.setdefault(setter.hook, []).append((setter, source))
    observed: dict[str, torch.Tensor] = {}
    last = batch.last

    def make_hook(name: str) -> Any:
        todo = by_hook.get(name, [])
        watch = name in observe

        def hook(activation: torch.Tensor, hook: Any) -> torch.Tensor | None:
            out = activation
            if todo:
                out = activation.clone()
                for setter, source in todo:
                    setter.write(out, source.to(out.device, out.dtype), last)
            if watch:
                observed[name] = out.detach().clone()
            return out if todo else None

        return hook

    names = list(dict.fromkeys([*by_hook, *observe]))
    hooks = [(name, make_hook(name)) for name in names]
    with torch.inference_mode(), attached(model, hooks):
        logits = model(batch.tokens, **batch.forward_kwargs())
    missing = [name for name in observe if name not in observed]
    if missing:
        raise RuntimeError(f"hooks {missing} did not fire during the forward pass")
    return logits, observed


# ---------------------------------------------------------------------------------------------
# Metrics


def per_prompt_metric(
    metric: MetricName,
    logits: torch.Tensor,
    answer: torch.Tensor,
    distractor: torch.Tensor | None,
    clean_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """The per-prompt quantity behind ``metric``, [B], from final-position logits [B, V].

    - ``logit_diff`` and ``normalized_logit_diff``: logit[answer] - logit[distractor]
      (normalisation happens on the means, see :func:`aggregate_metric`);
    - ``kl``: KL(clean || patched) in nats (needs ``clean_logits`` [B, V]);
    - ``probability``: softmax probability of the (clean) answer.

    Differentiable (no ``inference_mode`` inside), so attribution methods can reuse it.
    """
    if metric in ("logit_diff", "normalized_logit_diff"):
        if distractor is None:
            raise TaskError(f"metric {metric!r} needs a distractor (incorrect answer) per prompt")
        return logit_difference(logits, answer, distractor)
    if metric == "kl":
        if clean_logits is None:
            raise ValueError("metric 'kl' needs the clean run's final logits")
        return kl_divergence(clean_logits.to(logits.device), logits)
    if metric == "probability":
        return probability(logits, answer)
    raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")


def aggregate_metric(
    metric: MetricName,
    values: torch.Tensor,
    clean_values: torch.Tensor,
    corrupt_values: torch.Tensor,
) -> torch.Tensor:
    """One number from per-prompt values [N] (any ``N``; differentiable).

    ``normalized_logit_diff`` = (mean(values) - mean(corrupt)) / (mean(clean) - mean(corrupt)),
    normalised on the means as in Heimersheim & Nanda 2024 (per-prompt ratios explode when a
    prompt's clean and corrupt logit differences are close). Every other metric is the mean.
    """
    if metric == "normalized_logit_diff":
        clean_mean = clean_values.mean()
        corrupt_mean = corrupt_values.mean()
        gap = clean_mean - corrupt_mean
        if not bool(torch.isfinite(gap)) or float(gap.abs()) < 1e-9:
            raise MetricError(
                f"the mean clean and corrupt logit differences are equal ({float(clean_mean):.4g}"
                f" vs {float(corrupt_mean):.4g}): the normalised logit difference is undefined; "
                "use metric='logit_diff' or prompts whose corruption changes the answer"
            )
        return (values.mean() - corrupt_mean) / gap
    return values.mean()


# ---------------------------------------------------------------------------------------------
# The engine


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
        clean, corrupt: the prompt pairs (strings, token-id lists or an [N, T] tensor); pair
            ``i`` must tokenize to the same length (different pairs may differ).
        answer: [N] correct-answer token ids, or single-token strings (``" Mary"``).
        distractor: [N] incorrect-answer ids / strings (needed for logit differences).
        prompts: texts used in error messages (default: the clean prompts when strings).
        batch_size: prompts per forward pass.
        prepend_bos: prepend BOS when tokenizing strings.

    Raises:
        PromptPairError: counts differ, or a pair has different token lengths.

    Source activations (clean / corrupt runs) are cached per hook on first use and kept; the
    baselines (clean and corrupt final logits) are computed at construction and checked for
    NaN (:class:`MetricError` naming the prompt).
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
        self.clean_tokens = tokenize_prompts(model, clean, self.spec, prepend_bos=prepend_bos)
        self.corrupt_tokens = tokenize_prompts(model, corrupt, self.spec,
                                               prepend_bos=prepend_bos)
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
        """An engine over a :class:`~headprobe.tasks.base.Task` whose items have
        ``corrupt_prompt`` and ``distractor`` (e.g. the ``ioi`` task)."""
        from headprobe.tasks.base import answer_token_ids

        missing = [i for i, item in enumerate(task.items) if item.corrupt_prompt is None]
        if missing:
            raise TaskError(f"task {task.name!r}: items {missing[:5]} have no corrupt_prompt; "
                            "patching needs a corrupt prompt per item")
        answer, distractor = answer_token_ids(model, task)
        return cls(model, task.prompts, [item.corrupt_prompt for item in task.items], answer,
                   distractor, batch_size=batch_size)

    def _ids(self, values: Any, what: str) -> torch.Tensor:
        if isinstance(values, torch.Tensor):
            ids = values.long().reshape(-1).cpu()
        else:
            from headprobe.tasks.base import single_token_id

            ids = torch.tensor([
                single_token_id(self.model, v, what=f"prompt {i} {what}") if isinstance(v, str)
                else int(v) for i, v in enumerate(values)
            ], dtype=torch.long)
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

    # ------------------------------------------------------------------ batches and caches
    def batches(self) -> Iterator[PairBatch]:
        """The prompt pairs in padded batches (same order every time)."""
        pad = self.spec.pad_token_id if self.spec.pad_token_id is not None else 0
        clean = iter_batches(self.clean_tokens, self.batch_size, pad_token_id=pad,
                             device=self.device)
        corrupt = iter_batches(self.corrupt_tokens, self.batch_size, pad_token_id=pad,
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
    def values(self, metric: MetricName, logits: torch.Tensor, pair: PairBatch) -> torch.Tensor:
        """Per-prompt metric values [B] for final logits [B, V] of one batch."""
        lo, hi = pair.offset, pair.offset + pair.clean.size
        clean = self.clean_final[lo:hi] if metric == "kl" else None
        values = per_prompt_metric(metric, logits.float(), pair.answer, pair.distractor, clean)
        return check_finite(values, f"metric {metric!r}", self.prompts, offset=lo)

    def baseline_values(self, metric: MetricName) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-prompt values [N] of ``metric`` on the unpatched clean and corrupt runs."""
        out = []
        for final in (self.clean_final, self.corrupt_final):
            values = per_prompt_metric(metric, final, self.answer.to(final.device),
                                       None if self.distractor is None else
                                       self.distractor.to(final.device), self.clean_final)
            out.append(check_finite(values, f"unpatched metric {metric!r}", self.prompts))
        return out[0], out[1]

    def aggregate(self, metric: MetricName, values: torch.Tensor) -> float:
        """One number from per-prompt values [N] (see :func:`aggregate_metric`)."""
        clean, corrupt = self.baseline_values(metric)
        return float(aggregate_metric(metric, values.to(clean.device), clean, corrupt))

    def baseline(self, metric: MetricName) -> dict[str, float]:
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
        metric: MetricName = "normalized_logit_diff",
    ) -> torch.Tensor:
        """Per-prompt values [N]: run ``target`` with ``setters`` fed from ``source``."""
        _check_which(target, "target")
        _check_which(source, "source")
        self.cache(source, [s.hook for s in setters])
        out = []
        for index, pair in enumerate(self.batches()):
            patches = [(s, self._cache[(source, s.hook)][index]) for s in setters]
            logits, _ = run_with_setters(self.model, pair.inputs(target), patches)
            out.append(self.values(metric, final_logits(logits, pair.inputs(target).last),
                                   pair))
        return torch.cat(out)

    def run(
        self,
        setters: Sequence[Setter],
        *,
        target: Which = "corrupt",
        source: Which = "clean",
        metric: MetricName = "normalized_logit_diff",
    ) -> float:
        """Run the ``target`` input with ``setters`` writing ``source`` activations; the metric.

        Default: denoising (run corrupt, patch in clean activations). For
        ``normalized_logit_diff`` 0 = corrupt behaviour, 1 = clean behaviour; ``kl`` is
        KL(clean || patched); ``probability`` is the clean answer's probability.
        """
        return self.aggregate(metric, self.run_values(setters, target=target, source=source,
                                                      metric=metric))


def check_pairs(clean: Sequence[torch.Tensor], corrupt: Sequence[torch.Tensor],
                prompts: Sequence[str] | None = None) -> None:
    """Raise :class:`PromptPairError` unless each clean/corrupt pair has equal token length."""
    if len(clean) != len(corrupt):
        raise PromptPairError(
            f"{len(clean)} clean prompts but {len(corrupt)} corrupt prompts; give one corrupt "
            "prompt per clean prompt")
    for index, (a, b) in enumerate(zip(clean, corrupt, strict=True)):
        if a.numel() != b.numel():
            shown = f" ({prompts[index]!r})" if prompts is not None else ""
            raise PromptPairError(
                f"prompt pair {index}{shown}: clean has {a.numel()} tokens, corrupt has "
                f"{b.numel()}; patching needs pairs of equal token length (change the corrupt "
                "prompt so that it tokenizes to the same length)")


def _check_which(value: str, what: str) -> None:
    if value not in ("clean", "corrupt"):
        raise ValueError(f"{what} must be 'clean' or 'corrupt', got {value!r}")


def _direction(direction: str) -> tuple[Which, Which]:
    """(target, source) runs of a direction (``denoise`` / ``noise`` are accepted too, the
    spelling :mod:`headprobe.fastscan` uses)."""
    direction = {"denoise": "denoising", "noise": "noising"}.get(direction, direction)
    if direction == "denoising":
        return "corrupt", "clean"
    if direction == "noising":
        return "clean", "corrupt"
    raise ValueError(f"direction must be 'denoising' or 'noising', got {direction!r}")


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")


def _meta(engine: PatchingEngine, kind: str, name: str, metric: str, direction: str,
          started: float, **extra: Any) -> dict[str, Any]:
    from headprobe import __version__

    baseline = engine.baseline(metric)  # type: ignore[arg-type]
    target, _ = _direction(direction)
    return {
        "scorer": name,
        "description": f"{kind} patching ({direction}), metric {metric}",
        "reference": REFERENCES[kind],
        "model": engine.spec.name,
        "model_spec": engine.spec.to_dict(),
        "params": {"metric": metric, "direction": direction, **extra},
        "n_prompts": engine.n,
        "baseline": baseline,
        "unpatched": baseline[target],
        "headprobe_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "timings_s": {"total": round(time.perf_counter() - started, 3)},
    }


# ---------------------------------------------------------------------------------------------
# Activation patching per head


def activation_patch_heads(
    engine: PatchingEngine,
    *,
    metric: MetricName = "normalized_logit_diff",
    direction: Direction = "denoising",
    component: Literal["z", "q"] = "z",
    layers: Sequence[int] | None = None,
    progress: bool = True,
) -> HeadTable:
    """Patch each head's ``z`` (or query) at all positions, one forward per (layer, head).

    ``denoising``: run corrupt, write the head's clean activation; ``noising``: run clean,
    write the corrupt one. Reference: TransformerLens ``get_act_patch_attn_head_out_all_pos``.

    Returns:
        A :class:`HeadTable`: ``score`` [L, H] is the metric after patching the head,
        ``effect`` = score - the unpatched target run's metric (0 = no effect). Heads in
        layers not scanned are NaN. Metadata: baselines, direction, metric, timings.
    """
    _check_metric(metric)
    if component not in ("z", "q"):
        raise ValueError(f"component must be 'z' or 'q', got {component!r}")
    target, source = _direction(direction)
    spec = engine.spec
    chosen = spec.check_layers(layers)
    started = time.perf_counter()
    engine.cache(source, [spec.hooks.at(component, layer) for layer in chosen])
    grid = np.full((spec.n_layers, spec.n_heads), np.nan)
    make = head_z if component == "z" else head_q
    todo = [(layer, head) for layer in chosen for head in range(spec.n_heads)]
    for layer, head in tqdm(todo, desc=f"patching {component}", disable=not progress,
                            leave=False):
        grid[layer, head] = engine.run([make(spec, layer, head)], target=target, source=source,
                                       metric=metric)
    meta = _meta(engine, "activation", "activation_patching", metric, direction, started,
                 component=component, layers=chosen, positions="all")
    return HeadTable.from_grid(grid, spec, columns={"effect": grid - meta["unpatched"]},
                               meta=meta)


def activation_patch_heads_by_position(
    engine: PatchingEngine,
    *,
    metric: MetricName = "normalized_logit_diff",
    direction: Direction = "denoising",
    component: Literal["z", "q"] = "z",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Patch each head's ``z`` (or query) at one position at a time.

    Needs every prompt pair to have the same token length (positions must mean the same
    thing across prompts): e.g. IOI items of one template.

    Reference: TransformerLens ``get_act_patch_attn_head_out_by_pos``.

    Returns:
        A long DataFrame, one row per (layer, head, position): ``layer``, ``head``,
        ``kv_head``, ``position``, ``token`` (the first clean prompt's token there),
        ``score`` (metric after patching) and ``effect`` (score - unpatched). ``attrs`` holds
        the metadata; :func:`position_grid` turns it into an [L, H, T] array.
    """
    _check_metric(metric)
    target, source = _direction(direction)
    spec = engine.spec
    lengths = set(engine.seq_lens)
    if len(lengths) != 1:
        raise PromptPairError(
            f"per-position patching needs all prompts to have the same token length; got "
            f"lengths {sorted(lengths)}. Use prompts of one template (e.g. ioi template=0)")
    n_tokens = lengths.pop()
    chosen = spec.check_layers(layers)
    pos_list = list(range(n_tokens)) if positions is None else list(positions)
    for pos in pos_list:
        if not 0 <= pos < n_tokens:
            raise HeadIndexError(f"position {pos} is outside prompts of {n_tokens} tokens")
    started = time.perf_counter()
    make = head_z if component == "z" else head_q
    engine.cache(source, [spec.hooks.at(component, layer) for layer in chosen])
    tokens = [engine.model.tokenizer.decode([int(t)]) for t in engine.clean_tokens[0]]
    rows = []
    todo = [(layer, head, pos) for layer in chosen for head in range(spec.n_heads)
            for pos in pos_list]
    for layer, head, pos in tqdm(todo, desc=f"patching {component} by position",
                                 disable=not progress, leave=False):
        score = engine.run([make(spec, layer, head, position=pos)], target=target,
                           source=source, metric=metric)
        rows.append((layer, head, spec.kv_head(head), pos, tokens[pos], score))
    frame = pd.DataFrame(rows, columns=["layer", "head", "kv_head", "position", "token", "score"])
    meta = _meta(engine, "activation", "activation_patching_by_position", metric, direction,
                 started, component=component, layers=chosen, positions=pos_list)
    frame["effect"] = frame["score"] - meta["unpatched"]
    meta["n_tokens"] = n_tokens
    frame.attrs = meta
    return frame


def position_grid(frame: pd.DataFrame, value: str = "score",
                  spec: ModelSpec | None = None) -> np.ndarray:
    """[L, H, T] array from :func:`activation_patch_heads_by_position` (NaN where not run)."""
    n_layers = spec.n_layers if spec else int(frame["layer"].max()) + 1
    n_heads = spec.n_heads if spec else int(frame["head"].max()) + 1
    n_tokens = int(frame.attrs.get("n_tokens", int(frame["position"].max()) + 1))
    grid = np.full((n_layers, n_heads, n_tokens), np.nan)
    grid[frame["layer"].to_numpy(), frame["head"].to_numpy(),
         frame["position"].to_numpy()] = frame[value].to_numpy()
    return grid


# ---------------------------------------------------------------------------------------------
# Path patching


@dataclass(frozen=True)
class Receiver:
    """A path-patching receiver: the ``q``, ``k`` or ``v`` input of one head.

    ``head`` is a query head for ``q`` and a **kv head** for ``k``/``v`` (grouped-query
    attention shares keys and values within a group).
    """

    kind: Literal["q", "k", "v"]
    layer: int
    head: int

    def setter(self, spec: ModelSpec, position: Position = None) -> Setter:
        make = {"q": head_q, "k": head_k, "v": head_v}.get(self.kind)
        if make is None:
            raise ValueError(f"receiver kind must be 'q', 'k' or 'v', got {self.kind!r}")
        return make(spec, self.layer, self.head, position)


Receivers = Literal["end"] | Sequence[Receiver | tuple[str, int, int]]


def _receivers(receivers: Receivers) -> list[Receiver] | None:
    if isinstance(receivers, str):
        if receivers != "end":
            raise ValueError(f"receivers must be 'end' or a list of Receiver, got {receivers!r}")
        return None
    out = [r if isinstance(r, Receiver) else Receiver(*r) for r in receivers]  # type: ignore[arg-type]
    if not out:
        raise ValueError("give at least one receiver (or receivers='end')")
    return out


@dataclass
class PathPatchResult:
    """What :func:`path_patch_values` returns.

    Attributes:
        values: [N] per-prompt metric values.
        receiver_acts: ``{hook: activation}`` for the hooks asked for with ``observe``,
            recorded in the final run (step 3, or step 2 for ``"end"``) of the *last* batch.
    """

    values: torch.Tensor
    receiver_acts: dict[str, torch.Tensor] = field(default_factory=dict)


def path_patch_values(
    engine: PatchingEngine,
    senders: Sequence[tuple[int, int]],
    receivers: Receivers = "end",
    *,
    metric: MetricName = "normalized_logit_diff",
    direction: Direction = "noising",
    freeze_mlps: bool = False,
    receiver_position: Position = None,
    observe: Sequence[str] = (),
) -> PathPatchResult:
    """Per-prompt values of :func:`path_patch` (and hooks in ``observe`` recorded during the
    final run of the last batch, for tests and inspection)."""
    _check_metric(metric)
    spec = engine.spec
    base, source = _direction(direction)
    sender_set = {spec.check_head(layer, head) for layer, head in senders}
    if not sender_set:
        raise ValueError("give at least one sender head")
    chosen = _receivers(receivers)
    z_hooks = [spec.hooks.at("z", layer) for layer in range(spec.n_layers)]
    mlp_hooks = [spec.hooks.at("mlp_out", layer) for layer in range(spec.n_layers)]
    engine.cache(base, z_hooks + (mlp_hooks if freeze_mlps else []))
    sender_layers = sorted({layer for layer, _ in sender_set})
    engine.cache(source, [spec.hooks.at("z", layer) for layer in sender_layers])
    receiver_setters = [] if chosen is None else [r.setter(spec, receiver_position)
                                                  for r in chosen]
    seen: dict[str, torch.Tensor] = {}
    out = []
    for index, pair in enumerate(engine.batches()):
        # Step 2: base input; senders from the source run, every other head frozen to base.
        patches: list[tuple[Setter, torch.Tensor]] = []
        for layer in range(spec.n_layers):
            hook = spec.hooks.at("z", layer)
            mine = tuple(h for h in range(spec.n_heads) if (layer, h) in sender_set)
            others = tuple(h for h in range(spec.n_heads) if (layer, h) not in sender_set)
            if others:
                patches.append((Setter(hook, others), engine._cache[(base, hook)][index]))
            if mine:
                patches.append((Setter(hook, mine), engine._cache[(source, hook)][index]))
            if freeze_mlps:
                mlp_hook = spec.hooks.at("mlp_out", layer)
                patches.append((Setter(mlp_hook), engine._cache[(base, mlp_hook)][index]))
        batch = pair.inputs(base)
        step2_observe = [s.hook for s in receiver_setters]
        logits, seen = run_with_setters(engine.model, batch, patches,
                                        observe=step2_observe if chosen else observe)
        if chosen is not None:
            # Step 3: base input, only the receivers' inputs replaced by their step-2 values.
            step3 = [(s, seen[s.hook]) for s in receiver_setters]
            logits, seen = run_with_setters(engine.model, batch, step3, observe=observe)
        out.append(engine.values(metric, final_logits(logits, batch.last), pair))
    return PathPatchResult(torch.cat(out), {k: seen[k] for k in observe})


def path_patch(
    engine: PatchingEngine,
    senders: Sequence[tuple[int, int]],
    receivers: Receivers = "end",
    *,
    metric: MetricName = "normalized_logit_diff",
    direction: Direction = "noising",
    freeze_mlps: bool = False,
    receiver_position: Position = None,
) -> float:
    """Effect of ``senders`` (query heads) on the metric through ``receivers`` only.

    Three-step algorithm of Wang et al. 2022 / Goldowsky-Dill et al. 2023 (see the module
    docstring). ``noising`` (default): base run clean, senders' ``z`` from corrupt, every other
    head's ``z`` frozen to clean; ``denoising`` swaps clean and corrupt.

    Args:
        senders: ``(layer, head)`` query heads whose output is patched (all positions).
        receivers: ``"end"`` (the final residual stream, i.e. the logits) or a list of
            :class:`Receiver` / ``(kind, layer, head)`` with kind ``q``/``k``/``v`` (``head`` a
            kv head for ``k``/``v``). Receivers in layers <= a sender's layer see no change
            from it.
        freeze_mlps: also freeze every MLP output to the base run in step 2 (only direct
            head-to-receiver paths remain); default False (MLPs recomputed, as in Wang et al.).
        receiver_position: patch the receivers at one position only (``"last"`` = the
            final token) instead of all positions.

    Returns:
        The aggregated metric (normalised: 1 = unpatched clean behaviour when noising).
    """
    result = path_patch_values(engine, senders, receivers, metric=metric, direction=direction,
                               freeze_mlps=freeze_mlps, receiver_position=receiver_position)
    return engine.aggregate(metric, result.values)


def path_patch_senders(
    engine: PatchingEngine,
    receivers: Receivers = "end",
    *,
    metric: MetricName = "normalized_logit_diff",
    direction: Direction = "noising",
    layers: Sequence[int] | None = None,
    freeze_mlps: bool = False,
    receiver_position: Position = None,
    progress: bool = True,
) -> HeadTable:
    """Path-patch every head of ``layers`` (default all) as a single sender.

    One step-2 forward per sender (plus one step-3 forward when receivers are heads). Senders
    in a layer at or after the last receiver layer cannot reach a receiver: their score is the
    unpatched value, filled in without running. Heads of layers not scanned are NaN.

    Returns:
        A :class:`HeadTable`: ``score`` [L, H] the metric, ``effect`` = score - unpatched
        (negative = the sender, through the receivers, supports the clean behaviour, when
        noising the normalised logit difference).
    """
    _check_metric(metric)
    spec = engine.spec
    chosen_receivers = _receivers(receivers)
    chosen = spec.check_layers(layers)
    started = time.perf_counter()
    target, _ = _direction(direction)
    unpatched = engine.baseline(metric)[target]
    limit = spec.n_layers if chosen_receivers is None else max(r.layer for r in
                                                               chosen_receivers)
    grid = np.full((spec.n_layers, spec.n_heads), np.nan)
    todo = []
    for layer in chosen:
        for head in range(spec.n_heads):
            if layer >= limit:
                grid[layer, head] = unpatched
            else:
                todo.append((layer, head))
    for layer, head in tqdm(todo, desc="path patching", disable=not progress, leave=False):
        grid[layer, head] = path_patch(engine, [(layer, head)], receivers, metric=metric,
                                       direction=direction, freeze_mlps=freeze_mlps,
                                       receiver_position=receiver_position)
    shown = "end" if chosen_receivers is None else [
        (r.kind, r.layer, r.head) for r in chosen_receivers]
    meta = _meta(engine, "path", "path_patching", metric, direction, started, receivers=shown,
                 layers=chosen, freeze_mlps=freeze_mlps,
                 receiver_position=receiver_position)
    return HeadTable.from_grid(grid, spec, columns={"effect": grid - meta["unpatched"]},
                               meta=meta)


def unpatched_value(engine: PatchingEngine, metric: MetricName, direction: Direction) -> float:
    """The metric on the unpatched target run of ``direction``."""
    target, _ = _direction(direction)
    return engine.baseline(metric)[target]


__all__ = [
    "METRICS",
    "MetricName",
    "PairBatch",
    "PatchingEngine",
    "PathPatchResult",
    "Receiver",
    "Setter",
    "activation_patch_heads",
    "activation_patch_heads_by_position",
    "aggregate_metric",
    "attn_out",
    "check_pairs",
    "head_k",
    "head_q",
    "head_v",
    "head_z",
    "mlp_out",
    "path_patch",
    "path_patch_senders",
    "path_patch_values",
    "per_prompt_metric",
    "position_grid",
    "resid",
    "run_with_setters",
    "unpatched_value",
]
