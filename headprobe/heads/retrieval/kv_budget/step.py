"""The ``kv_budget`` recipe step: a KV-cache budget plan built from an earlier step's head
table (:func:`~headprobe.heads.retrieval.kv_budget.plan_kv_budget`), written in every format
this package knows and, with a ``task``, measured on it against random kv heads
(:func:`~headprobe.heads.retrieval.kv_budget.plan_accuracy`). Declared in the retrieval head
type's ``steps``.

Keys: ``from`` (required, an earlier step with a head table), exactly one of ``threshold``
(kv heads scoring above it keep a full cache) and ``full_share`` (that share of kv heads, best
first, keeps it), ``aggregate`` (``max`` or ``mean`` over the query heads of a kv group;
default ``max``), ``sink`` (default 4), ``window`` (default 32), ``context_length`` (where to
report the memory saved; default: the task's longest prompt plus its new tokens, else 1024,
4096 and 32768 tokens) and, to measure the plan, ``task`` with ``task_options``, ``n_random``
(default 5), ``seed``, ``n_bootstrap`` and ``batch_size``.

Writes under ``<out>/<step name>/``: ``plan.json``, ``plan.csv``, ``duo_attention/`` and
``headkv.json`` (left out, with the reason in the summary, when the scores cannot be HeadKV's:
negative or NaN), ``accuracy.csv`` when it measures a task, and ``meta.json``. Its entry in
``summary.json`` (under ``kv_budgets``): full and streaming kv heads, memory saved,
accuracies of the clean model, the plan and the random kv-head sets with 95% intervals. Its
run key covers its parameters, the plan's full kv heads, the model and its task's fingerprint.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from headprobe.errors import RecipeError
from headprobe.headtable import json_text, to_jsonable
from headprobe.recipes.format import Step, check_int, check_number, check_source, check_task
from headprobe.recipes.steps import StepContext, StepKind, StepOutput
from headprobe.resultset import result_set

KV_BUDGET_DEFAULTS: dict[str, Any] = {"aggregate": "max", "sink": 4, "window": 32,
                                       "n_random": 5, "n_bootstrap": 1000}
_KEYS = frozenset({"from", "threshold", "full_share", "aggregate", "sink", "window",
                   "context_length", "task", "task_options", "n_random", "seed", "n_bootstrap",
                   "batch_size"})


@dataclass
class KVBudgetStepResult:
    """What a ``kv_budget`` step gives :func:`~headprobe.recipes.run_recipe`'s caller.

    Attributes:
        plan: the :class:`~headprobe.heads.retrieval.kv_budget.KVBudgetPlan`.
        accuracy: :func:`~headprobe.heads.retrieval.kv_budget.plan_accuracy`'s table (one row
            per condition: baseline, plan, random_0, ...), or ``None`` when the step names no
            task.
        summary: the step's entry in ``summary.json`` under ``kv_budgets``.
    """

    plan: Any
    accuracy: pd.DataFrame | None
    summary: dict[str, Any]


def check_kv_budget(options: dict[str, Any], earlier: Sequence[Step], label: str) -> None:
    """Validate the keys of a ``kv_budget`` step (see the module docstring)."""
    check_source(options["from"], "from", earlier, label)
    if ("threshold" in options) == ("full_share" in options):
        raise RecipeError(f"{label} needs exactly one of threshold = X (kv heads scoring above "
                          "X keep a full cache) and full_share = S (that share of kv heads "
                          "does)")
    if "threshold" in options:
        check_number(options["threshold"], "threshold", label)
    if "full_share" in options:
        share = options["full_share"]
        check_number(share, "full_share", label)
        if not 0.0 <= float(share) <= 1.0:
            raise RecipeError(f"{label}: full_share must lie in [0, 1], got {share!r}")
    if options.get("aggregate", "max") not in ("max", "mean"):
        raise RecipeError(f"{label}: aggregate must be 'max' or 'mean', got "
                          f"{options['aggregate']!r}")
    for key, minimum in (("sink", 0), ("window", 0), ("context_length", 1), ("n_random", 0),
                         ("n_bootstrap", 0)):
        if key in options:
            check_int(options[key], key, minimum, label)
    if "task" in options:
        check_task(options, label)
    else:
        stray = sorted({"task_options", "n_random", "n_bootstrap", "batch_size"} & set(options))
        if stray:
            raise RecipeError(f"{label}: {', '.join(stray)} only apply with task = \"...\" "
                              "(the task the plan is measured on)")


def _kv_budget_params(step: Step, plan: Any) -> dict[str, Any]:
    """Every parameter of a ``kv_budget`` step with its default filled in, and the plan's full
    kv heads (so a rerun scan that ranks heads differently reruns the step)."""
    options = step.options
    params: dict[str, Any] = {
        "kind": step.kind, "from": options["from"],
        **{key: options.get(key, default) for key, default in KV_BUDGET_DEFAULTS.items()},
        "threshold": options.get("threshold"), "full_share": options.get("full_share"),
        "context_length": options.get("context_length"),
        "full_heads": ",".join(f"{layer}.{g}" for layer, g in plan.full_heads()),
    }
    if "task" in options:
        params.update(task=options["task"], task_options=dict(options.get("task_options", {})))
    else:
        params.update(task=None, n_random=None, n_bootstrap=None)
    return params


def _accuracy_entry(table: pd.DataFrame) -> dict[str, Any]:
    """Accuracies with their 95% intervals from :func:`plan_accuracy`'s table."""
    rows = {row["condition"]: row for row in table.to_dict(orient="records")}
    randoms = [row for name, row in rows.items() if name.startswith("random_")]

    def interval(row: Mapping[str, Any], low: str, high: str) -> list[float | None]:
        return [None if pd.isna(row[low]) else float(row[low]),
                None if pd.isna(row[high]) else float(row[high])]

    entry: dict[str, Any] = {
        "baseline_accuracy": float(rows["baseline"]["accuracy"]),
        "baseline_accuracy_ci": interval(rows["baseline"], "ci_low", "ci_high"),
        "plan_accuracy": float(rows["plan"]["accuracy"]),
        "plan_accuracy_ci": interval(rows["plan"], "ci_low", "ci_high"),
        "plan_delta": float(rows["plan"]["delta"]),
        "plan_delta_ci": interval(rows["plan"], "delta_ci_low", "delta_ci_high"),
        "random_accuracies": [float(row["accuracy"]) for row in randoms],
        "random_accuracy_cis": [interval(row, "ci_low", "ci_high") for row in randoms],
    }
    if randoms:
        accuracies = entry["random_accuracies"]
        entry["mean_random_accuracy"] = sum(accuracies) / len(accuracies)
        entry["min_random_accuracy"] = min(accuracies)
        entry["max_random_accuracy"] = max(accuracies)
        entry["share_random_as_high"] = sum(
            a >= entry["plan_accuracy"] for a in accuracies) / len(accuracies)
    return entry


