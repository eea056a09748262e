"""Interventions on memory and context heads in knowledge conflicts.

Two experiments on the ``knowledge_conflict`` task (target ``context``: accuracy is the
context-answer rate), with heads from the ``conflict`` scorer (positive score = memory head,
negative = context head):

- :func:`prune_conflict_heads` (Jin et al. 2024, "Cutting Off the Head Ends the Conflict", PH3):
  ablate the top-k memory heads (the context-answer rate should rise) or the top-k context
  heads (it should fall), for k in ``ks``, each against random head sets of the same layers;
  :func:`headprobe.experiments.dose_response` with paired bootstrap CIs.
- :func:`value_scaling_sweep` (Yu, Merullo & Pavlick 2023, "Characterizing Mechanisms for
  Factual Recall in Language Models"): scale ONE head's value vectors by ``alpha``
  (``scale_value``) for each candidate head and each alpha, and report the best single head
  toward the context answer (highest context-answer rate) and toward memory (lowest). The best
  of many conditions is an optimistic pick on the items it was picked on, so the sweep runs
  the same number of random heads as a selection-matched control, and with ``eval_task`` the
  chosen (head, alpha) are judged again on held-out items.

:func:`conflict_rates` gives the context-, memory- and other-answer rates with bootstrap CIs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from headprobe.errors import InterventionError, TaskError
from headprobe.experiments.ablation import ExperimentResult
from headprobe.experiments.controls import format_heads
from headprobe.experiments.dose import dose_response
from headprobe.experiments.judging import check_task, judge_task
from headprobe.experiments.runner import ConditionRunner, experiment_meta, progress_steps
from headprobe.experiments.stats import bootstrap_indices, condition_row, percentile_interval
from headprobe.headtable import HeadTable
from headprobe.interventions import build_hooks, normalize_heads
from headprobe.models import describe_model
from headprobe.provenance import Timer
from headprobe.runtime.hooks import attached
from headprobe.tasks.base import Task
from headprobe.types import Head


def _check_context_task(task: Task) -> None:
    check_task(task)
    for index, item in enumerate(task.items):
        if item.meta.get("context_answer") != item.answer:
            raise TaskError(
                f"task {task.name!r}: item {index} is not judged against its context answer; "
                "use get_task('knowledge_conflict', target='context', ...) (or "
                "knowledge_conflict.retarget(task, 'context'))")


def conflict_heads(table: HeadTable, k: int | None = None, column: str = "score"
                   ) -> dict[str, list[Head]]:
    """``{"memory": [...], "context": [...]}``: heads with a positive ``column`` (most
    positive first) and with a negative one (most negative first), ``k`` of each."""
    if column not in table.data.columns:
        raise KeyError(f"no column {column!r} in this table")
    frame = table.data[table.data[column].notna()]
    memory = frame[frame[column] > 0].sort_values(column, ascending=False, kind="stable")
    context = frame[frame[column] < 0].sort_values(column, ascending=True, kind="stable")
    return {role: [(int(r.layer), int(r.head)) for r in part.head(k).itertuples()]
            for role, part in (("memory", memory), ("context", context))}


def conflict_rates(
    model: Any,
    task: Task,
    heads: Sequence[Sequence[int]] | None = None,
    *,
    method: str = "zero",
    method_options: dict[str, Any] | None = None,
    batch_size: int = 16,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Share of conflict prompts answered with the context answer, the memory answer or
    something else (greedy next token vs each answer's first token), with 95% bootstrap CIs,
    optionally with ``heads`` intervened on by ``method``.

    Returns:
        ``{"n", "context_rate", "context_ci", "memory_rate", "memory_ci", "other_rate",
        "other_ci"}`` plus ``context`` / ``memory`` ([N] bool arrays).
    """
    from headprobe.heads.conflict.knowledge_conflict import retarget

    check_task(task)
    hooks = [] if not heads else build_hooks(model, heads, method, **(method_options or {}))
    with attached(model, hooks):
        context = judge_task(model, retarget(task, "context"), batch_size=batch_size)
        memory = judge_task(model, retarget(task, "memory"), batch_size=batch_size)
    other = ~(context | memory)
    boot = bootstrap_indices(len(task), n_bootstrap, seed)
    out: dict[str, Any] = {"n": len(task)}
    for name, values in (("context", context), ("memory", memory), ("other", other)):
        as_float = values.astype(np.float64)
        out[f"{name}_rate"] = float(as_float.mean())
        out[f"{name}_ci"] = list(percentile_interval(as_float[boot].mean(1)
                                                     if n_bootstrap else np.array([])))
    out["context"], out["memory"] = context, memory
    return out


