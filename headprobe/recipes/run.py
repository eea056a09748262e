"""Running a recipe: its steps in order, each run by its kind's runner
(:mod:`headprobe.recipes.steps`), saved and summarised as it finishes and skipped on a re-run
with the same run key (see :mod:`headprobe.recipes` for the format); and the helpers runners
share (tasks, their fingerprints, head selection, saved-step matching)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from headprobe.checkpoint import describe_changes
from headprobe.errors import RecipeError
from headprobe.headtable import HeadTable, ensure_output_dir, write_json
from headprobe.recipes.format import Echo, Recipe, Step, explicit_heads
from headprobe.recipes.steps import StepContext, step_kinds

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
    :class:`~headprobe.experiments.ExperimentResult` for an ``ablate`` / ``dose`` step, and
    what its kind's runner returns for a head type's step.

    ``summary.json`` (rewritten after every step, so nothing is lost) holds the recipe's name,
    description and model, ``small`` (true when the recipe's ``[small]`` setting ran), the
    order of the steps under ``steps``, and each step's entry in its kind's section (``scans``
    for scans, ``experiments`` for ablate / dose, ...), keyed by step name.

    Resumable: a step whose result is already saved under ``<out_dir>/<step name>/`` with the
    same run key is loaded instead of run (and ``echo`` says so; a scan's key is
    :func:`headprobe.checkpoint.saved_table_matches`'s, a causal step's covers its parameters,
    heads, model and task fingerprint), and a scan whose scorer resumes per batch keeps its
    checkpoint under ``<out_dir>/.checkpoints/``; ``fresh`` recomputes every step.
    """
    folder = ensure_output_dir(out_dir)
    kinds = step_kinds()
    ctx = StepContext(model=model, folder=folder, report=dict(recipe.report),
                      progress=progress, echo=echo, fresh=fresh)
    summary: dict[str, Any] = {"recipe": recipe.name, "description": recipe.description,
                               "model": recipe.model, "steps": [], "scans": {}}
    if recipe.small:
        summary["small"] = True
    for step in recipe.steps:
        kind = kinds[step.kind]
        output = kind.run(step, ctx)
        ctx.results[step.name] = output.result
        if kind.table:
            if not isinstance(output.result, HeadTable):
                raise TypeError(f"step kind {kind.name!r} declares a head table but returned "
                                f"{type(output.result).__name__}")
            ctx.tables[step.name] = output.result
        summary.setdefault(kind.section, {})[step.name] = output.entry
        echo(output.line)
        summary["steps"].append({"name": step.name, "kind": step.kind})
        write_json(folder / "summary.json", summary)  # after every step: nothing lost
    return dict(ctx.results)


def select_heads(step: Step, tables: Mapping[str, HeadTable]) -> tuple[list[tuple[int, int]],
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


def saved_step_matches(saved: Path, key: str, name: str, fields: Mapping[str, Any],
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
