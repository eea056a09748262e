"""The temporal head type's recipe steps (declared in its ``HEAD_TYPE.steps``; Park et al.
2025, "Does Time Have Its Place? Temporal Heads: Where Language Models Recall Time-specific
Information").

``temporal_heads``: the heads an earlier ``temporal`` scan marks ``is_temporal``
(:func:`headprobe.heads.temporal.temporal.temporal_heads`: in >= 90% of the temporal circuits
and <= 25% of the invariant ones, best first), or, when no head meets the rule, its
``fallback_top`` heads by score (and the summary says so). Keys: ``from`` (required, the
temporal scan step), ``fallback_top`` (default 3). Its result is the scan's head table with a
``selected`` column (``k, k-1, ..., 1`` for the ``k`` chosen heads in order, 0 for the
others), so later steps take them with ``heads_from = "<this step>"``, ``rank_by =
"selected"``, ``threshold = 0``. Writes ``temporal_heads.*`` and ``meta.json``; its entry
(under ``temporal_heads``) holds ``heads``, ``source`` and the scan's ``agreement`` (EAP-IG vs
exact patching), ``known_facts`` and ``circuits``. Recomputed on every run (no model pass).

``temporal_edit``: :func:`headprobe.heads.temporal.temporal_edit.temporal_edit` (add
``c x`` each head's ``z`` from the other year's prompt at the last token, vs random head sets)
on the ``temporal_facts`` temporal pairs the model knows. Keys: ``heads_from`` (required, with
``top`` / ``threshold`` / ``rank_by`` as in an ablate step), ``task_options`` (options of the
``temporal_facts`` task; ``kind = "temporal"`` and ``known_only = true`` unless given),
``coefficients`` (default ``[1.0, 2.0, 3.0]``), ``n_random`` (default 5), ``random_from``,
``seed``, ``n_bootstrap`` (default 1000). Writes ``temporal_edit.csv`` / ``.html`` and
``meta.json``; its entry (under ``temporal_edits``) is the edit's summary (target and mean
random flip rate per coefficient, baseline flip rate) with the heads. Skipped on a re-run with
the same run key (parameters, heads, model, task fingerprint).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pandas as pd

from headprobe.errors import RecipeError
from headprobe.headtable import HeadTable, to_jsonable
from headprobe.recipes.format import (
    Step,
    check_heads_choice,
    check_int,
    check_number,
    check_source,
    check_task,
)
from headprobe.recipes.steps import StepContext, StepKind, StepOutput

TASK = "temporal_facts"

# ---------------------------------------------------------------------------------------------
# temporal_heads


def _check_select(options: dict[str, Any], earlier: Sequence[Step], label: str) -> None:
    check_source(options["from"], "from", earlier, label)
    if "fallback_top" in options:
        check_int(options["fallback_top"], "fallback_top", 1, label)


def _run_select(step: Step, ctx: StepContext) -> StepOutput:
    """The scan's temporal heads (or its fallback top heads) as a ``selected`` column."""
    from headprobe.heads.temporal.temporal import temporal_heads

    options = step.options
    scan = ctx.tables[options["from"]]
    if "is_temporal" not in scan.data.columns:
        raise RecipeError(f"step {step.name!r}: from = {options['from']!r} is not a temporal "
                          "scan (no is_temporal column)")
    fallback = int(options.get("fallback_top", 3))
    heads = temporal_heads(scan)
    source = "is_temporal"
    if not heads:
        heads = scan.heads(k=fallback)
        source = f"no head met the is_temporal rule: top {fallback} by score instead"
    rank = {head: len(heads) - i for i, head in enumerate(heads)}
    frame = scan.data.copy()
    frame["selected"] = [float(rank.get((int(layer), int(head)), 0))
                         for layer, head in zip(frame["layer"], frame["head"], strict=True)]
    meta = {**scan.meta, "scorer": "temporal_heads", "selected_from": options["from"],
            "selected_source": source}
    table = HeadTable(frame, meta)
    table.save(ctx.folder / step.name)
    entry = json.loads(json.dumps(to_jsonable({
        "heads": [f"L{layer}H{head}" for layer, head in heads], "source": source,
        "agreement": scan.meta.get("agreement"), "known_facts": scan.meta.get("known_facts"),
        "circuits": scan.meta.get("circuits")})))
    line = f"{step.name}: {', '.join(entry['heads'])} ({source})"
    return StepOutput(table, entry, line)


