"""EAP and EAP-IG vs exact activation patching of head z on the IOI set (default model).

Exact: noising activation patching of every head's z (corrupt z into the clean run, all
positions; :func:`headprobe.fastscan.scan_heads`, ``direction="noising"``, logit difference).
EAP (one gradient at the clean run) and EAP-IG (gradients averaged over interpolation steps;
:func:`headprobe.attribution.attribution_patching`) estimate the same per-head quantity.
Reports, for each estimator, the Spearman correlation over all L x H heads, the Pearson
correlation, the Spearman over the heads whose exact effect exceeds 5% of the largest (the
bulk of near-zero heads dominates a rank correlation over all heads), the overlap of the top 20
heads by |effect|, and the time of each. Writes ``bench/eap.json``.

Run: ``cd bench && ../.venv/bin/python bench_eap.py [--n 8] [--steps 5 20]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def compare(estimate: np.ndarray, exact: np.ndarray) -> dict[str, float]:
    from scipy.stats import pearsonr, spearmanr

    big = np.abs(exact) > 0.05 * np.abs(exact).max()
    top_exact = set(np.argsort(-np.abs(exact))[:20].tolist())
    top_estimate = set(np.argsort(-np.abs(estimate))[:20].tolist())
    return {
        "spearman_all": float(spearmanr(estimate, exact)[0]),
        "pearson_all": float(pearsonr(estimate, exact)[0]),
        "spearman_effect_gt_5pct": float(spearmanr(estimate[big], exact[big])[0]),
        "n_effect_gt_5pct": int(big.sum()),
        "top20_overlap": len(top_exact & top_estimate),
    }


def main() -> None:
    from _machine import machine

    from headprobe.attribution import attribution_patching
    from headprobe.fastscan import scan_heads
    from headprobe.models import load_model
    from headprobe.tasks import get_task

    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 20])
    args = parser.parse_args()
    model, spec = load_model()
    task = get_task("ioi", n=args.n, model=model, template=0)
    record: dict = {"machine": machine(), "model": spec.name, "n_prompts": len(task),
                    "heads": spec.n_total_heads}
    started = time.perf_counter()
    exact = scan_heads(model, task, method="patch", direction="noising", metric="logit_diff",
                       batch_size=args.n, progress=False)
    record["exact_fastscan_s"] = time.perf_counter() - started
    exact_scores = exact["score"].to_numpy()
    runs = [("eap", 5)] + [("eap-ig", steps) for steps in args.steps]
    for method, steps in runs:
        started = time.perf_counter()
        result = attribution_patching(model, task, method=method, steps=steps, edges=True,
                                      batch_size=args.n, progress=False)
        name = method if method == "eap" else f"{method}-{steps}"
        record[name] = {"seconds_with_edges": time.perf_counter() - started,
                        "n_edges": len(result.edges),
                        **compare(result.nodes["z"]["score"].to_numpy(), exact_scores)}
    Path(__file__).with_name("eap.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