def _write_plan(plan: Any, saved: Path) -> str | None:
    """Write ``plan`` in every format under ``saved``; the reason HeadKV's file was left out,
    or ``None`` when it was written."""
    from headprobe.heads.retrieval.kv_budget.plan import KVBudgetError

    plan.to_json(saved / "plan.json")
    plan.to_csv(saved / "plan.csv")
    plan.to_duo_attention(saved / "duo_attention")
    try:
        plan.to_headkv(saved / "headkv.json")
    except KVBudgetError as error:
        (saved / "headkv.json").unlink(missing_ok=True)
        return str(error)
    return None


def run_kv_budget(step: Step, ctx: StepContext) -> StepOutput:
    """Run (or load) one ``kv_budget`` step."""
    from headprobe.heads.retrieval.kv_budget.accuracy import plan_accuracy
    from headprobe.heads.retrieval.kv_budget.plan import (
        KVBudgetError,
        KVBudgetPlan,
        plan_kv_budget,
    )
    from headprobe.models import describe_model

    options = step.options
    spec = describe_model(ctx.model)
    label = f"step {step.name!r}"
    try:
        plan = plan_kv_budget(ctx.tables[options["from"]], spec,
                              threshold=options.get("threshold"),
                              full_share=options.get("full_share"),
                              aggregate=options.get("aggregate", "max"),
                              sink=int(options.get("sink", 4)),
                              window=int(options.get("window", 32)))
    except KVBudgetError as error:
        raise RecipeError(f"{label}: {error}") from error
    params = _kv_budget_params(step, plan)
    task = None
    if "task" in options:
        task = ctx.build_task(options["task"], options.get("task_options", {}))
    seed = int(options.get("seed", 0))
    batch_size = int(options.get("batch_size", 8))
    key, fields = ctx.run_key(step, params, task,
                              seed=seed if task is not None else None,
                              batch_size=batch_size if task is not None else None)
    saved = ctx.folder / step.name
    meta = ctx.saved_meta(step, key, fields)
    if meta is not None:
        ctx.echo(f"{step.name}: step already done (same run key, plan in {saved}); skipped")
        plan = KVBudgetPlan.from_json(saved / "plan.json")
        accuracy = (pd.read_csv(saved / "accuracy.csv") if task is not None else None)
        entry = dict(meta["summary"])
        return StepOutput(KVBudgetStepResult(plan, accuracy, entry), entry,
                          describe_kv_budget(step, entry))
    entry: dict[str, Any] = {"kind": step.kind, "from": options["from"], **plan.summary()}
    accuracy: pd.DataFrame | None = None
    if task is not None:
        try:
            measured = plan_accuracy(ctx.model, task, plan,
                                     n_random=int(options.get("n_random", 5)), seed=seed,
                                     batch_size=batch_size,
                                     n_bootstrap=int(options.get("n_bootstrap", 1000)),
                                     context_length=options.get("context_length"))
        except KVBudgetError as error:
            raise RecipeError(f"{label}: {error}") from error
        accuracy = measured.table
        entry.update(task=task.name, n_prompts=len(task), n_random=measured.summary["n_random"],
                     **_accuracy_entry(accuracy))
        length: int | None = int(measured.summary["context_length"])
    else:
        length = options.get("context_length")
    if length is not None:
        saved_there = plan.memory_saved(int(length))
        entry.update(context_length=int(length), memory_saved_at_context_length=saved_there)
        entry["memory_saved"] = {str(length): saved_there, **entry["memory_saved"]}
    # one result set (plan files, accuracy.csv, meta.json last): whole or not at all
    with result_set(saved, run=key, remove=("headkv.json", "accuracy.csv"),
                    what=f"recipe step {step.name!r}") as staged:
        headkv_skipped = _write_plan(plan, staged.folder)
        if headkv_skipped is not None:
            ctx.echo(f"{step.name}: HeadKV file not written: {headkv_skipped}")
            entry["headkv_not_written"] = headkv_skipped
        if accuracy is not None:
            table = accuracy
            staged.write("accuracy.csv", lambda p: table.to_csv(p, index=False))
        entry = json.loads(json.dumps(to_jsonable(entry)))  # as a skipped step would read it
        staged.write_text("meta.json", json_text({"recipe_step": step.name, "run_key": key,
                                                  "run_key_fields": fields, "summary": entry}))
    return StepOutput(KVBudgetStepResult(plan, accuracy, entry), entry,
                      describe_kv_budget(step, entry))


