"""The successor head type's recipe steps (declared in its ``HEAD_TYPE.steps``).

``successor_behaviour`` (Gould et al. 2023, "Successor Heads: Recurring, Interpretable Attention
Heads In The Wild"): compares the behavioural ranking, a ``successor_behaviour`` scan
(:mod:`headprobe.heads.successor.behaviour`: per head ``nld_<kind>`` / ``drop_<kind>`` on
``successor_increment`` kinds ``increment``, ``repeat`` and ``facts`` under mean ablation, and
``specific = drop_increment - max(0, drop_repeat, drop_facts)``), with the weights-only
``successor`` scan: Spearman correlation over all heads of ``score`` with ``specific`` and with
``drop_increment``, overlap of the two top-``top`` sets, and the behavioural rank of each
weights-only top head. Keys: ``weights`` (the ``successor`` scan step), ``behaviour`` (the
``successor_behaviour`` scan step; both required), ``top`` (default 5). Its result is a head
table (``score`` = ``specific``, with the ``nld_*`` / ``drop_*`` columns and
``weights_score``), so later ``ablate`` steps may take ``heads_from`` it. Writes
``successor_behaviour.*``, ``heads.csv`` (every head: the weights-only columns and the
behavioural ones) and ``meta.json``; its ``summary.json`` entry (under ``behaviour``) holds
``weights_only`` (top heads with per-set scores, chance, threshold, heads above it, max score,
skipped sets), ``behaviour`` (top heads by ``specific``) and ``agreement``. Computed from the
two scans' tables (no model pass), so it is recomputed on every run.

``mod10_view`` (Gould et al. 2023, section 4):
:func:`headprobe.heads.successor.successor.mod10_view`
centred per set and uncentred. Keys: ``sets``, ``k`` (default 4), ``embedding`` (default
``mlp0``), ``n_shuffles`` (default 200), ``seed``. Writes ``mod10.html`` (the centred view),
``points.csv`` and ``meta.json``; its entry (under ``mod10``) holds ``centered`` and
``uncentered`` (probe accuracy, shuffled mean, p value, k, points, explained variance).
Skipped on a re-run with the same run key.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pandas as pd

from headprobe.errors import RecipeError
from headprobe.heads.successor.behaviour import BEHAVIOUR_METRIC, DEFINITION, SPECIFIC
from headprobe.headtable import HeadTable, json_text, stage_plotlyjs, to_jsonable
from headprobe.recipes.format import Step, check_int, check_source
from headprobe.recipes.steps import StepContext, StepKind, StepOutput
from headprobe.resultset import result_set

# ---------------------------------------------------------------------------------------------
# successor_behaviour


def _check_behaviour(options: dict[str, Any], earlier: Sequence[Step], label: str) -> None:
    """The two sources are earlier table steps; ``top`` an integer >= 1."""
    for key in ("weights", "behaviour"):
        check_source(options[key], key, earlier, label)
    if "top" in options:
        check_int(options["top"], "top", 1, label)


def _agreement(merged: pd.DataFrame, top: int) -> tuple[dict[str, Any], pd.DataFrame,
                                                         pd.DataFrame]:
    """Agreement of the weights-only ``score`` with the behavioural ranking, and the top
    ``top`` heads of each."""
    from scipy.stats import spearmanr

    rho_specific = spearmanr(merged["score"], merged["specific"])
    rho_increment = spearmanr(merged["score"], merged["drop_increment"])
    top_w = merged.sort_values("score", ascending=False, kind="stable").head(top)
    top_b = merged.sort_values("specific", ascending=False, kind="stable").head(top)
    heads_w = [(int(r.layer), int(r.head)) for r in top_w.itertuples()]
    heads_b = [(int(r.layer), int(r.head)) for r in top_b.itertuples()]
    specific = merged.set_index(["layer", "head"])["specific"]
    agreement = {
        "spearman_score_vs_specific": [float(rho_specific.statistic),
                                       float(rho_specific.pvalue)],
        "spearman_score_vs_drop_increment": [float(rho_increment.statistic),
                                             float(rho_increment.pvalue)],
        f"top{top}_overlap": len(set(heads_w) & set(heads_b)),
        f"weights_top{top}_rank_in_behaviour": [
            int((merged["specific"] > specific.loc[(layer, head)]).sum()) + 1
            for layer, head in heads_w],
    }
    return agreement, top_w, top_b


def _run_behaviour(step: Step, ctx: StepContext) -> StepOutput:
    """Merge the weights-only scan with the behavioural scan; rank, compare, save."""
    options = step.options
    top = int(options.get("top", 5))
    weights = ctx.tables[options["weights"]]
    behaviour = ctx.tables[options["behaviour"]]
    if behaviour.meta.get("definition") != DEFINITION:
        raise RecipeError(f"step {step.name!r}: behaviour = {options['behaviour']!r} is not a "
                          f"successor_behaviour scan (its table's definition is "
                          f"{behaviour.meta.get('definition')!r})")
    wframe = weights.data.copy()
    wframe.attrs = {}
    if "strict" not in wframe.columns:
        raise RecipeError(f"step {step.name!r}: weights = {options['weights']!r} is not a "
                          "successor scan (no strict column)")
    bframe = behaviour.data.drop(columns=["kv_head"]).rename(columns={"score": "specific"})
    bframe.attrs = {}
    merged = wframe.merge(bframe, on=["layer", "head"])
    agreement, top_w, top_b = _agreement(merged, top)
    saved = ctx.folder / step.name
    frame = merged[["layer", "head", "kv_head"]].copy()
    frame["score"] = merged["specific"]
    for column in bframe.columns:
        if column not in ("layer", "head", "specific"):
            frame[column] = merged[column]
    frame["weights_score"] = merged["score"]
    attrs = weights.meta
    columns = {**behaviour.meta.get("columns", {}),
               "weights_score": "weights: the successor scan's score (effective OV circuit)"}
    table = HeadTable(frame, {"scorer": "successor_behaviour", "definition": DEFINITION,
                              "columns": columns, "metric": BEHAVIOUR_METRIC,
                              "score": f"specific = {SPECIFIC}",
                              "sources": {k: options[k] for k in ("weights", "behaviour")},
                              "agreement": agreement})
    table.save(saved, extra={"heads.csv": lambda p: merged.to_csv(p, index=False)})
    cols = ["layer", "head", "score", "strict"] + [c for c in merged if c.startswith("set_")]
    bcols = ["layer", "head", "specific", "drop_increment", "drop_repeat", "drop_facts", "score"]
    entry = {
        "n_items": behaviour.meta.get("n_items"),
        "weights_only": {
            f"top{top}": top_w[cols].to_dict(orient="records"),
            **{key: attrs.get(key) for key in ("chance", "threshold", "n_above_threshold",
                                               "max_score")},
            "skipped_sets": list(attrs.get("skipped_sets", {})),
        },
        "behaviour": {f"top{top}": top_b[bcols].to_dict(orient="records"),
                      "metric": BEHAVIOUR_METRIC},
        "agreement": agreement,
    }
    entry = json.loads(json.dumps(to_jsonable(entry)))
    rho = agreement["spearman_score_vs_specific"][0]
    best = ", ".join(f"L{r.layer}H{r.head}" for r in top_b.itertuples())
    line = (f"{step.name}: behavioural top {top} {best} · Spearman(weights score, specific) "
            f"{rho:+.2f} · top-{top} overlap {agreement[f'top{top}_overlap']}")
    return StepOutput(table, entry, line)


SUCCESSOR_BEHAVIOUR = StepKind(
    name="successor_behaviour",
    keys=frozenset({"weights", "behaviour", "top"}),
    required=("weights", "behaviour"),
    check=_check_behaviour, run=_run_behaviour, section="behaviour",
    saves=("successor_behaviour.csv", "heads.csv", "meta.json"), table=True,
    summary="behavioural successor ranking (increment drop not shared by the repeat / facts "
            "controls) vs the weights-only score")

# ---------------------------------------------------------------------------------------------
# mod10_view

_MOD10_DEFAULTS: dict[str, Any] = {"sets": None, "k": 4, "embedding": "mlp0",
                                   "n_shuffles": 200, "seed": 0}


def _check_mod10(options: dict[str, Any], earlier: Sequence[Step], label: str) -> None:
    sets = options.get("sets")
    if sets is not None and (not isinstance(sets, list)
                             or not all(isinstance(s, str) for s in sets)):
        raise RecipeError(f"{label}: sets must be a list of set names, e.g. sets = "
                          "[\"digits\", \"numbers\"]")
    for key, minimum in (("k", 1), ("n_shuffles", 1)):
        if key in options:
            check_int(options[key], key, minimum, label)
    if not isinstance(options.get("embedding", "mlp0"), str):
        raise RecipeError(f"{label}: embedding must be a string (mlp0, mlp0_out or raw)")


def _view_entry(view: Any) -> dict[str, Any]:
    return {"accuracy": view.accuracy, "shuffled_mean": view.shuffled_mean,
            "p_value": view.p_value, "k": view.k, "n_points": view.n_points,
            "explained": view.explained}


def _run_mod10(step: Step, ctx: StepContext) -> StepOutput:
    """The mod-10 view, centred per set and uncentred (or the saved one)."""
    from headprobe.errors import HeadprobeError
    from headprobe.heads.successor.successor import mod10_view
    from headprobe.models import describe_model

    params = {key: step.options.get(key, default) for key, default in _MOD10_DEFAULTS.items()}
    key, fields = ctx.run_key(step, {"kind": step.kind, **params})
    saved = ctx.folder / step.name
    meta = ctx.saved_meta(step, key, fields)
    if meta is not None:
        ctx.echo(f"{step.name}: step already done (same run key, view in {saved}); skipped")
        entry = dict(meta["summary"])
    else:
        spec = describe_model(ctx.model)
        sets = params.pop("sets")
        try:
            view = mod10_view(ctx.model, spec, sets=sets, **params)
            raw = mod10_view(ctx.model, spec, sets=sets, center_sets=False, **params)
        except HeadprobeError as error:
            raise RecipeError(f"step {step.name!r}: {error}") from error
        points = view.points.assign(pc1_uncentered=raw.points["pc1"],
                                    pc2_uncentered=raw.points["pc2"])
        entry = json.loads(json.dumps(to_jsonable(
            {"centered": _view_entry(view), "uncentered": _view_entry(raw)})))
        with result_set(saved, run=key, what=f"recipe step {step.name!r}") as staged:
            stage_plotlyjs(staged)  # the view works offline: plotly.js beside it
            staged.write("mod10.html", lambda p: view.figure.write_html(
                p, include_plotlyjs="directory"))
            staged.write("points.csv", lambda p: points.to_csv(p, index=False))
            staged.write_text("meta.json", json_text({"recipe_step": step.name, "run_key": key,
                                                      "run_key_fields": fields,
                                                      "summary": entry}))
    centered, uncentered = entry["centered"], entry["uncentered"]
    line = (f"{step.name}: value mod 10 from the top {centered['k']} PCs of "
            f"{centered['n_points']} numeric tokens: centred {centered['accuracy']:.2f} "
            f"(shuffled {centered['shuffled_mean']:.2f}, p {centered['p_value']:.3f}) · "
            f"uncentred {uncentered['accuracy']:.2f}")
    return StepOutput(entry, entry, line)


MOD10_VIEW = StepKind(
    name="mod10_view", keys=frozenset(_MOD10_DEFAULTS), required=(), check=_check_mod10,
    run=_run_mod10, section="mod10", saves=("mod10.html", "points.csv", "meta.json"),
    summary="mod-10 features: value mod 10 of numeric tokens from their top principal "
            "directions (centred per set and not)")