def prune_conflict_heads(
    model: Any,
    task: Task,
    table: HeadTable,
    ks: Sequence[int] = (1, 3, 5),
    *,
    method: str = "zero",
    n_random: int = 5,
    random_from: str = "same_layers",
    column: str = "score",
    seed: int = 0,
    batch_size: int = 16,
    n_bootstrap: int = 1000,
    progress: bool = True,
) -> dict[str, ExperimentResult]:
    """PH3 pruning: ablate the top-k memory heads and, separately, the top-k context heads.

    Args:
        task: a ``knowledge_conflict`` task with ``target="context"``: accuracy is the
            context-answer rate (memory pruning should raise it, context pruning lower it).
        table: a ``conflict`` scorer table (``column`` > 0: memory head, < 0: context head).
        ks, method, n_random, random_from, seed, batch_size, n_bootstrap: as in
            :func:`headprobe.experiments.dose_response`.

    Returns:
        ``{"memory": result, "context": result}``: dose-response results (top-k vs random
        k-sets of the same layers; ``delta`` is the change in the context-answer rate, with
        paired bootstrap CIs).
    """
    _check_context_task(task)
    ranked = conflict_heads(table, max(ks), column)
    out = {}
    for role, heads in ranked.items():
        if len(heads) < max(ks):
            raise InterventionError(f"only {len(heads)} {role} heads in the table; lower ks")
        result = dose_response(model, task, heads, ks=ks, method=method, n_random=n_random,
                               seed=seed, random_from=random_from,  # type: ignore[arg-type]
                               batch_size=batch_size, progress=progress,
                               n_bootstrap=n_bootstrap)
        result.name = f"prune_{role}_heads"
        result.meta["role"] = role
        result.summary["role"] = role
        out[role] = result
    return out


def value_scaling_sweep(
    model: Any,
    task: Task,
    heads: Sequence[Sequence[int]] | HeadTable,
    alphas: Sequence[float] = (0.0, 0.5, 2.0, 3.0, 5.0),
    *,
    n_candidates: int = 5,
    n_random: int = 10,
    eval_task: Task | None = None,
    seed: int = 0,
    batch_size: int = 16,
    n_bootstrap: int = 1000,
    progress: bool = True,
) -> ExperimentResult:
    """Scale one head's value vectors by ``alpha`` (Yu et al. 2023) for each candidate head
    and alpha; the best single head toward context and toward memory.

    Args:
        task: a ``knowledge_conflict`` task with ``target="context"`` (the selection items).
        heads: candidate heads, or a ``conflict`` table (its ``n_candidates`` top memory and
            ``n_candidates`` top context heads).
        alphas: value scales (1 = unchanged).
        n_random: random single heads (not candidates; seeded) swept the same way: the best
            of them is the selection-matched control.
        eval_task: held-out items (e.g. the other ``split``) on which the best (head, alpha)
            of each direction is judged again.

    Returns:
        :class:`ExperimentResult` (name ``value_scaling``): one row per (head, alpha) with
        ``split`` (``select`` / ``eval``), ``role`` (memory / context / random / baseline),
        ``alpha``, ``accuracy`` = context-answer rate, its CI, ``delta`` and its paired CI.
        The summary has the baseline rate and, per direction (``toward_context``: highest
        rate; ``toward_memory``: lowest), the best candidate, the best random head and the
        held-out numbers.
    """
    _check_context_task(task)
    if eval_task is not None:
        _check_context_task(eval_task)
    if not alphas:
        raise InterventionError("alphas is empty")
    spec = describe_model(model)
    if isinstance(heads, HeadTable):
        ranked = conflict_heads(heads, n_candidates)
        candidates = [(h, role) for role in ("memory", "context") for h in ranked[role]]
    else:
        candidates = [(h, "candidate") for h in normalize_heads(spec, heads)]
    if not candidates:
        raise InterventionError("no candidate heads")
    chosen = {h for h, _ in candidates}
    pool = [h for h in spec.all_heads() if h not in chosen]
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(pool), size=min(n_random, len(pool)), replace=False)
    candidates += [(pool[i], "random") for i in sorted(picks)]
    timer = Timer()
    boot = bootstrap_indices(len(task), n_bootstrap, seed)
    runners = {alpha: ConditionRunner(model, task, "scale_value", {"alpha": float(alpha)},
                                      [h for h, _ in candidates], batch_size)
               for alpha in alphas}
    correct: dict[str, np.ndarray] = {}
    with progress_steps(1 + len(candidates) * len(alphas), progress, "value scaling") as step:
        baseline = runners[alphas[0]].judge(None)
        correct["select/baseline"] = baseline
        rows = [{"split": "select", "role": "baseline", "alpha": 1.0,
                 **condition_row("baseline", [], baseline, baseline, boot)}]
        step("baseline")
        for head, role in candidates:
            for alpha in alphas:
                result = runners[alpha].judge([head])
                name = f"{head[0]}.{head[1]}@{alpha:g}"
                correct[f"select/{name}"] = result
                rows.append({"split": "select", "role": role, "alpha": float(alpha),
                             **condition_row(name, [head], result, baseline, boot)})
                step(name)
    timer.lap("select")
    table = pd.DataFrame(rows)
    summary: dict[str, Any] = {"n_select": len(task), "baseline_rate": float(baseline.mean()),
                               "baseline_ci": [float(rows[0]["ci_low"]),
                                               float(rows[0]["ci_high"])]}
    swept = table[table["role"] != "baseline"]
    for direction, ascending in (("toward_context", False), ("toward_memory", True)):
        entry: dict[str, Any] = {}
        for kind, part in (("best", swept[swept["role"] != "random"]),
                           ("best_random", swept[swept["role"] == "random"])):
            if part.empty:
                continue
            row = part.sort_values("accuracy", ascending=ascending, kind="stable").iloc[0]
            entry[kind] = _row_summary(row)
        summary[direction] = entry
    if eval_task is not None:
        eval_rows, eval_correct = _evaluate(model, eval_task, summary, batch_size,
                                            n_bootstrap, seed)
        table = pd.concat([table, pd.DataFrame(eval_rows)], ignore_index=True)
        correct.update(eval_correct)
        summary["n_eval"] = len(eval_task)
        timer.lap("eval")
    params = {"alphas": [float(a) for a in alphas], "n_candidates": n_candidates,
              "n_random": n_random, "n_bootstrap": n_bootstrap, "batch_size": batch_size,
              "candidates": format_heads([h for h, r in candidates if r != "random"]),
              "random_heads": format_heads([h for h, r in candidates if r == "random"]),
              "eval_task": eval_task.meta if eval_task is not None else None}
    meta = experiment_meta(model, spec, task, name="value_scaling", params=params, seed=seed,
                           timer=timer, description="value scaling of single heads (Yu et "
                           "al. 2023): context-answer rate per head and alpha")
    figure = value_scaling_figure(table, f"value scaling on {task.name} — {spec.name}")
    return ExperimentResult(table, figure, summary, meta, correct, name="value_scaling")


