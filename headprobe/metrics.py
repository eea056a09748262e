"""Metrics on final-position logits shared by patching, scans, DLA and experiments.

All functions take ``logits`` [B, V] at the position being scored (see
:func:`final_logits`) and return one value per prompt, [B], computed in float32 whatever the
model's dtype (a bf16 model's logits are upcast before any difference or softmax).

A *metric* of the patching engines is a name in :data:`METRICS` or a callable with the
:data:`MetricFn` signature; :func:`resolve_metric` is the one place that turns either into a
:class:`ResolvedMetric` (per-prompt values plus how to aggregate them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from headprobe.errors import MetricError, TaskError, UnknownMetricError
from headprobe.registry import unknown_name_message
from headprobe.types import METRICS, MetricName

# metric(logits [B, V] at the final position, answer [B], distractor [B] | None,
#        clean_logits [B, V] of the unpatched clean run) -> [B] values, one per prompt.
MetricFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor],
                    torch.Tensor]
Metric = MetricName | MetricFn


def final_logits(logits: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """[B, T, V] logits and [B] last real positions -> [B, V]."""
    return logits[torch.arange(logits.shape[0], device=logits.device), last.to(logits.device)]


def logit_difference(logits: torch.Tensor, correct: torch.Tensor,
                     incorrect: torch.Tensor) -> torch.Tensor:
    """logit[correct] - logit[incorrect], per prompt, in float32 ([B, V] -> [B])."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    return (logits[rows, correct.to(logits.device)].float()
            - logits[rows, incorrect.to(logits.device)].float())


def normalized_logit_difference(value: torch.Tensor, clean: torch.Tensor,
                                corrupt: torch.Tensor) -> torch.Tensor:
    """(value - corrupt) / (clean - corrupt): 1 = clean behaviour, 0 = corrupt behaviour."""
    return (value - corrupt) / (clean - corrupt)


