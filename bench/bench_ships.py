"""Ships on every head: the fast-scan engine vs the reference's one forward per head.

The model organism (``smollm2-135m-safety``; ``--model`` to change), the first ``--n`` shipped
harmful requests (train split) in the chat template, both ablations of Zhou et al. 2025
(``uniform_attention``, ``scale_output``, eps 1e-4), batches of 8. Times
:func:`headprobe.fastscan.head_effects` and :func:`headprobe.fastscan.loop_head_effects` in
the same process, after a warm-up, and compares their [N, L, H] KL values (goal: >= 5x faster,
max abs difference <= 1e-4). Writes ``bench/ships.json``.

Run: ``.venv/bin/python bench/bench_ships.py [--n 8] [--layers 0 15 29]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    from _machine import machine

    from headprobe.catalogue import load_model
    from headprobe.fastscan import head_effects, loop_head_effects
    from headprobe.heads.safety.request_sets import load_requests, request_prompt
    from headprobe.inputs import encode_prompts

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-safety")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--layers", type=int, nargs="*", default=None,
                        help="scan only these layers (default all); the fast engine's cost "
                             "per layer k is about (L - k) / L of a full forward")
    parser.add_argument("--methods", nargs="+", default=["uniform_attention", "scale_output"])
    args = parser.parse_args()
    model, spec = load_model(args.model)
    requests = load_requests("harmful", "train")[:args.n]
    ids = [e.ids for e in encode_prompts(
        model, [request_prompt(r.prompt, "chat") for r in requests], spec)]
    head_effects(model, ids[:2], layers=[0], progress=False)  # warm-up
    record: dict = {"machine": machine(), "model": spec.name, "n_queries": len(ids),
                    "mean_prompt_tokens": round(sum(len(i) for i in ids) / len(ids), 1),
                    "heads": spec.n_layers * spec.n_heads, "batch_size": 8,
                    "layers": args.layers or "all"}
    for method in args.methods:
        started = time.perf_counter()
        fast = head_effects(model, ids, method=method, eps=1e-4, layers=args.layers,
                            progress=False)
        fast_s = time.perf_counter() - started
        started = time.perf_counter()
        loop = loop_head_effects(model, ids, method=method, eps=1e-4, layers=args.layers,
                                 progress=False)
        loop_s = time.perf_counter() - started
        record[method] = {"fast_s": round(fast_s, 2), "loop_s": round(loop_s, 2),
                          "speedup": round(loop_s / fast_s, 2),
                          "max_abs_diff": float((fast - loop).nan_to_num().abs().max()),
                          "max_kl": float(loop.nan_to_num().max())}
        print(method, record[method], flush=True)
    Path(__file__).with_name("ships.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