def describe_kv_budget(step: Step, entry: Mapping[str, Any]) -> str:
    """One or two lines for ``echo`` about a finished ``kv_budget`` step."""
    saved = " · ".join(f"{float(v):.1%} at {t} tokens" for t, v in entry["memory_saved"].items())
    head = (f"{step.name}: kv budget from {entry['from']}: {entry['n_full']} full / "
            f"{entry['n_streaming']} streaming of {entry['n_kv_heads_total']} kv heads "
            f"(sink {entry['sink']}, window {entry['window']}) · memory saved {saved}")
    if "plan_accuracy" not in entry:
        return head
    low, high = entry["plan_accuracy_ci"]
    ci = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
    line = (f"on {entry['task']} ({entry['n_prompts']} prompts): baseline "
            f"{entry['baseline_accuracy']:.3f} · plan {entry['plan_accuracy']:.3f}{ci}")
    if "mean_random_accuracy" in entry:
        line += (f" · random kv heads mean {entry['mean_random_accuracy']:.3f} (min "
                 f"{entry['min_random_accuracy']:.3f}, max {entry['max_random_accuracy']:.3f})")
    return f"{head}\n{line}"


KV_BUDGET = StepKind(
    name="kv_budget", keys=_KEYS, required=("from",), check=check_kv_budget, run=run_kv_budget,
    section="kv_budgets",
    saves=("plan.json", "plan.csv", "duo_attention/full_attention_heads.tsv",
           "duo_attention/config.json", "meta.json"),
    summary="a KV-cache budget plan from a head table (full vs streaming kv heads), written "
            "for DuoAttention / HeadKV and measured on a task against random kv heads")
