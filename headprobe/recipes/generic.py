"""The generic recipe step kinds: ``scan`` (score every head with a registered scorer),
``ablate`` (:func:`headprobe.experiments.ablation_experiment`) and ``dose``
(:func:`headprobe.experiments.dose_response`); see :mod:`headprobe.recipes` for their keys."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from headprobe.errors import RecipeError, RecipeNameError, ScorerParamError
from headprobe.headtable import HeadTable, to_jsonable
from headprobe.options import ControlOptions
from headprobe.recipes.format import (
    Step,
    check_heads_choice,
    check_int,
    check_task,
)
from headprobe.recipes.steps import StepContext, StepKind, StepOutput
from headprobe.registry import get_scorer, unknown_name_message

DEFAULT_N_RANDOM = {"ablate": 10, "dose": 5}
_SCAN_KEYS = frozenset({"scorer", "n", "seed", "batch_size", "params", "task", "task_options"})
_CAUSAL_KEYS = frozenset({"task", "task_options", "heads_from", "top", "threshold", "rank_by",
                          "heads", "method", "method_options", "n_random", "random_from", "seed",
                          "n_bootstrap", "batch_size", "match_scorer", "match_column",
                          "match_tolerance", "match_within"})
_MATCH_KEYS = ("match_scorer", "match_column", "match_tolerance", "match_within")

# ---------------------------------------------------------------------------------------------
# scan


def _check_scan(options: dict[str, Any], earlier: Sequence[Step], label: str) -> None:
    """Validate a scan step: a registered scorer, ``n``, ``params``, ``task``."""
    scorer = get_scorer(options["scorer"])  # unknown scorer -> UnknownScorerError now
    if "n" in options:
        check_int(options["n"], "n", 1, label)
    if "params" in options and not isinstance(options["params"], dict):
        raise RecipeError(f"{label}: params must be a table, e.g. params = {{ seq_len = 8 }}")
    try:  # through the scorer's typed record, as a direct call would
        scorer.check_params(options.get("params", {}))
    except ScorerParamError as error:
        raise RecipeError(f"{label}: {error}") from None
    if "task" in options:  # the scan's prompts: a registered task instead of its default
        check_task(options, label)
    elif "task_options" in options:
        raise RecipeError(f"{label}: task_options needs a task")


def _run_scan(step: Step, ctx: StepContext) -> StepOutput:
    """Run (or load, when already done under the same run key) one scan step."""
    from headprobe.checkpoint import saved_table_matches

    options = step.options
    scorer = get_scorer(options["scorer"])
    prompts = (ctx.build_task(options["task"], options.get("task_options", {}))
               if "task" in options else None)
    run = scorer.plan(ctx.model, prompts, n=options.get("n"), seed=int(options.get("seed", 0)),
                      batch_size=int(options.get("batch_size", 8)), **options.get("params", {}))
    saved = ctx.folder / step.name
    if not ctx.fresh and saved_table_matches(saved, run.key, name=scorer.name,
                                             fields=run.key_fields, echo=ctx.echo):
        ctx.echo(f"{step.name}: step already done (same run key, table in {saved}); skipped")
        table = HeadTable.load(saved, scorer=scorer.name)
    else:
        table = run.run(progress=ctx.progress, checkpoint_dir=ctx.folder, fresh=ctx.fresh,
                        echo=ctx.echo)
        table.save(saved)
    top = int(ctx.report.get("top", 10))
    threshold = ctx.report.get("threshold")
    best = table.top(top)[["layer", "head", "score"]]
    entry: dict[str, Any] = {"top": best.to_dict(orient="records")}
    line = f"{step.name}: top {top} heads\n{best.to_string(index=False)}"
    if threshold is not None:
        entry["threshold"] = threshold
        entry["n_above_threshold"] = int((table["score"] > threshold).sum())
        line += f"\n{entry['n_above_threshold']} of {len(table)} heads score above {threshold}"
    return StepOutput(table, entry, line)


SCAN = StepKind(
    name="scan", keys=_SCAN_KEYS, required=("scorer",), check=_check_scan, run=_run_scan,
    section="scans", saves=("{scorer}.csv", "meta.json"), table=True, default_name="scorer",
    summary="score every head with a registered scorer (headprobe scorers)")

# ---------------------------------------------------------------------------------------------
# ablate and dose


def _check_causal(kind: str, options: dict[str, Any], earlier: Sequence[Step],
                  label: str) -> None:
    """Validate the keys of an ``ablate`` / ``dose`` step (see :mod:`headprobe.recipes`)."""
    from headprobe.errors import InterventionError
    from headprobe.experiments.runner import check_method_options
    from headprobe.interventions import experiment_methods

    check_task(options, label)
    methods = experiment_methods()
    method = options.get("method", "zero")
    if method not in methods:
        raise RecipeNameError(f"{label}: " + unknown_name_message("method", method, methods))
    method_options = options.get("method_options", {})
    if not isinstance(method_options, dict):
        raise RecipeError(f"{label}: method_options must be a table, e.g. method_options = "
                          "{ factor = 0.5 }")
    try:
        check_method_options(method, method_options)
    except InterventionError as error:
        raise RecipeError(f"{label}: {error}") from error
    for key in ("n_random", "n_bootstrap"):
        if key in options:
            check_int(options[key], key, 0, label)
    _check_match(options, earlier, label)
    n_heads = check_heads_choice(kind, options, earlier, label, need_rule=kind == "ablate")
    if kind == "dose":
        ks = options.get("ks")
        if (not isinstance(ks, list) or not ks
                or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1
                           for k in ks)):
            raise RecipeError(f"{label}: a dose step needs ks = [1, 2, 4, ...] (integers >= 1), "
                              f"got {ks!r}")
        if n_heads is not None and max(ks) > n_heads:
            raise RecipeError(f"{label}: k = {max(ks)} is more than the {n_heads} heads the "
                              "step takes; lower ks or raise top")


def _check_match(options: dict[str, Any], earlier: Sequence[Step], label: str) -> None:
    """Validate ``random_from`` and the ``match_*`` keys of matched controls: ``match_scorer``
    (an earlier step with a head table, or a registered scorer run on its default data),
    ``match_tolerance`` (a number >= 0; both required), ``match_column`` (default ``score``)
    and ``match_within`` (``model``, ``layer`` or ``kv_group``)."""
    from headprobe.experiments.controls import RANDOM_FROM
    from headprobe.experiments.matching import MATCH_WITHIN
    from headprobe.recipes.format import check_number, table_steps
    from headprobe.registry import scorer_modules

    random_from = options.get("random_from", "same_layers")
    if random_from not in RANDOM_FROM:
        raise RecipeError(f"{label}: random_from must be one of {', '.join(RANDOM_FROM)}, got "
                          f"{random_from!r}")
    given = [key for key in _MATCH_KEYS if key in options]
    if random_from != "matched":
        if given:
            raise RecipeError(f"{label}: {', '.join(given)} only go with random_from = "
                              "\"matched\"")
        return
    for key in ("match_scorer", "match_tolerance"):
        if key not in options:
            raise RecipeError(f"{label}: random_from = \"matched\" needs match_scorer = "
                              "\"<earlier scan step or scorer>\" and match_tolerance = X")
    source = options["match_scorer"]
    tables = table_steps(earlier)
    if not isinstance(source, str) or (source not in tables and source not in scorer_modules()):
        raise RecipeError(f"{label}: match_scorer = {source!r} is neither an earlier step with "
                          f"a head table ({', '.join(tables) or 'none'}) nor a registered "
                          "scorer (headprobe scorers)")
    check_number(options["match_tolerance"], "match_tolerance", label)
    if options["match_tolerance"] < 0:
        raise RecipeError(f"{label}: match_tolerance must be >= 0, got "
                          f"{options['match_tolerance']!r}")
    if not isinstance(options.get("match_column", "score"), str):
        raise RecipeError(f"{label}: match_column must name a column, e.g. \"score\"")
    if options.get("match_within", "model") not in MATCH_WITHIN:
        raise RecipeError(f"{label}: match_within must be one of {', '.join(MATCH_WITHIN)}, "
                          f"got {options['match_within']!r}")


def _match(step: Step, ctx: StepContext, seed: int) -> tuple[Any, dict[str, Any]]:
    """``(MatchOn or None, run-key parameters of the match)`` of a causal step: the match
    scores come from an earlier step's table or from the scorer run here on its default data
    (with the step's ``seed``); the key holds the source's run key, so the step reruns when
    the scores would change, and the scorer runs only when the step does."""
    from headprobe.experiments.matching import MatchOn

    options = step.options
    if options.get("random_from", "same_layers") != "matched":
        return None, {}
    source = options["match_scorer"]
    column = options.get("match_column", "score")
    params = {"match_scorer": source, "match_column": column,
              "match_tolerance": float(options["match_tolerance"]),
              "match_within": options.get("match_within", "model")}
    if source in ctx.tables:
        table = ctx.tables[source]
        params["match_source_key"] = table.meta.get("run_key")

        def load() -> Any:
            return table
    else:
        run = get_scorer(source).plan(ctx.model, seed=seed)
        params["match_source_key"] = run.key

        def load() -> Any:
            return run.run(progress=ctx.progress)

    def build() -> MatchOn:
        from headprobe.errors import InterventionError

        table = load()
        try:
            return MatchOn.from_table(table, column, tolerance=params["match_tolerance"],
                                      within=params["match_within"])
        except InterventionError as error:
            raise RecipeError(f"step {step.name!r}: {error}") from error
    return build, params


def _causal_params(step: Step, heads: Sequence[tuple[int, int]]) -> dict[str, Any]:
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


def _run_causal(step: Step, ctx: StepContext) -> StepOutput:
    """Run (or load) one ``ablate`` / ``dose`` step; its result and its summary entry."""
    from headprobe.experiments import ExperimentResult, ablation_experiment, dose_response
    from headprobe.experiments.ablation import ablation_figure
    from headprobe.experiments.dose import dose_figure
    from headprobe.models import describe_model

    options = step.options
    heads, source = ctx.select_heads(step)
    task = ctx.build_task(options["task"], options.get("task_options", {}))
    spec = describe_model(ctx.model)
    params = _causal_params(step, heads)
    seed = int(options.get("seed", 0))
    build_match, match_params = _match(step, ctx, seed)
    params.update(match_params)
    batch_size = int(options.get("batch_size", 8))
    key, fields = ctx.run_key(step, params, task, seed=seed, batch_size=batch_size)
    saved: Path = ctx.folder / step.name
    stem = "ablation" if step.kind == "ablate" else "dose_response"
    meta = ctx.saved_meta(step, key, fields)
    if meta is not None:
        ctx.echo(f"{step.name}: step already done (same run key, results in {saved}); skipped")
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
                                  n_bootstrap=params["n_bootstrap"], seed=seed,
                                  match=build_match() if build_match is not None else None)
        common: dict[str, Any] = {
            "method": params["method"], "batch_size": batch_size, "progress": ctx.progress,
            "method_options": dict(params["method_options"]), **controls.kwargs(),
        }
        if step.kind == "ablate":
            result = ablation_experiment(ctx.model, task, heads, **common)
        else:
            result = dose_response(ctx.model, task, heads, ks=params["ks"], **common)
        result.meta.update({"recipe_step": step.name, "heads_source": source,
                            "run_key": key, "run_key_fields": fields})
        (saved / "meta.json").unlink(missing_ok=True)  # a half-saved result never matches
        result.save(saved)
    entry = {"kind": step.kind, "task": task.name, "method": params["method"],
             "heads": params["heads"], "heads_source": source, "n_prompts": len(task),
             **result.summary}
    # through JSON once, so a fresh and a skipped step give the same entry (int keys...)
    entry = json.loads(json.dumps(to_jsonable(entry)))
    return StepOutput(result, entry, _describe_entry(step, entry))


def _describe_entry(step: Step, entry: Mapping[str, Any]) -> str:
    """One or two lines for ``echo`` about a finished ``ablate`` / ``dose`` step."""
    head = (f"{step.name}: {entry['method']} {step.kind} of {entry['heads']} "
            f"({entry['heads_source']}) on {entry['task']} ({entry['n_prompts']} prompts)")
    match = entry.get("match")
    if match and step.kind == "ablate":
        scores = ", ".join(f"{h} {v:.3f}" for h, v in match["target_scores"].items())
        head += (f"\ncontrols matched on {match['label']} within {match['tolerance']:g} "
                 f"({match['within']}): target {scores}; largest gap {match['max_gap']:.3f}")
    elif match:
        head += f"\ncontrols matched on {next(iter(match.values()))['label']} per k"
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


ABLATE = StepKind(
    name="ablate", keys=_CAUSAL_KEYS, required=("task",),
    check=lambda options, earlier, label: _check_causal("ablate", options, earlier, label),
    run=_run_causal, section="experiments",
    saves=("ablation.csv", "ablation.html", "meta.json"),
    summary="headprobe.experiments.ablation_experiment: the heads vs random head sets")
DOSE = StepKind(
    name="dose", keys=_CAUSAL_KEYS | {"ks"}, required=("task",),
    check=lambda options, earlier, label: _check_causal("dose", options, earlier, label),
    run=_run_causal, section="experiments",
    saves=("dose_response.csv", "dose_response.html", "meta.json"),
    summary="headprobe.experiments.dose_response: accuracy as the top k heads are ablated")
