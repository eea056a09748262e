"""Agreement of attribution estimates with exact activation patching.

:func:`compare_to_exact` reports any estimator's agreement (Pearson, Spearman, top-k overlap)
with exact noising patching (:func:`headprobe.fastscan.scan_heads`); :func:`agreement` is the
same comparison for any two score vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from headprobe.attribution.common import AttributionResult
from headprobe.attribution.engine import attribution_patching
from headprobe.errors import UsageError
from headprobe.headtable import HeadTable
from headprobe.tasks.base import Task, TaskItem


@dataclass
class Agreement:
    """How well an estimator's z-node scores match exact noising patching of each head's z.

    Attributes:
        method, steps: the estimator (:func:`attribution_patching`'s arguments).
        pearson, spearman: correlations over all ``n_heads`` (layer, head) scores.
        top_k_overlap: heads in both top-``top_k`` sets by ``|score|``.
        top_k, n_heads: the ``k`` used and the number of heads compared.
        seconds_estimate, seconds_exact: run times (``None`` when passed in without timings).
        estimate: the z-node :class:`HeadTable`; exact: the exact scan's :class:`HeadTable`
            (:func:`headprobe.fastscan.scan_heads`, noising, logit difference).
    """

    method: str
    steps: int
    pearson: float
    spearman: float
    top_k_overlap: int
    top_k: int
    n_heads: int
    seconds_estimate: float | None
    seconds_exact: float | None
    estimate: HeadTable
    exact: HeadTable

    def as_dict(self) -> dict[str, Any]:
        """The scalar fields (JSON-ready)."""
        return {name: getattr(self, name) for name in (
            "method", "steps", "pearson", "spearman", "top_k_overlap", "top_k", "n_heads",
            "seconds_estimate", "seconds_exact")}


def agreement(estimate: Any, exact: Any, top_k: int = 20) -> dict[str, float | int]:
    """Pearson, Spearman and top-``k`` overlap (by ``|score|``) of two score vectors.

    Args:
        estimate, exact: equal-length arrays (any shape, flattened), finite.
        top_k: size of the two top sets (clipped to the length).

    Raises:
        UsageError: different lengths, fewer than 2 entries, or non-finite values.
    """
    from scipy.stats import pearsonr, spearmanr

    a = np.asarray(estimate, dtype=np.float64).ravel()
    b = np.asarray(exact, dtype=np.float64).ravel()
    if a.shape != b.shape or a.size < 2:
        raise UsageError(f"need two score vectors of equal length >= 2, got {a.size} and "
                         f"{b.size}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise UsageError("scores must be finite (scan every layer)")
    k = max(1, min(top_k, a.size))
    top_a = set(np.argsort(-np.abs(a), kind="stable")[:k].tolist())
    top_b = set(np.argsort(-np.abs(b), kind="stable")[:k].tolist())
    return {"pearson": float(pearsonr(a, b)[0]), "spearman": float(spearmanr(a, b)[0]),
            "top_k_overlap": len(top_a & top_b), "top_k": k, "n_heads": int(a.size)}


def compare_to_exact(
    model: Any,
    task: Task | Sequence[TaskItem],
    *,
    method: str = "eap-ig-act",
    steps: int = 5,
    top_k: int = 20,
    batch_size: int = 8,
    result: AttributionResult | None = None,
    exact: HeadTable | None = None,
    progress: bool = False,
) -> Agreement:
    """Agreement of an estimator's z-node scores with exact noising patching on ``task``.

    Exact: :func:`headprobe.fastscan.scan_heads` with ``method="patch"``,
    ``direction="noising"``, ``metric="logit_diff"`` (corrupt z of one head into the clean
    run, all positions), the quantity every estimator here approximates.

    Args:
        model, task: as for :func:`attribution_patching`.
        method, steps: the estimator (ignored when ``result`` is given).
        top_k: size of the top sets compared.
        batch_size: prompts per pass of both runs.
        result: an :class:`AttributionResult` already computed on ``task`` (not rerun).
        exact: the exact scan's :class:`HeadTable` already computed on ``task`` (not rerun).
        progress: tqdm bars.

    Returns:
        An :class:`Agreement`.
    """
    from headprobe.fastscan import scan_heads

    if result is None:
        result = attribution_patching(model, task, method=method, steps=steps, edges=False,
                                      batch_size=batch_size, progress=progress)
    if exact is None:
        exact = scan_heads(model, task, method="patch", direction="noising",
                           metric="logit_diff", batch_size=batch_size, progress=progress)
    estimate = result.nodes["z"]
    keys = ["layer", "head"]
    merged = estimate.data[[*keys, "score"]].merge(exact.data[[*keys, "score"]], on=keys,
                                                   suffixes=("_estimate", "_exact"))
    scores = agreement(merged["score_estimate"].to_numpy(), merged["score_exact"].to_numpy(),
                       top_k)

    def seconds(meta: dict[str, Any]) -> float | None:
        value = meta.get("timings_s", {}).get("total")
        return float(value) if value is not None else None

    return Agreement(method=str(result.meta.get("method", method)),
                     steps=int(result.meta.get("steps", steps)),
                     pearson=float(scores["pearson"]), spearman=float(scores["spearman"]),
                     top_k_overlap=int(scores["top_k_overlap"]), top_k=int(scores["top_k"]),
                     n_heads=int(scores["n_heads"]), seconds_estimate=seconds(result.meta),
                     seconds_exact=seconds(exact.meta),
                     estimate=estimate, exact=exact)