def probability(logits: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """Softmax probability of ``token`` per prompt (softmax in float32), [B, V] -> [B]."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits.float().softmax(-1)[rows, token.to(logits.device)]


def kl_divergence(base_logits: torch.Tensor, new_logits: torch.Tensor,
                  eps: float = 1e-12) -> torch.Tensor:
    """KL(p_base || p_new) = sum p_base (log p_base - log p_new), per prompt (nats), float32.

    ``eps`` is added to both distributions inside the logs, as in the Ships reference code.
    """
    base = base_logits.float().softmax(-1)
    new = new_logits.float().softmax(-1)
    return (base * ((base + eps).log() - (new + eps).log())).sum(-1)


@dataclass(frozen=True)
class ResolvedMetric:
    """A metric ready to use.

    Attributes:
        name: the metric's name (a callable's ``__name__``).
        values: ``values(logits [B, V], answer [B], distractor [B] | None, clean [B, V] | None)
            -> [B]`` float32 per-prompt values (differentiable).
        normalized: aggregate as the normalised logit difference (on the means), else the mean.
        needs_clean: the metric reads the clean run's logits (``kl``, every callable).
    """

    name: str
    values: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None],
                     torch.Tensor]
    normalized: bool = False
    needs_clean: bool = False


def _named(metric: str) -> ResolvedMetric:
    if metric in ("logit_diff", "normalized_logit_diff"):
        def diff(logits: torch.Tensor, answer: torch.Tensor, distractor: torch.Tensor | None,
                 clean: torch.Tensor | None) -> torch.Tensor:
            if distractor is None:
                raise TaskError(
                    f"metric {metric!r} needs a distractor (incorrect answer) per prompt")
            return logit_difference(logits, answer, distractor)
        return ResolvedMetric(metric, diff, normalized=metric == "normalized_logit_diff")
    if metric == "kl":
        def kl(logits: torch.Tensor, answer: torch.Tensor, distractor: torch.Tensor | None,
               clean: torch.Tensor | None) -> torch.Tensor:
            if clean is None:
                raise ValueError("metric 'kl' needs the clean run's final logits")
            return kl_divergence(clean.to(logits.device), logits)
        return ResolvedMetric("kl", kl, needs_clean=True)
    if metric == "probability":
        def prob(logits: torch.Tensor, answer: torch.Tensor, distractor: torch.Tensor | None,
                 clean: torch.Tensor | None) -> torch.Tensor:
            return probability(logits, answer)
        return ResolvedMetric("probability", prob)
    raise UnknownMetricError(
        unknown_name_message("metric", metric, list(METRICS)) + ", or pass a function "
        "(logits, answer, distractor, clean_logits) -> [B] values")


def resolve_metric(metric: Metric | ResolvedMetric) -> ResolvedMetric:
    """The one place a metric name or function becomes a :class:`ResolvedMetric`.

    Args:
        metric: a name in :data:`METRICS`:

            - ``logit_diff``: ``logit[answer] - logit[distractor]`` per prompt, mean over prompts;
            - ``normalized_logit_diff``: the same per prompt, aggregated as
              ``(mean - mean_corrupt) / (mean_clean - mean_corrupt)`` (:func:`aggregate_metric`);
            - ``kl``: ``KL(clean || patched)`` in nats;
            - ``probability``: softmax probability of the answer;

            or a function ``fn(logits, answer, distractor, clean_logits) -> values`` with
            ``logits`` [B, V] the final-position logits of the run being scored, ``answer``
            [B] and ``distractor`` [B] (or None) token ids, ``clean_logits`` [B, V] the
            unpatched clean run's final logits, and ``values`` [B] one number per prompt;
            a function's values are aggregated as their mean.

    Raises:
        UnknownMetricError: an unknown name (or something that is neither a name nor
            callable); a ``ValueError`` too.
    """
    if isinstance(metric, ResolvedMetric):
        return metric
    if isinstance(metric, str):
        return _named(metric)
    if callable(metric):
        fn = metric

        def custom(logits: torch.Tensor, answer: torch.Tensor, distractor: torch.Tensor | None,
                   clean: torch.Tensor | None) -> torch.Tensor:
            if clean is None:
                raise ValueError("a metric function needs the clean run's final logits")
            values = torch.as_tensor(fn(logits, answer, distractor, clean.to(logits.device)))
            if values.shape != (logits.shape[0],):
                raise MetricError(
                    f"metric function {getattr(fn, '__name__', fn)!r} returned shape "
                    f"{tuple(values.shape)}; it must return one value per prompt, "
                    f"[{logits.shape[0]}]")
            return values.float()

        return ResolvedMetric(str(getattr(fn, "__name__", "custom")), custom, needs_clean=True)
    raise UnknownMetricError(f"a metric is a name ({', '.join(METRICS)}) or a function, got "
                             f"{type(metric).__name__} {metric!r}")


def metric_label(metric: Metric | ResolvedMetric) -> str:
    """A printable name of a metric (for result metadata)."""
    return resolve_metric(metric).name


def per_prompt_metric(
    metric: Metric | ResolvedMetric,
    logits: torch.Tensor,
    answer: torch.Tensor,
    distractor: torch.Tensor | None,
    clean_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """The per-prompt quantity behind ``metric``, [B] float32, from final logits [B, V].

    - ``logit_diff`` and ``normalized_logit_diff``: logit[answer] - logit[distractor]
      (normalisation happens on the means, see :func:`aggregate_metric`);
    - ``kl``: KL(clean || patched) in nats (needs ``clean_logits`` [B, V]);
    - ``probability``: softmax probability of the (clean) answer;
    - a function: its values (see :func:`resolve_metric`).

    Differentiable (no ``inference_mode`` inside), so attribution methods can reuse it.
    """
    return resolve_metric(metric).values(logits, answer, distractor, clean_logits)


def aggregate_metric(
    metric: Metric | ResolvedMetric,
    values: torch.Tensor,
    clean_values: torch.Tensor,
    corrupt_values: torch.Tensor,
) -> torch.Tensor:
    """One number from per-prompt values [N] (any ``N``; differentiable).

    ``normalized_logit_diff`` = (mean(values) - mean(corrupt)) / (mean(clean) - mean(corrupt)),
    normalised on the means as in Heimersheim & Nanda 2024, "How to use and interpret
    activation patching" (per-prompt ratios explode when a prompt's clean and corrupt logit
    differences are close). Every other metric, a function included, is the mean.
    """
    if resolve_metric(metric).normalized:
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


def check_finite(values: torch.Tensor, what: str, prompts: Sequence[str] | None = None,
                 offset: int = 0) -> torch.Tensor:
    """Raise :class:`MetricError` naming the first prompt whose value is NaN or infinite."""
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        index = int(torch.nonzero(bad.reshape(bad.shape[0], -1).any(-1))[0]) + offset
        shown = f": {prompts[index - offset]!r}" if prompts is not None else ""
        raise MetricError(f"{what} is not finite for prompt {index}{shown}")
    return values
