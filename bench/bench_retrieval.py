"""Retrieval scan at 1k, 2k and 4k tokens: peak memory and wall time against two baselines.

One NIAH trial per length (``headprobe.heads.retrieval.niah``, depth 0.5, the default model's chat
template), ``--new`` greedy tokens each, no early stop (EOS and newlines ignored) so every
route generates the same number of tokens. Routes, each in its own child process:

- ``sdpa_generate``: plain KV-cached greedy generation, Hugging Face ``generate`` on the same
  dequantized model loaded with ``attn_implementation="sdpa"`` (no bridge, no hooks);
- ``retrieval_scan``: headprobe's ``retrieval`` scorer on that trial
  (:func:`headprobe.heads.retrieval.retrieval.score_trials`: KV-cached decode through the layer
  runner with the decode-time attention observer: one ``q . K`` row per head and step);
- ``reference_route``: Wu et al.'s route, on the same model with eager attention: prefill
  all prompt tokens but the last, then one forward per step with ``output_attentions=True``
  (the full attention tensors of every layer), argmax of each head's last row.

Memory: each child loads its model, runs a short warm-up, returns freed heap to the system
(``malloc_trim``) and resets its peak resident set size (``/proc/self/clear_refs`` 5); it
then reports the peak (VmHWM) during the run and the resident size before it. Time: wall
time of the run (prefill + all steps). Run: ``.venv/bin/python bench/bench_retrieval.py``
(writes ``bench/retrieval.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROUTES = ("sdpa_generate", "retrieval_scan", "reference_route")


def _status_gib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> float:
    """Return freed heap to the OS, reset VmHWM; the resident GiB before the run."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    return _status_gib("VmRSS")


def _trial(model, length: int):
    from headprobe.heads.retrieval.retrieval import prepare_trials
    from headprobe.models import describe_model

    spec = describe_model(model)
    from headprobe.heads.retrieval.niah import make_task

    task = make_task(n=1, context_lengths=[length], depths=[0.5], seed=0, model=model)
    data = prepare_trials(model, spec, task, 1, 0, {"max_new_tokens": 1, "gate": 0.5})
    return spec, data.payload


def child(route: str, length: int, new: int) -> dict:
    import torch

    from headprobe.catalogue import load_model

    bridge, spec = load_model()
    spec, trials = _trial(bridge, length)
    ids = trials[0].encoded.ids[None]  # [1, T]
    record: dict = {"route": route, "context": length, "prompt_tokens": int(ids.shape[1]),
                    "new_tokens": new}
    if route == "retrieval_scan":
        from headprobe.heads.retrieval.retrieval import score_trials

        def run() -> torch.Tensor:
            scores = score_trials(bridge, spec, trials, max_new_tokens=new,
                                  stop_at_newline=False, stop_at_eos=False)
            record["top_head_score"] = float(scores.sums.max())
            return scores.tokens[0]

        warm = trials[:1]
        score_trials(bridge, spec, warm, max_new_tokens=2, stop_at_newline=False,
                     stop_at_eos=False)
    else:
        from transformers import AutoModelForCausalLM

        folder = _cached_folder()
        attn = "sdpa" if route == "sdpa_generate" else "eager"
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                  attn_implementation=attn).eval()
        del bridge
        import gc

        gc.collect()
        if route == "sdpa_generate":
            def run() -> torch.Tensor:
                with torch.inference_mode():
                    out = hf.generate(ids, attention_mask=torch.ones_like(ids),
                                      max_new_tokens=new, min_new_tokens=new,
                                      do_sample=False)
                return out[0, ids.shape[1]:]
        else:
            def run() -> torch.Tensor:
                return _reference(hf, ids, new, trials[0])

        with torch.inference_mode():
            hf(ids[:, :8])  # warm-up
    before = _reset_peak()
    started = time.perf_counter()
    tokens = run()
    record["seconds"] = round(time.perf_counter() - started, 2)
    record["rss_before_gib"] = round(before, 3)
    record["peak_gib"] = round(_status_gib("VmHWM"), 3)
    record["peak_over_loaded_gib"] = round(record["peak_gib"] - before, 3)
    record["tokens"] = [int(t) for t in tokens]
    return record


def _cached_folder() -> Path:
    from headprobe.gguf import cache_dir

    folders = sorted((cache_dir() / "models").glob("*smollm2*"))
    if not folders:
        raise SystemExit("no cached SmolLM2 folder: run `headprobe scan` once to build it")
    return folders[0]


