"""Peak memory of a streaming 64-prompt induction scan vs full ``run_with_cache``.

Each mode runs in its own child process (so peaks do not mix); the child reports its peak
resident memory (VmHWM) and its resident memory after loading the model, and the parent
kills a child whose resident memory passes ``--limit-gib`` (a full cache of 64 prompts does
not fit in a laptop's memory). Run: ``.venv/bin/python bench/bench_cache_memory.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

MODES = {
    "headprobe_streaming_scan": "headprobe induction scan, 64 prompts, batches of 8 (streaming)",
    "full_run_with_cache_batch8": "run_with_cache (all hooks) of ONE batch of 8 prompts",
    "full_run_with_cache_all64": "run_with_cache (all hooks) of all 64 prompts, caches kept",
    "filtered_run_with_cache_all64": "run_with_cache (patterns only) of all 64 prompts, kept",
}


def _rss_gib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    return 0.0


def child(mode: str, n: int, batch_size: int) -> None:
    import torch

    from headprobe import load_model, scan
    from headprobe.prompts import repeated_random_tokens

    model, spec = load_model("smollm2-135m-instruct")
    prompts = repeated_random_tokens(model, spec, n, seq_len=50, seed=0)
    tokens = torch.stack(prompts)
    with torch.inference_mode():
        model(tokens[:1])  # warm-up
    loaded = _rss_gib(os.getpid())
    started = time.perf_counter()
    if mode == "headprobe_streaming_scan":
        scan(model, "induction", prompts, batch_size=batch_size, progress=False)
    else:
        pattern_only = mode.startswith("filtered")
        names = (lambda name: name.endswith("hook_pattern")) if pattern_only else None
        rows = tokens[:batch_size] if mode.endswith("batch8") else tokens
        caches = []
        with torch.inference_mode():
            for first in range(0, len(rows), batch_size):
                _, cache = model.run_with_cache(rows[first:first + batch_size],
                                                names_filter=names)
                caches.append(cache)
    seconds = time.perf_counter() - started
    print(json.dumps({"mode": mode, "rss_after_load_gib": round(loaded, 3),
                      "peak_rss_gib": round(_rss_gib(os.getpid(), "VmHWM"), 3),
                      "seconds": round(seconds, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit-gib", type=float, default=14.0)
    parser.add_argument("--child", default=None)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.n, args.batch_size)
        return
    for mode, description in MODES.items():
        process = subprocess.Popen(
            [sys.executable, __file__, "--child", mode, "--n", str(args.n), "--batch-size",
             str(args.batch_size)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        peak_seen = 0.0
        killed = False
        while process.poll() is None:
            try:
                peak_seen = max(peak_seen, _rss_gib(process.pid))
            except (FileNotFoundError, ProcessLookupError):
                break
            if peak_seen > args.limit_gib:
                process.kill()
                killed = True
                break
            time.sleep(0.05)
        out, _ = process.communicate()
        if killed:
            print(f"{description}: killed above {args.limit_gib} GiB resident "
                  f"(peak seen {peak_seen:.2f} GiB)")
        else:
            result = json.loads(out.strip().splitlines()[-1])
            extra = result["peak_rss_gib"] - result["rss_after_load_gib"]
            print(f"{description}: peak {result['peak_rss_gib']:.2f} GiB resident "
                  f"({extra:+.2f} GiB over the loaded model), {result['seconds']} s")


if __name__ == "__main__":
    main()