TEMPORAL_HEADS = StepKind(
    name="temporal_heads", keys=frozenset({"from", "fallback_top"}), required=("from",),
    check=_check_select, run=_run_select, section="temporal_heads",
    saves=("temporal_heads.csv", "meta.json"), table=True,
    summary="the heads a temporal scan marks is_temporal (or its top heads), for later steps")

# ---------------------------------------------------------------------------------------------
# temporal_edit

_EDIT_KEYS = frozenset({"heads_from", "top", "threshold", "rank_by", "task_options",
                        "coefficients", "n_random", "random_from", "seed", "n_bootstrap"})


def _task_options(options: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "temporal", "known_only": True, **options.get("task_options", {})}


def _check_edit(options: dict[str, Any], earlier: Sequence[Step], label: str) -> None:
    check_heads_choice("edit", options, earlier, label, need_rule=False)
    check_task({"task": TASK, "task_options": _task_options(options)}, label)
    if _task_options(options)["kind"] != "temporal":
        raise RecipeError(f"{label}: the temporal edit needs temporal pairs; leave "
                          "task_options.kind out or set it to \"temporal\"")
    coefficients = options.get("coefficients", [1.0, 2.0, 3.0])
    if not isinstance(coefficients, list) or not coefficients:
        raise RecipeError(f"{label}: coefficients must be a list of numbers, e.g. [1.0, 2.0]")
    for c in coefficients:
        check_number(c, "coefficients", label)
    for key in ("n_random", "n_bootstrap"):
        if key in options:
            check_int(options[key], key, 0, label)
    if options.get("random_from", "same_layers") not in ("same_layers", "uniform"):
        raise RecipeError(f"{label}: random_from must be 'same_layers' or 'uniform', got "
                          f"{options['random_from']!r}")


def _run_edit(step: Step, ctx: StepContext) -> StepOutput:
    """Run (or load) the temporal edit through the selected heads."""
    from headprobe.experiments import ExperimentResult
    from headprobe.heads.temporal.temporal_edit import edit_figure, temporal_edit
    from headprobe.models import describe_model

    options = step.options
    heads, source = ctx.select_heads(step)
    task_options = _task_options(options)
    task = ctx.build_task(TASK, task_options)
    params = {"kind": step.kind, "task_options": task_options,
              "coefficients": [float(c) for c in options.get("coefficients", [1.0, 2.0, 3.0])],
              "n_random": int(options.get("n_random", 5)),
              "random_from": options.get("random_from", "same_layers"),
              "n_bootstrap": int(options.get("n_bootstrap", 1000)),
              "heads": ",".join(f"{layer}.{head}" for layer, head in heads)}
    seed = int(options.get("seed", 0))
    key, fields = ctx.run_key(step, params, task, seed=seed)
    saved = ctx.folder / step.name
    meta = ctx.saved_meta(step, key, fields)
    if meta is not None:
        ctx.echo(f"{step.name}: step already done (same run key, results in {saved}); skipped")
        table = pd.read_csv(saved / "temporal_edit.csv")
        result = ExperimentResult(table, edit_figure(table, describe_model(ctx.model).name),
                                  dict(meta.get("summary", {})),
                                  {k: v for k, v in meta.items() if k != "summary"},
                                  name="temporal_edit")
    else:
        result = temporal_edit(ctx.model, task, heads, coefficients=params["coefficients"],
                               n_random=params["n_random"], seed=seed,
                               random_from=params["random_from"],
                               n_bootstrap=params["n_bootstrap"], progress=ctx.progress)
        result.meta.update({"recipe_step": step.name, "heads_source": source,
                            "run_key": key, "run_key_fields": fields})
        (saved / "meta.json").unlink(missing_ok=True)  # a half-saved result never matches
        result.save(saved)
    entry = json.loads(json.dumps(to_jsonable({
        "heads": params["heads"], "heads_source": source, "n_prompts": len(task),
        **result.summary})))
    rates = " · ".join(f"{c}: target {v['target_flip_rate']:.2f}"
                       + (f", random {v['mean_random_flip_rate']:.2f}"
                          if v.get("mean_random_flip_rate") is not None else "")
                       for c, v in entry.items() if c.startswith("c="))
    line = (f"{step.name}: temporal edit of {params['heads']} ({source}) on {len(task)} "
            f"known temporal pairs: flip rate {rates}")
    return StepOutput(result, entry, line)


TEMPORAL_EDIT = StepKind(
    name="temporal_edit", keys=_EDIT_KEYS, required=("heads_from",), check=_check_edit,
    run=_run_edit, section="temporal_edits",
    saves=("temporal_edit.csv", "temporal_edit.html", "meta.json"),
    summary="temporal editing: add c x the other year's head outputs, flip rate vs random heads")
