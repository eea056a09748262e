"""Statistics of an ablation experiment: accuracies, deltas and bootstrap intervals.

Accuracy is the share of prompts judged correct; its 95% interval is a percentile
bootstrap over prompts. ``delta`` = accuracy - baseline accuracy, with a *paired* bootstrap
interval (the same resampled prompts for the condition and the baseline). The same
bootstrap draws are used for every condition. Every reduction runs in float64 numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from headprobe.experiments.controls import format_heads
from headprobe.types import Head


def bootstrap_indices(n: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """[n_bootstrap, n] resampling indices from a local generator."""
    return np.random.default_rng(seed).integers(0, n, size=(n_bootstrap, n))


def no_bootstrap() -> np.ndarray:
    """The empty [0, 0] index array that means "no intervals" to :func:`condition_row`."""
    return np.empty((0, 0), dtype=np.int64)


def percentile_interval(values: np.ndarray) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of ``values`` (NaN, NaN when there are none)."""
    if values.size == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(values.astype(np.float64), [2.5, 97.5])
    return float(low), float(high)


def condition_row(condition: str, heads: Sequence[Head], correct: np.ndarray,
                  baseline: np.ndarray, boot: np.ndarray) -> dict[str, Any]:
    """One table row: accuracy with its bootstrap CI, delta with its paired bootstrap CI.

    Args:
        correct: [N] bool judgements under the condition.
        baseline: [N] bool judgements of the clean model.
        boot: [B, N] resampling indices (:func:`bootstrap_indices`), or [0, 0] for none.
    """
    correct = np.asarray(correct, dtype=np.float64)
    baseline = np.asarray(baseline, dtype=np.float64)
    accuracy = float(correct.mean())
    delta = accuracy - float(baseline.mean())
    acc_boot = correct[boot].mean(1) if boot.size else np.array([])
    delta_boot = acc_boot - baseline[boot].mean(1) if boot.size else np.array([])
    ci_low, ci_high = percentile_interval(acc_boot)
    d_low, d_high = percentile_interval(delta_boot)
    return {
        "condition": condition,
        "heads": format_heads(heads),
        "n_heads": len(heads),
        "accuracy": accuracy,
        "delta": delta,
        "ci_low": ci_low,
        "ci_high": ci_high,
        "delta_ci_low": d_low,
        "delta_ci_high": d_high,
        "n": int(correct.size),
    }


def ablation_summary(table: pd.DataFrame) -> dict[str, Any]:
    """Headline numbers of an ablation table (rows ``baseline``, ``target``, ``random_i``).

    The target delta with its interval, the mean and standard deviation of the random sets'
    deltas, and the share of random sets whose delta is as low as the target's or lower.
    """
    by = table.set_index("condition")
    random = table[table["condition"].str.startswith("random_")]
    target_delta = float(by.loc["target", "delta"])
    out: dict[str, Any] = {
        "n_prompts": int(by.loc["baseline", "n"]),
        "baseline_accuracy": float(by.loc["baseline", "accuracy"]),
        "target_accuracy": float(by.loc["target", "accuracy"]),
        "target_delta": target_delta,
        "target_delta_ci": [float(by.loc["target", "delta_ci_low"]),
                            float(by.loc["target", "delta_ci_high"])],
        "n_random": len(random),
    }
    if len(random):
        deltas = random["delta"].to_numpy(dtype=np.float64)
        out["mean_random_delta"] = float(deltas.mean())
        out["min_random_delta"] = float(deltas.min())
        out["std_random_delta"] = float(deltas.std(ddof=1)) if len(deltas) > 1 else 0.0
        out["share_random_as_low"] = float((deltas <= target_delta + 1e-12).mean())
    return out


def dose_summary(table: pd.DataFrame) -> dict[str, Any]:
    """Headline numbers of a dose-response table: accuracy per k, top-k and random mean."""
    top = table[table["condition"] == "top_k"]
    random = table[table["condition"].str.startswith("random_")]
    baseline = table.loc[table["condition"] == "baseline", "accuracy"]
    return {
        "baseline_accuracy": float(baseline.iloc[0]),
        "top_k_accuracy": {int(r.k): float(r.accuracy) for r in top.itertuples()},
        "mean_random_accuracy": {int(k): float(g["accuracy"].mean())
                                 for k, g in random.groupby("k")},
    }
