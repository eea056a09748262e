"""All-head patching scan on a GPU: useful FLOP/s of the fast scan against the matrix peak.

A random-weight Llama-shaped model built from a config (default: Llama-3.2-1B's shape, 16
layers x 32 heads, 8 kv heads, d_model 2048, d_mlp 8192, vocab 128256; random weights are
fine for timing), the character-level test tokenizer, ``--prompts`` random prompts of
``--tokens`` tokens whose clean and corrupt versions differ from position ``--differ-at``.
All L x H heads are patched (z, all positions, clean into corrupt), metric = logit
difference. Per precision (``bf16``, ``tf32`` = fp32 weights with TF32 matmuls, ``fp32``):

- ``fused``: :func:`headprobe.fastscan.scan_heads` (sdpa attention where the intervention
  allows it, which it does for z patching: every layer);
- ``eager``: the same with ``fused=False`` (the bridge's eager attention);
- ``loop``: :func:`headprobe.fastscan.loop_scan`, one full forward per head (skipped for the
  precisions in ``--skip-loop``).

Useful FLOPs count the matrix work each route must do (:func:`scan_flops`: projections, MLP,
attention scores and mixing over the causal keys, the unembedding where it is read, the two
base runs); FLOP/s are against the measured bf16 rate of an 8192^3 matrix product on the same
card and against the datasheet peak ``--peak-tflops`` (H100 / H200 SXM dense bf16: 989).
Writes ``bench/gpu_scan.json`` (or ``--out``).

Run (GPU): ``python bench/bench_gpu_scan.py``; a CPU smoke run:
``python bench/bench_gpu_scan.py --device cpu --layers 2 --heads 4 --kv-heads 2
--d-model 64 --d-mlp 128 --vocab 200 --prompts 2 --tokens 16 --differ-at 4``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import torch


def scan_flops(*, layers: int, heads: int, kv_heads: int, d_model: int, d_head: int,
               d_mlp: int, vocab: int, prompts: int, tokens: int, start: int) -> dict[str, float]:
    """Matrix FLOPs (2 per multiply-add) of the fast scan and of the plain loop.

    Per token and layer: q / o projections ``2 * 2 * d_model * H * d_head``, k / v
    ``2 * 2 * d_model * H_kv * d_head``, the gated MLP ``2 * 3 * d_model * d_mlp``; per query
    at position ``p`` attention scores and mixing ``2 * 2 * H * d_head * (p + 1)`` (causal
    keys). The fast scan: two base runs (clean, corrupt: every position, full unembedding);
    then for each layer ``k`` the ``H * prompts`` stacked rows run layers ``k..L-1`` on
    positions ``start..T-1`` and unembed one position. The loop: ``L * H`` full forwards
    (every position, full unembedding) plus the two base runs.
    """
    dense = 2 * (2 * d_model * heads * d_head + 2 * d_model * kv_heads * d_head
                 + 3 * d_model * d_mlp)

    def attention(first: int) -> float:  # summed over query positions first..T-1
        return sum(4 * heads * d_head * (p + 1) for p in range(first, tokens))

    def full_forward(rows: int) -> float:
        per_layer = rows * (tokens * dense + attention(0))
        return layers * per_layer + rows * tokens * 2 * d_model * vocab

    base = 2 * full_forward(prompts)
    fast = base
    rows = heads * prompts
    for k in range(layers):
        fast += (layers - k) * rows * ((tokens - start) * dense + attention(start))
        fast += rows * 2 * d_model * vocab
    loop = base + layers * heads * full_forward(prompts)
    return {"fast": fast, "loop": loop}


def matmul_tflops(device: str, size: int = 8192, repeats: int = 10) -> float | None:
    """Measured bf16 rate of a ``size``^3 matrix product (mean of ``repeats`` after warm-up)."""
    if not device.startswith("cuda"):
        return None
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * size ** 3 * repeats / (time.perf_counter() - started) / 1e12


def build_task(tokenizer: Any, prompts: int, tokens: int, differ_at: int, seed: int) -> Any:
    """Random character prompts of ``tokens`` tokens (BOS included); the corrupt prompt keeps
    positions ``< differ_at`` and redraws the rest; single-character answers."""
    from headprobe.tasks.base import Task, TaskItem

    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    items = []
    for _ in range(prompts):
        clean = "".join(rng.choice(letters) for _ in range(tokens - 1))
        keep = differ_at - 1  # BOS is position 0
        corrupt = clean[:keep] + "".join(rng.choice(letters) for _ in range(tokens - 1 - keep))
        answer, distractor = rng.sample(letters, 2)
        items.append(TaskItem(clean, answer, distractor, corrupt))
    task = Task("random_pairs", items)
    lengths = {len(tokenizer(item.prompt)["input_ids"]) for item in items}
    if lengths != {tokens}:
        raise RuntimeError(f"prompts tokenized to {lengths} tokens, expected {tokens}")
    return task


def build_model(args: argparse.Namespace, dtype: torch.dtype) -> tuple[Any, Any]:
    """The random-weight model (seeded, drawn in fp32 on the device, then cast) in a bridge."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from headprobe.models import wrap_hf_model
    from headprobe.tiny import char_tokenizer

    tokenizer = char_tokenizer()
    config = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.d_model, intermediate_size=args.d_mlp,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads, max_position_embeddings=max(args.tokens, 256),
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(args.seed)
    with torch.device(args.device):
        hf_model = LlamaForCausalLM(config)
    hf_model = hf_model.to(dtype)
    return wrap_hf_model(hf_model, tokenizer, name="llama-1b-shape-random",
                         hf_name="llama-1b-shape-random", device=args.device, dtype=dtype)


