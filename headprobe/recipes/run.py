"""Running a recipe: its steps in order (scan, ablate, dose, kv_budget), each saved and
summarised as it finishes and skipped on a re-run with the same run key (see
:mod:`headprobe.recipes` for the format)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from headprobe.checkpoint import (
    describe_changes,
    run_key,
    run_key_fields,
    saved_table_matches,
)
from headprobe.errors import RecipeError
from headprobe.headtable import (
    HeadTable,
    atomic_write,
    ensure_output_dir,
    to_jsonable,
    write_json,
)
from headprobe.options import ControlOptions
from headprobe.recipes.format import (
    DEFAULT_N_RANDOM,
    KV_BUDGET_DEFAULTS,
    Echo,
    Recipe,
    Step,
    explicit_heads,
)
from headprobe.registry import get_scorer
from headprobe.types import Head

# ---------------------------------------------------------------------------------------------
# Running


def run_recipe(
    recipe: Recipe,
    model: Any,
    out_dir: str | Path,
    *,
    progress: bool = True,
    echo: Echo = print,
    fresh: bool = False,
) -> dict[str, Any]:
    """Run every step of ``recipe`` on ``model`` in order; save results and ``summary.json``.

    Returns ``{step name: result}``: a :class:`HeadTable` for a scan step, an
    :class:`~headprobe.experiments.ExperimentResult` for an ``ablate`` / ``dose`` step, a
    :class:`KVBudgetStepResult` for a ``kv_budget`` step.

    Resumable: a step whose result is already saved under ``<out_dir>/<step name>/`` with the
    same run key is loaded instead of run (and ``echo`` says so; a scan's key is
    :func:`headprobe.checkpoint.saved_table_matches`'s, a causal step's covers its parameters,
    heads, model and task fingerprint), and a scan whose scorer resumes per batch keeps its
    checkpoint under ``<out_dir>/.checkpoints/``; ``fresh`` recomputes every step.
    """
    folder = ensure_output_dir(out_dir)
    top = int(recipe.report.get("top", 10))
    threshold = recipe.report.get("threshold")
    results: dict[str, Any] = {}
    tables: dict[str, HeadTable] = {}
    summary: dict[str, Any] = {"recipe": recipe.name, "description": recipe.description,
                               "model": recipe.model, "steps": [], "scans": {}}
    for step in recipe.steps:
        if step.kind == "scan":
            table = _run_scan(step, model, folder, progress=progress, echo=echo, fresh=fresh)
            tables[step.name] = results[step.name] = table
            best = table.top(top)[["layer", "head", "score"]]
            entry: dict[str, Any] = {"top": best.to_dict(orient="records")}
            if threshold is not None:
                entry["threshold"] = threshold
                entry["n_above_threshold"] = int((table["score"] > threshold).sum())
            summary["scans"][step.name] = entry
            echo(f"{step.name}: top {top} heads\n{best.to_string(index=False)}")
            if threshold is not None:
                echo(f"{entry['n_above_threshold']} of {len(table)} heads score above "
                     f"{threshold}")
        elif step.kind == "kv_budget":
            result, entry = _run_kv_budget(step, model, folder, tables, progress=progress,
                                           echo=echo, fresh=fresh)
            results[step.name] = result
            summary.setdefault("kv_budgets", {})[step.name] = entry
            echo(_describe_kv_budget(step, entry))
        else:
            result, entry = _run_causal(step, model, folder, tables, progress=progress,
                                        echo=echo, fresh=fresh)
            results[step.name] = result
            summary.setdefault("experiments", {})[step.name] = entry
            echo(_describe_entry(step, entry))
        summary["steps"].append({"name": step.name, "kind": step.kind})
        write_json(folder / "summary.json", summary)  # after every step: nothing lost
    return results


def _run_scan(step: Step, model: Any, folder: Path, *, progress: bool, echo: Echo,
              fresh: bool) -> HeadTable:
    """Run (or load, when already done under the same run key) one scan step."""
    options = step.options
    scorer = get_scorer(options["scorer"])
    prompts = (build_task(options["task"], options.get("task_options", {}), model)
               if "task" in options else None)
    run = scorer.plan(model, prompts, n=options.get("n"), seed=int(options.get("seed", 0)),
                      batch_size=int(options.get("batch_size", 8)), **options.get("params", {}))
    saved = folder / step.name
    if not fresh and saved_table_matches(saved, run.key, name=scorer.name,
                                         fields=run.key_fields, echo=echo):
        echo(f"{step.name}: step already done (same run key, table in {saved}); skipped")
        return HeadTable.load(saved, scorer=scorer.name)
    table = run.run(progress=progress, checkpoint_dir=folder, fresh=fresh, echo=echo)
    table.save(saved)
    return table


def select_heads(step: Step, tables: Mapping[str, HeadTable]) -> tuple[list[Head],
                                                                        str]:
    """The heads an ``ablate`` / ``dose`` step uses, best first, and where they came from.

    From ``heads``, or from the table of the scan step ``heads_from``: its ``top`` best heads
    and/or those scoring above ``threshold`` (a dose step without either takes
    ``max(ks)``). :class:`RecipeError` when that leaves no head, or fewer than a dose needs.
    """
    options = step.options
    label = f"step {step.name!r}"
    if "heads" in options:
        heads = explicit_heads(options["heads"], label)
        source = "given list"
    else:
        name = options["heads_from"]
        top = options.get("top")
        threshold = options.get("threshold")
        if step.kind == "dose" and top is None and threshold is None:
            top = max(options["ks"])
        column = options.get("rank_by", "score")
        if column not in tables[name].data.columns:
            raise RecipeError(f"{label}: rank_by = {column!r} is not a column of {name!r}; its "
                              f"columns: {', '.join(map(str, tables[name].data.columns))}")
        heads = tables[name].heads(k=top, threshold=threshold, column=column)
        parts = ([f"top {top}"] if top is not None else []) + (
            [f"above {threshold}"] if threshold is not None else [])
        by = "" if column == "score" else f" by {column}"
        source = f"{' and '.join(parts)} heads of {name}{by}"
        if not heads:
            raise RecipeError(f"{label}: no head of {name!r} scores above {threshold}{by}; "
                              "lower the threshold or use top = K")
    if step.kind == "dose" and max(step.options["ks"]) > len(heads):
        raise RecipeError(f"{label}: k = {max(step.options['ks'])} but only {len(heads)} heads "
                          f"({source}); lower ks or the threshold")
    return heads, source


def build_task(name: str, options: Mapping[str, Any], model: Any) -> Any:
    """Build task ``name`` with ``options``, passing ``model`` when its ``make_task`` takes one
    (e.g. ``niah`` then counts context lengths in the model's tokens)."""
    from headprobe.tasks.build import build_task as build_registered_task

    return build_registered_task(name, model, **options)


def task_fingerprint(model: Any, task: Any) -> str:
    """sha256 prefix of a task as ``model`` sees it: tokenized prompts, answers, judge."""
    from headprobe.inputs import encode_prompts, fingerprint
    from headprobe.models import describe_model

    prompts = fingerprint(encode_prompts(model, task.prompts, describe_model(model)))
    payload = {"name": task.name, "prompts": prompts, "judge": task.judge,
               "max_new_tokens": task.max_new_tokens,
               "answers": [item.answer for item in task.items],
               "distractors": [item.distractor for item in task.items]}
    text = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _causal_params(step: Step, heads: Sequence[Head]) -> dict[str, Any]:
    """Every parameter of a causal step with its default filled in, and the heads in order."""
    options = step.options
    params: dict[str, Any] = {
        "kind": step.kind,
        "task": options["task"],
        "task_options": dict(options.get("task_options", {})),
        "method": options.get("method", "zero"),
        "method_options": dict(options.get("method_options", {})),
        "n_random": int(options.get("n_random", DEFAULT_N_RANDOM[step.kind])),
        "random_from": options.get("random_from", "same_layers"),
        "n_bootstrap": int(options.get("n_bootstrap", 1000)),
        "heads": ",".join(f"{layer}.{head}" for layer, head in heads),
    }
    if step.kind == "dose":
        params["ks"] = sorted({int(k) for k in options["ks"]})
    return params


def _saved_step_matches(saved: Path, key: str, name: str, fields: Mapping[str, Any],
                        echo: Echo) -> dict[str, Any] | None:
    """The saved ``meta.json`` of step ``name`` when it holds run ``key``, else ``None``.

    :func:`headprobe.experiments.save_experiment` writes ``meta.json`` last and the step's old
    one is removed before saving, so a matching ``meta.json`` means complete files. A result
    saved under another key makes ``echo`` say which fields changed.
    """
    meta_path = saved / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if meta.get("run_key") == key and meta.get("recipe_step") == name:
        return meta
    if meta.get("run_key_fields") is not None:
        changed = describe_changes(meta["run_key_fields"], fields) or ["run key"]
        echo(f"{name}: the saved result in {saved} is from a different run "
             f"(changed: {'; '.join(changed)}); recomputing")
    return None


def _run_causal(step: Step, model: Any, folder: Path, tables: Mapping[str, HeadTable], *,
                progress: bool, echo: Echo, fresh: bool) -> tuple[Any, dict[str, Any]]:
    """Run (or load) one ``ablate`` / ``dose`` step; its result and its summary entry."""
    from headprobe.experiments import ExperimentResult, ablation_experiment, dose_response
    from headprobe.experiments.ablation import ablation_figure
    from headprobe.experiments.dose import dose_figure
    from headprobe.models import describe_model

    options = step.options
    heads, source = select_heads(step, tables)
    task = build_task(options["task"], options.get("task_options", {}), model)
    spec = describe_model(model)
    params = _causal_params(step, heads)
    seed = int(options.get("seed", 0))
    batch_size = int(options.get("batch_size", 8))
    fields = run_key_fields(name=step.name, spec=spec, params=params, seed=seed, n=len(task),
                            batch_size=batch_size, fingerprint=task_fingerprint(model, task))
    key = run_key(fields)
    saved = folder / step.name
    stem = "ablation" if step.kind == "ablate" else "dose_response"
    meta = None if fresh else _saved_step_matches(saved, key, step.name, fields, echo)
    if meta is not None:
        echo(f"{step.name}: step already done (same run key, results in {saved}); skipped")
        table = pd.read_csv(saved / f"{stem}.csv")
        title = f"{params['method']} {step.kind} on {task.name} — {spec.name}"
        figure = ablation_figure(table, title) if step.kind == "ablate" else dose_figure(
            table, title)
        summary = dict(meta.get("summary", {}))
        result = ExperimentResult(table, figure, summary,
                                  {k: v for k, v in meta.items() if k != "summary"}, name=stem)
    else:
        controls = ControlOptions(n_random=params["n_random"],
                                  random_from=params["random_from"],
                                  n_bootstrap=params["n_bootstrap"], seed=seed)
        common: dict[str, Any] = {
            "method": params["method"], "batch_size": batch_size, "progress": progress,
            "method_options": dict(params["method_options"]), **controls.kwargs(),
        }
        if step.kind == "ablate":
            result = ablation_experiment(model, task, heads, **common)
        else:
            result = dose_response(model, task, heads, ks=params["ks"], **common)
        result.meta.update({"recipe_step": step.name, "heads_source": source,
                            "run_key": key, "run_key_fields": fields})
        (saved / "meta.json").unlink(missing_ok=True)  # a half-saved result never matches
        result.save(saved)
    entry = {"kind": step.kind, "task": task.name, "method": params["method"],
             "heads": params["heads"], "heads_source": source, "n_prompts": len(task),
             **result.summary}
    # through JSON once, so a fresh and a skipped step give the same entry (int keys...)
    return result, json.loads(json.dumps(to_jsonable(entry)))


def _describe_entry(step: Step, entry: Mapping[str, Any]) -> str:
    """One or two lines for ``echo`` about a finished ``ablate`` / ``dose`` step."""
    head = (f"{step.name}: {entry['method']} {step.kind} of {entry['heads']} "
            f"({entry['heads_source']}) on {entry['task']} ({entry['n_prompts']} prompts)")
    if step.kind == "ablate":
        low, high = entry["target_delta_ci"]
        ci = (f" [{low:+.3f}, {high:+.3f}]" if low is not None and high is not None
              else " (no interval: n_bootstrap = 0)")
        line = (f"baseline {entry['baseline_accuracy']:.3f} · target delta "
                f"{entry['target_delta']:+.3f}{ci}")
        if "mean_random_delta" in entry:
            line += (f" · random delta mean {entry['mean_random_delta']:+.3f}, min "
                     f"{entry['min_random_delta']:+.3f} · share of random sets as low "
                     f"{entry['share_random_as_low']:.2f}")
        return f"{head}\n{line}"
    random = entry.get("mean_random_accuracy", {})
    rows = [f"k={k}: top-k {acc:.3f}" + (f", random mean {random[k]:.3f}" if k in random
                                         else "")
            for k, acc in entry["top_k_accuracy"].items()]
    return f"{head}\nbaseline {entry['baseline_accuracy']:.3f} · " + " · ".join(rows)


# ---------------------------------------------------------------------------------------------
# KV-cache budget steps


@dataclass
class KVBudgetStepResult:
    """What a ``kv_budget`` step gives :func:`run_recipe`'s caller.

    Attributes:
        plan: the :class:`~headprobe.heads.retrieval.kv_budget.KVBudgetPlan`.
        accuracy: :func:`~headprobe.heads.retrieval.kv_budget.plan_accuracy`'s table (one row per condition:
            baseline, plan, random_0, ...), or ``None`` when the step names no task.
        summary: the step's entry in ``summary.json`` under ``kv_budgets``.
    """

    plan: Any
    accuracy: pd.DataFrame | None
    summary: dict[str, Any]


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
    from headprobe.heads.retrieval.kv_budget import KVBudgetError

    plan.to_json(saved / "plan.json")
    plan.to_csv(saved / "plan.csv")
    plan.to_duo_attention(saved / "duo_attention")
    try:
        plan.to_headkv(saved / "headkv.json")
    except KVBudgetError as error:
        (saved / "headkv.json").unlink(missing_ok=True)
        return str(error)
    return None


def _run_kv_budget(step: Step, model: Any, folder: Path, tables: Mapping[str, HeadTable], *,
                   progress: bool, echo: Echo, fresh: bool) -> tuple[KVBudgetStepResult,
                                                                   dict[str, Any]]:
    """Run (or load) one ``kv_budget`` step; its result and its summary entry."""
    from headprobe.heads.retrieval.kv_budget import (
        KVBudgetError,
        KVBudgetPlan,
        plan_accuracy,
        plan_kv_budget,
    )
    from headprobe.models import describe_model

    options = step.options
    spec = describe_model(model)
    label = f"step {step.name!r}"
    try:
        plan = plan_kv_budget(tables[options["from"]], spec, threshold=options.get("threshold"),
                              full_share=options.get("full_share"),
                              aggregate=options.get("aggregate", "max"),
                              sink=int(options.get("sink", 4)),
                              window=int(options.get("window", 32)))
    except KVBudgetError as error:
        raise RecipeError(f"{label}: {error}") from error
    params = _kv_budget_params(step, plan)
    task = None
    if "task" in options:
        task = build_task(options["task"], options.get("task_options", {}), model)
    seed = int(options.get("seed", 0))
    batch_size = int(options.get("batch_size", 8))
    fields = run_key_fields(
        name=step.name, spec=spec, params=params, seed=seed if task is not None else None,
        n=len(task) if task is not None else None,
        batch_size=batch_size if task is not None else None,
        fingerprint=task_fingerprint(model, task) if task is not None else None)
    key = run_key(fields)
    saved = folder / step.name
    meta = None if fresh else _saved_step_matches(saved, key, step.name, fields, echo)
    if meta is not None:
        echo(f"{step.name}: step already done (same run key, plan in {saved}); skipped")
        plan = KVBudgetPlan.from_json(saved / "plan.json")
        accuracy = (pd.read_csv(saved / "accuracy.csv") if task is not None else None)
        entry = dict(meta["summary"])
        return KVBudgetStepResult(plan, accuracy, entry), entry
    ensure_output_dir(saved)
    (saved / "meta.json").unlink(missing_ok=True)  # a half-saved result never matches
    headkv_skipped = _write_plan(plan, saved)
    entry: dict[str, Any] = {"kind": step.kind, "from": options["from"], **plan.summary()}
    if headkv_skipped is not None:
        echo(f"{step.name}: HeadKV file not written: {headkv_skipped}")
        entry["headkv_not_written"] = headkv_skipped
    accuracy: pd.DataFrame | None = None
    if task is not None:
        try:
            measured = plan_accuracy(model, task, plan,
                                     n_random=int(options.get("n_random", 5)), seed=seed,
                                     batch_size=batch_size,
                                     n_bootstrap=int(options.get("n_bootstrap", 1000)),
                                     context_length=options.get("context_length"))
        except KVBudgetError as error:
            raise RecipeError(f"{label}: {error}") from error
        accuracy = measured.table
        table = accuracy
        atomic_write(saved / "accuracy.csv", lambda p: table.to_csv(p, index=False))
        entry.update(task=task.name, n_prompts=len(task), n_random=measured.summary["n_random"],
                     **_accuracy_entry(accuracy))
        length: int | None = int(measured.summary["context_length"])
    else:
        length = options.get("context_length")
    if length is not None:
        saved_there = plan.memory_saved(int(length))
        entry.update(context_length=int(length), memory_saved_at_context_length=saved_there)
        entry["memory_saved"] = {str(length): saved_there, **entry["memory_saved"]}
    entry = json.loads(json.dumps(to_jsonable(entry)))  # as a skipped step would read it
    write_json(saved / "meta.json", {"recipe_step": step.name, "run_key": key,
                                     "run_key_fields": fields, "summary": entry})
    return KVBudgetStepResult(plan, accuracy, entry), entry


def _describe_kv_budget(step: Step, entry: Mapping[str, Any]) -> str:
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
