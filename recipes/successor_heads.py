"""Successor heads, weights-only vs behaviour, on one model (Gould et al. 2023, "Successor
Heads: Recurring, Interpretable Attention Heads In The Wild").

Why a Python recipe and not only ``recipes/successor_heads.toml``: a TOML scan step builds its
task from a name alone (no ``kind``), so the control scans (``repeat``, ``facts``) cannot be
written, and recipe steps rank heads by a column's highest values, whereas the behavioural
ranking here is a *difference* of three scans (the drop on increment that the controls do not
share). The TOML recipe runs the part that steps can express.

Steps:

1. ``successor`` scan (weights only): score, strict score and per-set scores of every head.
2. Behavioural scans: every head mean-ablated (:func:`headprobe.fastscan.scan_heads`,
   ``method="mean"``, metric ``normalized_logit_diff`` = mean LD(ablated) / mean LD(clean),
   ``LD = logit[answer] - logit[distractor]``) on ``successor_increment`` kinds
   ``increment`` (distractor: the last item shown), ``repeat`` (distractor: the item's
   successor) and ``facts``. ``drop_<kind> = 1 - normalized LD``; the behavioural ranking is
   ``specific = drop_increment - max(0, drop_repeat, drop_facts)``.
3. Agreement of the two rankings: Spearman correlation over all heads and top-5 overlap.
4. :func:`headprobe.experiments.ablation_experiment` (mean ablation, random same-layer head
   sets, paired bootstrap CIs) of the behavioural top 1 / top 3 and weights-only top 1 / top 3
   on the three tasks.
5. The mod-10 view (:func:`headprobe.heads.successor.successor.mod10_view`).

Run: ``python recipes/successor_heads.py --model smollm2-135m-instruct --out runs/succ``
(``--n 80 --n-random 10`` by default; a few minutes per model on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from headprobe import scan
from headprobe.catalogue import load_model
from headprobe.experiments import ablation_experiment
from headprobe.fastscan import scan_heads
from headprobe.heads.successor.successor import mod10_view
from headprobe.headtable import write_json
from headprobe.tasks import get_task

KINDS = ("increment", "repeat", "facts")


def behavioural_table(model: Any, tasks: dict[str, Any], batch_size: int) -> pd.DataFrame:
    """One row per head: ``drop_<kind>`` for each task and ``specific``."""
    frames = []
    for kind, task in tasks.items():
        table = scan_heads(model, task, method="mean", metric="normalized_logit_diff",
                           batch_size=batch_size, progress=False)
        frame = table.data[["layer", "head", "score"]].rename(columns={"score": f"nld_{kind}"})
        frame[f"drop_{kind}"] = 1.0 - frame[f"nld_{kind}"]
        frame.attrs = {}
        frames.append(frame.set_index(["layer", "head"]))
    out = pd.concat(frames, axis=1).reset_index()
    controls = out[[f"drop_{k}" for k in KINDS if k != "increment"]].max(axis=1).clip(lower=0)
    out["specific"] = out["drop_increment"] - controls
    return out


def run(model_name: str, out: Path, n: int, n_random: int, batch_size: int,
        n_bootstrap: int) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    model, spec = load_model(model_name)
    start = time.time()
    weights = scan(model, "successor", progress=False)
    times["successor_scan"] = time.time() - start
    weights.save(out / "successor")
    wframe = weights.data.copy()
    wframe.attrs = {}

    tasks = {kind: get_task("successor_increment", kind=kind, n=n, seed=0, model=model)
             for kind in KINDS}
    start = time.time()
    behaviour = behavioural_table(model, tasks, batch_size)
    times["behavioural_scans"] = time.time() - start
    merged = wframe.merge(behaviour, on=["layer", "head"])
    merged.to_csv(out / "heads.csv", index=False)

    rho_specific = spearmanr(merged["score"], merged["specific"])
    rho_increment = spearmanr(merged["score"], merged["drop_increment"])
    top_w = merged.sort_values("score", ascending=False, kind="stable").head(5)
    top_b = merged.sort_values("specific", ascending=False, kind="stable").head(5)
    heads_w = [(int(r.layer), int(r.head)) for r in top_w.itertuples()]
    heads_b = [(int(r.layer), int(r.head)) for r in top_b.itertuples()]
    agreement = {
        "spearman_score_vs_specific": [float(rho_specific.statistic),
                                       float(rho_specific.pvalue)],
        "spearman_score_vs_drop_increment": [float(rho_increment.statistic),
                                             float(rho_increment.pvalue)],
        "top5_overlap": len(set(heads_w) & set(heads_b)),
        "weights_top5_rank_in_behaviour": [
            int((merged["specific"] > merged.set_index(["layer", "head"]).loc[
                (lay, h), "specific"]).sum()) + 1
            for lay, h in heads_w],
    }

    start = time.time()
    experiments = []
    target_sets = {"behaviour_top1": heads_b[:1], "behaviour_top3": heads_b[:3],
                   "weights_top1": heads_w[:1], "weights_top3": heads_w[:3]}
    for label, heads in target_sets.items():
        for kind, task in tasks.items():
            result = ablation_experiment(model, task, heads, method="mean", n_random=n_random,
                                         seed=0, progress=False, batch_size=batch_size,
                                         n_bootstrap=n_bootstrap)
            result.save(out / f"ablate_{label}_{kind}")
            table = result.table
            target = table[table.condition == "target"].iloc[0]
            randoms = table[table.condition.str.startswith("random")]
            experiments.append({
                "targets": label, "heads": target["heads"], "task": kind, "n": int(target["n"]),
                "baseline": float(table[table.condition == "baseline"]["accuracy"].iloc[0]),
                "target_delta": float(target["delta"]),
                "target_delta_ci": [float(target["delta_ci_low"]),
                                    float(target["delta_ci_high"])],
                "random_delta_mean": float(randoms["delta"].mean()),
                "random_delta_min": float(randoms["delta"].min()),
                "random_delta_ci_mean": [float(randoms["delta_ci_low"].mean()),
                                         float(randoms["delta_ci_high"].mean())],
                "random_delta_std": float(result.summary.get("std_random_delta", np.nan)),
                "share_random_as_low": float(result.summary.get("share_random_as_low",
                                                                np.nan)),
            })
    times["ablation_experiments"] = time.time() - start

    start = time.time()
    view = mod10_view(model, spec)
    view_raw = mod10_view(model, spec, center_sets=False)
    view.figure.write_html(out / "mod10.html", include_plotlyjs="cdn")
    times["mod10"] = time.time() - start

    cols = ["layer", "head", "score", "strict"] + [c for c in merged if c.startswith("set_")]
    bcols = ["layer", "head", "specific", "drop_increment", "drop_repeat", "drop_facts",
             "score"]
    summary = {
        "model": model_name,
        "n_items": {k: len(t) for k, t in tasks.items()},
        "weights_only": {
            "top5": top_w[cols].to_dict(orient="records"),
            "chance": weights.data.attrs["chance"],
            "threshold": weights.data.attrs["threshold"],
            "n_above_threshold": weights.data.attrs["n_above_threshold"],
            "max_score": weights.data.attrs["max_score"],
            "skipped_sets": list(weights.data.attrs["skipped_sets"]),
        },
        "behaviour": {"top5": top_b[bcols].to_dict(orient="records"),
                      "metric": "mean ablation, normalized logit diff; drop = 1 - nld"},
        "agreement": agreement,
        "experiments": experiments,
        "mod10": {
            "centered": {"accuracy": view.accuracy, "shuffled_mean": view.shuffled_mean,
                         "p_value": view.p_value, "k": view.k, "n_points": view.n_points,
                         "explained": view.explained},
            "uncentered": {"accuracy": view_raw.accuracy,
                           "shuffled_mean": view_raw.shuffled_mean,
                           "p_value": view_raw.p_value, "k": view_raw.k,
                           "n_points": view_raw.n_points, "explained": view_raw.explained},
        },
        "times_s": times,
    }
    write_json(out / "summary.json", summary)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--n", type=int, default=80)
    parser.add_argument("--n-random", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    args = parser.parse_args()
    summary = run(args.model, args.out, args.n, args.n_random, args.batch_size,
                  args.n_bootstrap)
    print(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    main()
