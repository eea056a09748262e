"""EAP, EAP-IG (inputs) and EAP-IG over activations vs exact activation patching of head z.

Exact: noising activation patching of every head's z (corrupt z into the clean run, all
positions; :func:`headprobe.fastscan.scan_heads`, ``direction="noising"``, logit difference).
Estimators (:func:`headprobe.attribution.attribution_patching`, z-node scores, edges on):
``eap`` (one gradient at the clean run), ``eap-ig`` (gradients averaged over points between
the corrupt and clean input embeddings; Hanna et al. 2024's EAP-IG-inputs) and ``eap-ig-act``
(integrated gradients over each layer's own activations, one layer at a time) and
``eap-ig-act-head`` (over each head's own z, one head at a time). Also exact
*denoising* patching (clean z into the corrupt run), compared in the noising sign
(``-denoising``), to show which quantity each estimator tracks.

Reports, for each estimator and task, Pearson and Spearman over all L x H heads, the Spearman
over the heads whose exact effect exceeds 5% of the largest, the overlap of the top 20 heads
by |effect| (:func:`headprobe.attribution.agreement`), the number of forward + backward
passes and the time (edges included). Writes ``bench/eap.json`` (the tasks run replace their
entries; the others are kept).

Run: ``cd bench && ../.venv/bin/python bench_eap.py [--n 8] [--tasks ioi temporal_facts]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

RUNS = [("eap", 1), ("eap-ig", 5), ("eap-ig", 20), ("eap-ig-act", 1), ("eap-ig-act", 2),
        ("eap-ig-act", 5), ("eap-ig-act-head", 1), ("eap-ig-act-head", 2)]


def compare(estimate: np.ndarray, exact: np.ndarray) -> dict[str, float]:
    from scipy.stats import spearmanr

    from headprobe.attribution import agreement

    big = np.abs(exact) > 0.05 * np.abs(exact).max()
    scores = agreement(estimate, exact, top_k=20)
    return {
        "spearman_all": scores["spearman"],
        "pearson_all": scores["pearson"],
        "spearman_effect_gt_5pct": float(spearmanr(estimate[big], exact[big])[0]),
        "n_effect_gt_5pct": int(big.sum()),
        "top20_overlap": scores["top_k_overlap"],
    }


def load_task(name: str, n: int, model: object) -> object:
    from headprobe.tasks import get_task

    if name == "ioi":
        return get_task("ioi", n=n, model=model, template=0)
    return get_task(name, n=n, model=model)


def bench_task(model: object, task: object, n: int) -> dict:
    from headprobe.attribution import attribution_patching
    from headprobe.fastscan import scan_heads

    record: dict = {"n_prompts": len(task)}  # type: ignore[arg-type]
    started = time.perf_counter()
    exact = scan_heads(model, task, method="patch", direction="noising", metric="logit_diff",
                       batch_size=n, progress=False)
    record["exact_fastscan_s"] = time.perf_counter() - started
    denoise = scan_heads(model, task, method="patch", direction="denoising",
                         metric="logit_diff", batch_size=n, progress=False)
    exact_scores = exact["score"].to_numpy()
    minus_denoise = -denoise["score"].to_numpy()
    record["exact_noising_vs_minus_denoising"] = compare(minus_denoise, exact_scores)
    for method, steps in RUNS:
        started = time.perf_counter()
        result = attribution_patching(model, task, method=method, steps=steps, edges=True,
                                      batch_size=n, progress=False)
        seconds = time.perf_counter() - started
        name = method if method == "eap" else f"{method}-{steps}"
        z = result.nodes["z"]["score"].to_numpy()
        record[name] = {"seconds_with_edges": seconds, "n_edges": len(result.edges),
                        "backward_passes": result.meta["backward_passes"],
                        **compare(z, exact_scores),
                        "vs_minus_denoising": compare(z, minus_denoise)}
        print(name, json.dumps(record[name]), flush=True)
    return record


def main() -> None:
    from _machine import machine

    from headprobe.catalogue import load_model

    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--tasks", nargs="+", default=["ioi", "temporal_facts"])
    args = parser.parse_args()
    model, spec = load_model()
    path = Path(__file__).with_name("eap.json")
    record: dict = json.loads(path.read_text()) if path.exists() else {}
    record = {key: value for key, value in record.items() if isinstance(value, dict)
              and "n_prompts" in value}  # earlier task entries
    for name in args.tasks:
        task = load_task(name, args.n, model)
        record[name] = {"machine": machine(), **bench_task(model, task, args.n)}
    record = {"model": spec.name, "heads": spec.n_total_heads, **record}
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
