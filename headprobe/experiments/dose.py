"""Dose-response: accuracy as the top-k heads of a ranking are ablated, vs random k-sets.

:func:`dose_response` judges the task on the clean model, then for every k with the k best
heads of a :class:`~headprobe.headtable.HeadTable` (or an ordered head list) ablated and with
``n_random`` random sets of k heads ablated (:func:`headprobe.experiments.random_head_sets`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from headprobe.errors import InterventionError
from headprobe.experiments.ablation import ExperimentResult
from headprobe.experiments.controls import (
    RandomFrom,
    check_match,
    control_sets,
    format_heads,
)
from headprobe.experiments.judging import check_task
from headprobe.experiments.matching import (
    MatchedSet,
    MatchOn,
    match_gaps,
    match_summary,
    with_match_columns,
)
from headprobe.experiments.runner import (
    ConditionRunner,
    experiment_meta,
    jsonable_options,
    progress_steps,
)
from headprobe.experiments.stats import (
    bootstrap_indices,
    condition_row,
    dose_summary,
    no_bootstrap,
)
from headprobe.headtable import HeadTable
from headprobe.interventions import normalize_heads
from headprobe.models import describe_model
from headprobe.provenance import Timer
from headprobe.tasks.base import Task
from headprobe.types import Head


def dose_response(
    model: Any,
    task: Task,
    head_table: HeadTable | Sequence[Sequence[int]],
    ks: Sequence[int] = (1, 2, 4, 8),
    method: str = "zero",
    n_random: int = 5,
    seed: int = 0,
    random_from: RandomFrom = "same_layers",
    batch_size: int = 8,
    progress: bool = True,
    n_bootstrap: int = 1000,
    method_options: dict[str, Any] | None = None,
    match: MatchOn | None = None,
) -> ExperimentResult:
    """Accuracy as the top-k heads of ``head_table`` are ablated, vs random sets of k heads.

    Args:
        head_table: a :class:`HeadTable` (ranked by score) or an ordered list of heads.
        ks: the k values (each 1..number of ranked heads).
        match: with ``random_from = "matched"``: the per-head score and tolerance each k's
            random sets are matched on (to the top-k heads).
        Other arguments as in :func:`headprobe.experiments.ablation_experiment`.

    Returns:
        :class:`ExperimentResult` (name ``dose_response``) whose table has columns ``k``,
        ``condition`` (``baseline``, ``top_k``, ``random_i``), ``heads``, ``n_heads``,
        ``accuracy``, ``delta``, ``ci_low``, ``ci_high``, ``delta_ci_low``,
        ``delta_ci_high``, ``n``; the baseline row has ``k = 0``. The figure plots accuracy
        against k for the top-k heads and the mean of the random sets (with their range).
        With matched sets the table also has ``match_scores``, ``match_score_mean`` and
        ``match_gap`` and the summary a ``match`` entry per k, as in
        :func:`~headprobe.experiments.ablation_experiment`.
    """
    check_task(task)
    if n_random < 0:
        raise ValueError(f"n_random must be >= 0, got {n_random}")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    spec = describe_model(model)
    ranking = (head_table.heads() if isinstance(head_table, HeadTable)
               else [tuple(h) for h in head_table])
    ks = sorted({int(k) for k in ks})
    if not ks:
        raise InterventionError("ks is empty: give at least one k, e.g. ks=(1, 2, 4)")
    if ks[0] < 1 or ks[-1] > len(ranking):
        raise InterventionError(
            f"every k must lie in 1..{len(ranking)} (ranked heads); got {ks}")
    rng = np.random.default_rng(seed)
    check_match(random_from, match)
    plan: list[tuple[int, str, list[Head]]] = []
    gaps: list[float | None] = []
    matched: dict[int, list[MatchedSet]] = {}
    for k in ks:
        target = normalize_heads(spec, ranking[:k])
        plan.append((k, "top_k", target))
        gaps.append(None)
        sets, pairs = control_sets(spec, target, n_random, random_from=random_from,
                                   match=match, rng=rng)
        if match is not None:
            matched[k] = pairs
            gaps += match_gaps(match, pairs)
        else:
            gaps += [None] * len(sets)
        for i, heads in enumerate(sets):
            plan.append((k, f"random_{i}", heads))
    options = dict(method_options or {})
    if method == "resample":
        options.setdefault("seed", seed)
    timer = Timer()
    runner = ConditionRunner(model, task, method, options, [h for _, _, s in plan for h in s],
                             batch_size)
    timer.lap("prepare")
    boot = bootstrap_indices(len(task), n_bootstrap, seed) if n_bootstrap else no_bootstrap()
    correct: dict[str, np.ndarray] = {}
    with progress_steps(len(plan) + 1, progress, f"dose-response ({method})") as step:
        baseline = runner.judge(None)
        correct["baseline"] = baseline
        step("baseline")
        rows = [{"k": 0, **condition_row("baseline", [], baseline, baseline, boot)}]
        for k, name, heads in plan:
            result = runner.judge(heads)
            correct[f"k{k}_{name}"] = result
            rows.append({"k": k, **condition_row(name, heads, result, baseline, boot)})
            step(f"k={k} {name}")
    timer.lap("judge")
    table = pd.DataFrame(rows)
    params = {"method": method, "method_options": jsonable_options(options), "ks": ks,
              "n_random": n_random, "random_from": random_from, "n_bootstrap": n_bootstrap,
              "batch_size": batch_size, "ranking": format_heads(ranking[:ks[-1]])}
    summary = dose_summary(table)
    if match is not None:
        table = with_match_columns(table, match, [[], *(h for _, _, h in plan)],
                                   [None, *gaps])
        summary["match"] = {int(k): match_summary(match, sets) for k, sets in matched.items()}
        params["match"] = match.describe()
    meta = experiment_meta(
        model, spec, task, name="dose_response", params=params, seed=seed, timer=timer,
        description=f"{method} ablation of the top-k heads for k in {ks} vs {n_random} "
                    f"random {random_from} sets each on {task.name}"
                    + (f" (matched on {match.label} within {match.tolerance:g})"
                       if match is not None else ""))
    figure = dose_figure(table, title=f"{method} dose-response on {task.name} — {spec.name}")
    return ExperimentResult(table, figure, summary, meta, correct,
                            name="dose_response")


def dose_figure(table: pd.DataFrame, title: str) -> Any:
    """Accuracy against k: top-k heads (95% CI) and the random sets' mean (min..max)."""
    import plotly.graph_objects as go

    top = table[table["condition"] == "top_k"]
    random = table[table["condition"].str.startswith("random_")]
    baseline = float(table.loc[table["condition"] == "baseline", "accuracy"].iloc[0])
    figure = go.Figure()
    figure.add_trace(go.Scatter(
        x=top["k"], y=top["accuracy"], mode="lines+markers", name="top-k heads",
        error_y={"type": "data", "symmetric": False,
                 "array": (top["ci_high"] - top["accuracy"]).fillna(0),
                 "arrayminus": (top["accuracy"] - top["ci_low"]).fillna(0)},
        line={"color": "#e45756"}))
    if len(random):
        grouped = random.groupby("k")["accuracy"]
        stats = pd.DataFrame({"mean": grouped.mean(), "min": grouped.min(),
                              "max": grouped.max()}).reset_index()
        figure.add_trace(go.Scatter(
            x=stats["k"], y=stats["mean"], mode="lines+markers", name="random heads (mean)",
            error_y={"type": "data", "symmetric": False,
                     "array": stats["max"] - stats["mean"],
                     "arrayminus": stats["mean"] - stats["min"]},
            line={"color": "#9d9d9d"}))
    figure.add_hline(y=baseline, line_dash="dash", annotation_text="baseline")
    figure.update_layout(title=title, xaxis_title="k (heads ablated)", yaxis_title="accuracy",
                         yaxis_range=[0, 1.05], xaxis_type="log")
    return figure