def profile(fn: Any, device: str, rows: int = 25) -> None:
    """Print the ``rows`` most expensive operators of ``fn`` (device time first)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU]
    if device.startswith("cuda"):
        activities.append(ProfilerActivity.CUDA)
    with torch_profile(activities=activities, record_shapes=True) as prof:
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=rows), flush=True)
    print(prof.key_averages(group_by_input_shape=True).table(
        sort_by=key, row_limit=rows, max_name_column_width=40, max_shapes_column_width=90),
        flush=True)


def timed(fn: Any, device: str) -> tuple[Any, float]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return result, time.perf_counter() - started


def run_precision(args: argparse.Namespace, precision: str, dtype: torch.dtype,
                  flops: dict[str, float], matmul: float | None) -> Any:
    """Yield ``(run record, [L*H] scores)`` for each route at one precision."""
    from headprobe.fastscan import loop_scan, scan_heads

    device = args.device
    model, _ = build_model(args, dtype)
    task = build_task(model.tokenizer, args.prompts, args.tokens, args.differ_at, args.seed)
    common = {"metric": "logit_diff", "batch_size": args.batch_size, "progress": False}
    # warm-up: kernels, cuBLAS handles, allocator (the last layer only)
    scan_heads(model, task, layers=[args.layers - 1], **common)
    if args.profile and precision == "bf16":
        profile(lambda: scan_heads(model, task, layers=[0], **common), device)
    skip_loop = set(args.skip_loop.split(",")) if args.skip_loop else set()
    for route in args.routes.split(","):
        if route == "loop" and precision in skip_loop:
            continue
        if route == "loop":
            table, seconds = timed(lambda: loop_scan(model, task, **common), device)
        else:
            table, seconds = timed(lambda r=route: scan_heads(
                model, task, fused=r == "fused", **common), device)
        useful = flops["loop" if route == "loop" else "fast"]
        run = {"precision": precision, "route": route, "seconds": round(seconds, 3),
               "useful_tflop": round(useful / 1e12, 1),
               "tflops": round(useful / seconds / 1e12, 1),
               "pct_of_peak": round(100 * useful / seconds / 1e12 / args.peak_tflops, 1)}
        if matmul:
            run["pct_of_measured_bf16_matmul"] = round(
                100 * useful / seconds / 1e12 / matmul, 1)
        if device.startswith("cuda"):
            run["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            torch.cuda.reset_peak_memory_stats()
        yield run, torch.tensor(table["score"].to_numpy())


def main() -> None:
    from _machine import machine

    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=2048)
    parser.add_argument("--d-mlp", type=int, default=8192)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--differ-at", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--precisions", default="bf16,tf32,fp32")
    parser.add_argument("--skip-loop", default="fp32", help="precisions without the loop")
    parser.add_argument("--routes", default="fused,eager,loop")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true",
                        help="print the top kernels of one fused bf16 layer-0 scan")
    parser.add_argument("--out", default=str(Path(__file__).with_name("gpu_scan.json")))
    args = parser.parse_args()
    device = args.device
    record: dict[str, Any] = {"machine": machine(), "args": vars(args), "runs": []}
    if device.startswith("cuda"):
        record["gpu"] = torch.cuda.get_device_name(0)
        record["matmul_bf16_tflops"] = matmul_tflops(device)
    d_head = args.d_model // args.heads
    flops = scan_flops(layers=args.layers, heads=args.heads, kv_heads=args.kv_heads,
                       d_model=args.d_model, d_head=d_head, d_mlp=args.d_mlp, vocab=args.vocab,
                       prompts=args.prompts, tokens=args.tokens, start=args.differ_at)
    record["useful_tflop"] = {key: value / 1e12 for key, value in flops.items()}

    def save() -> None:
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")

    dtypes = {"bf16": torch.bfloat16, "tf32": torch.float32, "fp32": torch.float32}
    scores: dict[tuple[str, str], torch.Tensor] = {}
    tf32_before = torch.backends.cuda.matmul.allow_tf32
    for precision in args.precisions.split(","):
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        try:
            for run, score in run_precision(args, precision, dtypes[precision], flops,
                                            record.get("matmul_bf16_tflops")):
                scores[(precision, run["route"])] = score
                record["runs"].append(run)
                print(json.dumps(run), flush=True)
                save()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32_before
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    comparisons = {}
    for (precision, route), score in scores.items():
        for other_key, other in scores.items():
            if other_key <= (precision, route):
                continue
            comparisons[f"{precision}-{route} vs {other_key[0]}-{other_key[1]}"] = float(
                (score - other).abs().max())
    record["max_abs_diff"] = comparisons
    speedups = {}
    for precision in args.precisions.split(","):
        seconds = {run["route"]: run["seconds"] for run in record["runs"]
                   if run["precision"] == precision}
        if "loop" in seconds:
            speedups[precision] = {route: round(seconds["loop"] / value, 2)
                                   for route, value in seconds.items() if route != "loop"}
    record["speedup_vs_loop"] = speedups
    save()
    print(json.dumps({key: record[key] for key in ("max_abs_diff", "speedup_vs_loop")},
                     indent=2))


if __name__ == "__main__":
    main()
