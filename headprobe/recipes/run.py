"""Running a recipe: its steps in order, each run by its kind's runner
(:mod:`headprobe.recipes.steps`), saved and summarised as it finishes and skipped on a re-run
with the same run key (see :mod:`headprobe.recipes` for the format). The helpers runners share
(tasks, their fingerprints, head selection, saved-step matching) live in
:mod:`headprobe.recipes.steps`, the layer head types' step kinds build on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from headprobe.headtable import HeadTable, ensure_output_dir, json_text
from headprobe.recipes.format import Echo, Recipe
from headprobe.recipes.steps import StepContext, step_kinds
from headprobe.resultset import result_set

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
        with result_set(folder, last=("summary.json",),  # after every step: nothing lost
                        what=f"the {recipe.name} recipe summary for {folder}") as staged:
            staged.write_text("summary.json", json_text(summary))
    return dict(ctx.results)
