"""All-head activation patching on the default model: TransformerLens vs plain loop vs fastscan.

Same 8 IOI prompt pairs (one template, so every prompt has the same token length), all
L x H heads, z patched from the clean into the corrupt run at all positions, metric = logit
difference at the last token. Prints a JSON record (written to ``bench/allhead_scan.json``).

Run: ``.venv/bin/python bench/bench_allhead_scan.py [--n 8]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    from _machine import machine

    from headprobe.catalogue import load_model
    from headprobe.fastscan import loop_scan, scan_heads
    from headprobe.tasks import get_task
    from headprobe.tasks.base import answer_token_ids

    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--skip-tl", action="store_true")
    args = parser.parse_args()
    out_path = Path(__file__).with_name("allhead_scan.json")
    model, spec = load_model()
    task = get_task("ioi", n=args.n, model=model, template=0)
    record: dict = {"machine": machine(), "model": spec.name, "n_prompts": len(task),
                    "heads": spec.n_total_heads}

    def save() -> None:
        out_path.write_text(json.dumps(record, indent=2) + "\n")

    started = time.perf_counter()
    fast = scan_heads(model, task, metric="logit_diff", batch_size=args.n, progress=False)
    record["fastscan_s"] = time.perf_counter() - started
    save()
    started = time.perf_counter()
    loop = loop_scan(model, task, metric="logit_diff", batch_size=args.n, progress=False)
    record["loop_s"] = time.perf_counter() - started
    record["loop_vs_fast_max_abs_diff"] = float((fast["score"] - loop["score"]).abs().max())
    record["speedup_vs_loop"] = record["loop_s"] / record["fastscan_s"]
    save()
    if not args.skip_tl:
        from transformer_lens import patching

        clean = torch.stack([model.to_tokens(item.prompt)[0] for item in task.items])
        corrupt = torch.stack([model.to_tokens(item.corrupt_prompt)[0] for item in task.items])
        answers, distractors = answer_token_ids(model, task)
        rows = torch.arange(len(task))

        def metric(logits: torch.Tensor) -> torch.Tensor:
            last = logits[:, -1]
            return (last[rows, answers] - last[rows, distractors]).mean()

        try:
            started = time.perf_counter()
            with torch.inference_mode():
                _, clean_cache = model.run_with_cache(clean)
                ld_corrupt = metric(model(corrupt))
                tl = patching.get_act_patch_attn_head_out_all_pos(
                    model, corrupt, clean_cache, metric)
            record["tl_s"] = time.perf_counter() - started
            tl_effect = tl.detach().cpu().reshape(-1) - float(ld_corrupt)
            record["tl_vs_fast_max_abs_diff"] = float(
                (torch.tensor(fast["score"].to_numpy()) - tl_effect).abs().max())
            record["speedup_vs_tl"] = record["tl_s"] / record["fastscan_s"]
        except Exception as error:  # report exactly why the TL reference cannot run
            record["tl_error"] = f"{type(error).__name__}: {error}"
        save()
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
