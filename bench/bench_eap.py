"""EAP-IG vs exact activation patching of head z on the IOI set (default model).

Exact: noising activation patching of every head's z (corrupt z into the clean run, all
positions; :func:`headprobe.fastscan.scan_heads`, ``direction="noise"``, logit difference).
EAP-IG (:func:`headprobe.attribution.attribution_patching`) estimates the same quantity.
Reports the Spearman correlation of the 270 head scores and the time of each. Writes
``bench/eap.json``.

Run: ``.venv/bin/python bench/bench_eap.py [--n 8] [--steps 5]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    from _machine import machine
    from scipy.stats import spearmanr

    from headprobe.attribution import attribution_patching
    from headprobe.fastscan import scan_heads
    from headprobe.models import load_model
    from headprobe.tasks import get_task

    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    model, spec = load_model()
    task = get_task("ioi", n=args.n, model=model, template=0)
    record: dict = {"machine": machine(), "model": spec.name, "n_prompts": len(task),
                    "steps": args.steps}
    started = time.perf_counter()
    attr = attribution_patching(model, task, method="eap-ig", steps=args.steps, edges=True,
                                batch_size=args.n, progress=False)
    record["eap_ig_s"] = time.perf_counter() - started
    record["n_edges"] = len(attr.edges)
    started = time.perf_counter()
    exact = scan_heads(model, task, method="patch", direction="noise", metric="logit_diff",
                       batch_size=args.n, progress=False)
    record["exact_fastscan_s"] = time.perf_counter() - started
    record["spearman_z"] = float(spearmanr(attr.nodes["z"]["score"], exact["score"])[0])
    Path(__file__).with_name("eap.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
