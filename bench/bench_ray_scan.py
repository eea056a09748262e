"""All-head activation patching on the default model: one process vs 1 vs 2 local Ray workers.

The same scan (``n`` IOI prompt pairs, all L x H heads, z patched clean -> corrupt at every
position, metric = logit difference; :func:`headprobe.fastscan.scan_heads`) run

- in this process (torch on every core);
- by :func:`headprobe.distributed.ray_scan` on a local Ray instance with 1 worker (all cores'
  threads) and with 2 workers (an equal share of the cores each), sharded by prompt batches,
  and with 2 workers sharded by layers.

Each pool of workers is started (every worker loads the model once) before the scan is
timed; ``startup_s`` is that start. Records the wall time of each scan, the speedup over one
process and the largest difference from the single-process scores; writes
``bench/ray_scan.json``. On a machine with fewer cores than workers x threads the workers
share cores, which the record says (``machine.nproc``).

Run: ``.venv/bin/python bench/bench_ray_scan.py [--n 32] [--batch-size 8] [--workers 1,2]``
(``--workers``: the worker counts sharded by prompts; the largest is also run by layers).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch


def main() -> None:
    import ray
    from _machine import machine

    from headprobe.catalogue import DEFAULT_MODEL, load_model
    from headprobe.distributed import RayScanPool, ray_scan
    from headprobe.fastscan import scan_heads
    from headprobe.tasks import get_task

    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()
    counts = sorted({int(part) for part in args.workers.split(",")})
    out_path = Path(__file__).with_name("ray_scan.json")
    cores = os.cpu_count() or 1
    model, spec = load_model(DEFAULT_MODEL)
    task = get_task("ioi", n=args.n, model=model)
    scan = {"metric": "logit_diff", "batch_size": args.batch_size, "progress": False}
    record: dict = {"machine": machine(), "model": spec.name, "n_prompts": len(task),
                    "batch_size": args.batch_size, "heads": spec.n_total_heads,
                    "scan": "activation patching (denoising), logit_diff, all positions",
                    "runs": []}

    def save() -> None:
        out_path.write_text(json.dumps(record, indent=2) + "\n")

    started = time.perf_counter()
    single = scan_heads(model, task, **scan)
    record["single_process_s"] = round(time.perf_counter() - started, 2)
    save()
    del model
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    try:
        runs = [(workers, "prompts") for workers in counts] + [(counts[-1], "layers")]
        for workers, shard_by in runs:
            cpus = max(1, cores // workers)
            started = time.perf_counter()
            with RayScanPool(DEFAULT_MODEL, num_workers=workers, cpus_per_worker=cpus) as pool:
                pool.info()  # every worker has loaded the model
                startup = time.perf_counter() - started
                started = time.perf_counter()
                table = ray_scan(DEFAULT_MODEL, task, pool=pool, shard_by=shard_by, **scan)
                seconds = time.perf_counter() - started
            dist = table.meta["distributed"]
            record["runs"].append({
                "workers": workers, "threads_per_worker": cpus, "shard_by": shard_by,
                "shards": dist["shards"], "startup_s": round(startup, 2),
                "scan_s": round(seconds, 2),
                "speedup_vs_single": round(record["single_process_s"] / seconds, 3),
                "shard_seconds": dist["shard_seconds"],
                "max_abs_diff_vs_single": float(
                    (table["score"] - single["score"]).abs().max())})
            save()
    finally:
        ray.shutdown()
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    torch.set_num_threads(os.cpu_count() or 1)
    main()
