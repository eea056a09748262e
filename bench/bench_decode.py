"""KV-cached generation vs recomputing the sequence every step, on the default model.

8 prompts of about 100 tokens (BOS + 50 random tokens repeated twice), 32 new greedy tokens
each, batch size 8, left padding. Three routes: ``headprobe.runtime.decode.generate`` with the
KV cache, the same with ``use_cache=False`` (the reference that recomputes every step), and
Hugging Face's ``generate`` on the bridge's HF model. Tokens must agree (before each row's
first EOS: ``min_new_tokens`` makes HF's greedy route skip EOS). Prints a JSON record
(written to ``bench/decode.json``).

Run: ``.venv/bin/python bench/bench_decode.py [--n 8] [--new 32]``
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
    from headprobe.prompts import repeated_random_tokens
    from headprobe.runtime.decode import generate
    from headprobe.runtime.hf_compat import bridge_attention_cache

    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--new", type=int, default=32)
    args = parser.parse_args()
    model, spec = load_model()
    prompts = repeated_random_tokens(model, spec, args.n, seq_len=50, seed=0)
    record: dict = {"machine": machine(), "model": spec.name, "n_prompts": args.n,
                    "prompt_tokens": int(prompts[0].numel()), "new_tokens": args.new}
    generate(model, prompts[:1], max_new_tokens=2)  # warm-up
    timings, tokens = {}, {}
    for name, use_cache in (("cached", True), ("recomputed", False)):
        started = time.perf_counter()
        out = generate(model, prompts, max_new_tokens=args.new, batch_size=args.n,
                       use_cache=use_cache)
        timings[name] = time.perf_counter() - started
        tokens[name] = out.tokens
    ids = torch.stack(prompts)  # equal lengths: no padding needed
    started = time.perf_counter()
    with torch.inference_mode(), bridge_attention_cache(model):  # transformers >= 5.24
        hf = model.original_model.generate(ids, attention_mask=torch.ones_like(ids),
                                           max_new_tokens=args.new, min_new_tokens=args.new,
                                           do_sample=False)
    timings["hf_generate"] = time.perf_counter() - started
    tokens["hf_generate"] = hf[:, ids.shape[1]:]
    record["seconds"] = {k: round(v, 2) for k, v in timings.items()}
    record["speedup_cached_vs_recomputed"] = round(timings["recomputed"] / timings["cached"], 2)
    # HF's min_new_tokens forbids EOS, headprobe's greedy route may emit it: compare each row
    # before its first EOS.
    eos = model.tokenizer.eos_token_id
    cached = tokens["cached"]
    is_eos = (cached == eos).int()
    before = is_eos.cumsum(1) == 0  # [N, new]: positions before the first EOS
    record["tokens_equal_before_first_eos"] = {
        k: bool(((cached == v.cpu()) | ~before).all()) for k, v in tokens.items()}
    record["rows_with_eos"] = int(is_eos.any(1).sum())
    Path(__file__).with_name("decode.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