def _reference(hf, ids, new: int, trial):
    """Wu et al.'s route: eager attention, ``output_attentions`` at every decode step;
    returns the generated ids."""
    import torch

    from headprobe.runtime.hf_compat import cache_kwarg, output_cache

    needle = trial.encoded.spans["needle"]
    layers, heads = hf.config.num_hidden_layers, hf.config.num_attention_heads
    sums = torch.zeros(layers, heads, dtype=torch.float64)
    prompt = ids[0].tolist()
    with torch.inference_mode():
        out = hf(ids[:, :-1], use_cache=True)
        cache, token = output_cache(out), ids[:, -1:]
        generated = []
        for _ in range(new):
            out = hf(token, use_cache=True, output_attentions=True, **{cache_kwarg(): cache})
            cache = output_cache(out)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            chosen = int(token)
            for layer, pattern in enumerate(out.attentions):  # [1, H, 1, T_k]
                top = pattern[0, :, -1].argmax(-1).tolist()
                for head, position in enumerate(top):
                    if needle.start <= position < needle.stop and prompt[position] == chosen:
                        sums[layer, head] += 1 / (needle.stop - needle.start)
            generated.append(chosen)
            prompt.append(chosen)
    return torch.tensor(generated)


def _eos_id() -> int:
    from transformers import AutoTokenizer

    return int(AutoTokenizer.from_pretrained(_cached_folder()).eos_token_id)


def _equal_before_eos(tokens: list[int], base: list[int], eos: int) -> bool:
    """Whether ``tokens`` equals ``base`` up to the first EOS in ``tokens``."""
    stop = tokens.index(eos) if eos in tokens else len(tokens)
    return tokens[:stop] == base[:stop]


def compare(results: list[dict], eos: int) -> dict[str, dict]:
    """Ratios of each route to ``sdpa_generate`` at the same length, and whether its tokens
    equal sdpa's before the first EOS (HF's ``min_new_tokens`` forbids EOS; the other routes
    run past it, so later tokens may differ)."""
    by = {(r["route"], r["context"]): r for r in results}
    ratios = {}
    for (route, length), other in by.items():
        base = by.get(("sdpa_generate", length))
        if base is None:
            continue
        ratios[f"{route}@{length}"] = {
            "time_vs_sdpa": round(other["seconds"] / base["seconds"], 2),
            "peak_vs_sdpa": round(other["peak_gib"] / base["peak_gib"], 2),
            "peak_over_loaded_vs_sdpa": round(
                other["peak_over_loaded_gib"] / max(base["peak_over_loaded_gib"], 1e-3), 2),
            "tokens_equal_sdpa_before_eos": _equal_before_eos(other["tokens"],
                                                              base["tokens"], eos),
            "tokens_equal_reference": other["tokens"] == by.get(
                ("reference_route", length), other)["tokens"]}
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--routes", nargs="+", default=list(ROUTES))
    parser.add_argument("--child", nargs=2, metavar=("ROUTE", "LENGTH"))
    parser.add_argument("--report", action="store_true",
                        help="recompute the ratios of the saved bench/retrieval.json")
    args = parser.parse_args()
    if args.report:
        path = Path(__file__).with_name("retrieval.json")
        report = json.loads(path.read_text())
        report["ratios"] = compare(report["results"], eos=_eos_id())
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report["ratios"], indent=2))
        return
    if args.child:
        print("RECORD " + json.dumps(child(args.child[0], int(args.child[1]), args.new)))
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from _machine import machine

    results = []
    for length in args.lengths:
        for route in args.routes:
            proc = subprocess.run(
                [sys.executable, __file__, "--child", route, str(length), "--new",
                 str(args.new)], capture_output=True, text=True, env=os.environ.copy())
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RECORD ")]
            if proc.returncode != 0 or not lines:
                raise SystemExit(f"{route} at {length} failed:\n{proc.stderr[-3000:]}")
            record = json.loads(lines[-1][len("RECORD "):])
            print(json.dumps({k: v for k, v in record.items() if k != "tokens"}), flush=True)
            results.append(record)
    ratios = compare(results, eos=_eos_id())
    report = {"machine": machine(), "results": results, "ratios": ratios}
    Path(__file__).with_name("retrieval.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(ratios, indent=2))


if __name__ == "__main__":
    main()