def _row_summary(row: pd.Series) -> dict[str, Any]:
    return {"head": row["heads"], "role": row["role"], "alpha": float(row["alpha"]),
            "rate": float(row["accuracy"]), "ci": [float(row["ci_low"]), float(row["ci_high"])],
            "delta": float(row["delta"]),
            "delta_ci": [float(row["delta_ci_low"]), float(row["delta_ci_high"])]}


def _evaluate(model: Any, task: Task, summary: dict[str, Any], batch_size: int,
              n_bootstrap: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Judge each direction's best candidate and best random (head, alpha) on ``task``."""
    from headprobe.experiments.controls import parse_heads

    boot = bootstrap_indices(len(task), n_bootstrap, seed)
    baseline = judge_task(model, task, batch_size=batch_size)
    rows = [{"split": "eval", "role": "baseline", "alpha": 1.0,
             **condition_row("baseline", [], baseline, baseline, boot)}]
    correct = {"eval/baseline": baseline}
    summary["eval_baseline_rate"] = float(baseline.mean())
    summary["eval_baseline_ci"] = [float(rows[0]["ci_low"]), float(rows[0]["ci_high"])]
    for direction in ("toward_context", "toward_memory"):
        for kind, best in summary[direction].items():
            heads = parse_heads(best["head"])
            hooks = build_hooks(model, heads, "scale_value", alpha=best["alpha"])
            with attached(model, hooks):
                result = judge_task(model, task, batch_size=batch_size)
            name = f"{best['head']}@{best['alpha']:g}"
            correct[f"eval/{direction}/{kind}/{name}"] = result
            row = {"split": "eval", "role": best["role"], "alpha": best["alpha"],
                   **condition_row(name, heads, result, baseline, boot)}
            rows.append(row)
            best["eval"] = {k: v for k, v in _row_summary(pd.Series(row)).items()
                            if k in ("rate", "ci", "delta", "delta_ci")}
    return rows, correct


def value_scaling_figure(table: pd.DataFrame, title: str) -> Any:
    """Context-answer rate against alpha, one line per head (selection items; plotly, never
    shown); the baseline as a dashed line."""
    import plotly.graph_objects as go

    select = table[table["split"] == "select"]
    baseline = float(select.loc[select["role"] == "baseline", "accuracy"].iloc[0])
    colors = {"memory": "#e45756", "context": "#4c78a8", "candidate": "#54a24b",
              "random": "#bab0ac"}
    figure = go.Figure()
    for (head, role), part in select[select["role"] != "baseline"].groupby(["heads", "role"]):
        part = pd.concat([part, pd.DataFrame([{"alpha": 1.0, "accuracy": baseline}])])
        part = part.sort_values("alpha")
        figure.add_trace(go.Scatter(x=part["alpha"], y=part["accuracy"], mode="lines+markers",
                                    name=f"{head} ({role})",
                                    line={"color": colors.get(str(role), "#9d9d9d")}))
    figure.add_hline(y=baseline, line_dash="dash", annotation_text="baseline")
    figure.update_layout(title=title, xaxis_title="alpha (value scale)",
                         yaxis_title="context-answer rate", yaxis_range=[0, 1.05])
    return figure
