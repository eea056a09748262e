"""How well one scored grid finds the known heads: AUROC, precision and recall, the PR curve.

Every head of the grid ``[n_layers, n_heads]`` is a positive (a known head of the case's
type) or a negative (every other head); the scorer's value ranks them, higher meaning more
of the type. The numbers, for ``P`` known heads among the scored heads:

- **AUROC**: the probability that a random known head scores above a random other head,
  ties counted half (the Mann-Whitney U statistic over ``P * N``), from average ranks.
- **precision / recall at the threshold**: a head is *called* when its score is
  ``>= threshold``; precision = known heads called / heads called (undefined, ``NaN``, when
  no head is called), recall = known heads called / known heads.
- **top-k precision**, ``k`` = the number of known heads: the share of known heads among the
  ``k`` best-scored heads; heads tied at the ``k``-th score share the remaining places
  equally (the expectation over random tie-breaking).
- **precision-recall curve**: precision and recall at every distinct score taken as the
  threshold, highest first; **average precision** = sum over those thresholds of
  ``(recall_i - recall_{i-1}) * precision_i`` (scikit-learn's definition, ties grouped).

Heads a scorer skips (``NaN`` scores) are dropped and counted (``n_nan``); a known head
without a score cannot be called, so it still counts in the recall (and the PR curve's)
denominator: a scorer that skips a known head does not reach recall 1. AUROC is over the
scored heads only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from headprobe.types import Head


@dataclass(frozen=True)
class PRCurve:
    """Precision and recall at each distinct score taken as the threshold (highest first).

    Attributes:
        thresholds: ``[T]`` the distinct scores, descending.
        precision: ``[T]`` precision when every head scoring ``>= thresholds[i]`` is called.
        recall: ``[T]`` recall at the same threshold.
    """

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray


@dataclass(frozen=True)
class Metrics:
    """How one grid finds the known heads (see the module docstring for each definition).

    Attributes:
        n_heads: heads in the grid.
        n_known: known heads.
        n_nan: heads without a score (dropped).
        n_known_nan: known heads among them (counted as not found).
        auroc: over the scored heads (``NaN`` when they are all known or all not known).
        precision: at ``threshold`` (``NaN`` when no head is called).
        recall: at ``threshold``.
        top_k_precision: ``k`` = ``n_known``.
        average_precision: area under the step PR curve.
        threshold: the threshold used.
        curve: the precision-recall curve.
    """

    n_heads: int
    n_known: int
    n_nan: int
    n_known_nan: int
    auroc: float
    precision: float
    recall: float
    top_k_precision: float
    average_precision: float
    threshold: float
    curve: PRCurve

    def values(self) -> dict[str, float]:
        """The floor-able numbers by name (``auroc``, ``precision``, ``recall``,
        ``top_k_precision``) plus ``average_precision``."""
        return {"auroc": self.auroc, "precision": self.precision, "recall": self.recall,
                "top_k_precision": self.top_k_precision,
                "average_precision": self.average_precision}


def known_mask(shape: tuple[int, int], known: Iterable[Head]) -> np.ndarray:
    """``[n_layers, n_heads]`` boolean grid, True at the known heads.

    Raises:
        ValueError: a known head outside the grid.
    """
    mask = np.zeros(shape, dtype=bool)
    for layer, head in known:
        if not (0 <= layer < shape[0] and 0 <= head < shape[1]):
            raise ValueError(f"known head L{layer}H{head} is outside the scored grid "
                             f"{shape[0]} layers x {shape[1]} heads")
        mask[layer, head] = True
    return mask


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """AUROC of ``scores`` ``[M]`` against the boolean labels ``positive`` ``[M]``: the
    Mann-Whitney U of the positives over ``P * N``, ties counted half (average ranks).
    ``NaN`` when there are no positives or no negatives."""
    n_pos = int(positive.sum())
    n_neg = int(positive.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(scores, method="average")
    u = float(ranks[positive].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def top_k_precision(scores: np.ndarray, positive: np.ndarray, k: int) -> float:
    """Share of positives among the ``k`` best of ``scores`` ``[M]``; the heads tied at the
    ``k``-th score fill the remaining places in proportion (expected over random
    tie-breaking). ``k`` is capped at ``M``; ``NaN`` when it is 0."""
    k = min(k, scores.size)
    if k <= 0:
        return math.nan
    kth = np.sort(scores)[::-1][k - 1]
    above = scores > kth
    tied = scores == kth
    places = k - int(above.sum())
    expected = int(positive[above].sum()) + places * positive[tied].sum() / tied.sum()
    return float(expected) / k


def pr_curve(scores: np.ndarray, positive: np.ndarray, n_positive: int) -> PRCurve:
    """Precision and recall at each distinct score of ``scores`` ``[M]`` as the threshold
    (``>=``), highest first; recall is over ``n_positive`` (which may exceed the positives
    present when known heads have no score)."""
    thresholds = np.unique(scores)[::-1]
    called = np.array([(scores >= t).sum() for t in thresholds], dtype=float)
    found = np.array([positive[scores >= t].sum() for t in thresholds], dtype=float)
    recall = found / n_positive if n_positive else np.full_like(found, math.nan)
    return PRCurve(thresholds=thresholds.astype(float), precision=found / called,
                   recall=recall)


def average_precision(curve: PRCurve) -> float:
    """``sum_i (recall_i - recall_{i-1}) * precision_i`` over the curve's thresholds
    (``recall_{-1} = 0``); ``NaN`` for an empty curve."""
    if curve.recall.size == 0 or np.isnan(curve.recall).any():
        return math.nan
    steps = np.diff(np.concatenate([[0.0], curve.recall]))
    return float((steps * curve.precision).sum())


def score_metrics(grid: np.ndarray, known: Iterable[Head], threshold: float) -> Metrics:
    """All metrics of one scored grid ``[n_layers, n_heads]`` against the ``known`` heads,
    calling a head when its score is ``>= threshold``."""
    grid = np.asarray(grid, dtype=float)
    if grid.ndim != 2:
        raise ValueError(f"expected an [n_layers, n_heads] grid, got shape {grid.shape}")
    mask = known_mask(grid.shape, known)
    scored = ~np.isnan(grid)
    scores, positive = grid[scored], mask[scored]
    n_known = int(mask.sum())
    called = scores >= threshold
    n_called = int(called.sum())
    found = int(positive[called].sum())
    curve = pr_curve(scores, positive, n_known)
    return Metrics(
        n_heads=int(grid.size), n_known=n_known, n_nan=int((~scored).sum()),
        n_known_nan=int((mask & ~scored).sum()),
        auroc=auroc(scores, positive),
        precision=found / n_called if n_called else math.nan,
        recall=found / n_known if n_known else math.nan,
        top_k_precision=top_k_precision(scores, positive, n_known),
        average_precision=average_precision(curve), threshold=float(threshold), curve=curve)


def failed_floors(values: Mapping[str, float],
                  minimum: Mapping[str, float] | None) -> list[str]:
    """One phrase per floor the ``values`` fall below (``"auroc 0.62 < 0.90"``); an undefined
    value (``NaN``) fails its floor (``"precision undefined (no head called) < 0.50"``)."""
    problems = []
    for name, floor in (minimum or {}).items():
        value = values.get(name, math.nan)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            why = " (no head called)" if name == "precision" else ""
            problems.append(f"{name} undefined{why} < {floor:.2f}")
        elif value < floor - 1e-9:
            problems.append(f"{name} {value:.3f} < {floor:.2f}")
    return problems


__all__ = ["Metrics", "PRCurve", "auroc", "average_precision", "failed_floors", "known_mask",
           "pr_curve", "score_metrics", "top_k_precision"]
