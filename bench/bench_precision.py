"""bf16 against fp32 for the scorers added since the core redesign made precision a parameter.

Each scorer (``retrieval``, ``ships``, ``successor``, ``temporal``, ``conflict`` on
``--model``, default SmolLM2-135M-Instruct; ``ocr`` on ``--ocr-model``, default the project's
``ocr-reader``) runs on the same inputs with the model loaded in ``float32`` and in
``bfloat16`` (:func:`headprobe.catalogue.load_model` ``dtype``), small ``n`` (``CONFIGS``). Per
column (``score`` and the scorer's main other columns) it reports, over the L x H heads:
``max_abs_diff`` and ``mean_abs_diff`` (NaN-aware), ``spearman`` (rank correlation; NaN when
a column is constant) and ``spearman_top50`` (over the 50 heads strongest in fp32: the heads a
user reads, where ties at zero do not count), ``top10_overlap`` (shared heads among the ten
highest, by ``|value|`` for signed columns), ``same_top_head`` and the fp32 range, plus the
wall time of each run.
Decode-time scorers also report whether both precisions generated the same text (their
scores are argmax counts over the generated tokens, so a different greedy token changes
them by whole credits); ``retrieval`` adds ``matched_trials``: the per-trial credit of the
trials both precisions decode to the same tokens (:func:`matched_retrieval`), the arithmetic's
own effect without the gate's.

Timing: each model gets one warm-up forward when loaded; on a CPU with AMX / AVX-512 bf16
bf16 runs can be faster than fp32. The machine is shared, so times are indicative.

Route: ``retrieval`` and ``ocr`` decode with the KV cache. ``--route auto`` (default) first
checks that KV-cached generation works in this environment and otherwise runs both scorers on
:func:`~headprobe.runtime.decode.generate`'s recomputing route (``use_cache=False``, tested
equal to the cached one in ``tests/test_retrieval.py``), saying so in the output and the JSON.

Writes ``bench/precision.json``. Run: ``.venv/bin/python bench/bench_precision.py
[--scorers retrieval successor] [--route auto|cache|recompute]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

# scorer -> model option (model / ocr_model), n, parameters, columns compared, signed columns
CONFIGS: dict[str, dict[str, Any]] = {
    "retrieval": {"model": "model", "n": 6,
                  "params": {"context_lengths": (256,), "depths": (0.0, 0.5, 1.0),
                             "max_new_tokens": 16},
                  "columns": ["score", "hit_share", "trials_with_hit"], "signed": []},
    "ships": {"model": "model", "n": 4, "params": {},
              "columns": ["score", "scaled_mean", "uniform_top10"], "signed": []},
    "successor": {"model": "model", "n": None, "params": {},
                  "columns": ["score", "strict"], "signed": []},
    "temporal": {"model": "model", "n": 4,
                 "params": {"temporal_sets": ("president", "ceo"),
                            "invariant_sets": ("capital",), "ig_steps": 5},
                 "columns": ["score", "invariant_fraction", "node_score", "exact_patching"],
                 "signed": ["node_score", "exact_patching"]},
    "conflict": {"model": "model", "n": 6, "params": {},
                 "columns": ["score", "dla"], "signed": ["score", "dla"]},
    "ocr": {"model": "ocr_model", "n": 32, "params": {},
            "columns": ["score", "evidence_share", "char_score", "char_agreement"],
            "signed": []},
}
DECODE_SCORERS = ("retrieval", "ocr")


def compare(a: np.ndarray, b: np.ndarray, signed: bool = False, k: int = 10) -> dict[str, Any]:
    """Agreement of two [L, H] grids (``a`` the fp32 reference, ``b`` bf16)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    diff = np.abs(a - b)
    keep = np.isfinite(a) & np.isfinite(b)
    constant = np.ptp(a[keep]) == 0 or np.ptp(b[keep]) == 0 if keep.any() else True
    rho = float("nan") if constant else float(spearmanr(a[keep], b[keep]).statistic)
    ka = np.where(np.isfinite(a), np.abs(a) if signed else a, -np.inf)
    kb = np.where(np.isfinite(b), np.abs(b) if signed else b, -np.inf)
    order = np.argsort(-ka, kind="stable")
    big = order[:50][np.isfinite(b[order[:50]])]  # the 50 strongest fp32 heads
    rho50 = float(spearmanr(a[big], b[big]).statistic) if np.ptp(a[big]) > 0 else float("nan")
    top_a = set(order[:k].tolist())
    top_b = set(np.argsort(-kb, kind="stable")[:k].tolist())
    return {"max_abs_diff": float(np.nanmax(diff)) if keep.any() else float("nan"),
            "mean_abs_diff": float(np.nanmean(diff)) if keep.any() else float("nan"),
            "spearman": rho, "spearman_top50": rho50, "top10_overlap": len(top_a & top_b) / k,
            "same_top_head": int(np.argmax(ka)) == int(np.argmax(kb)),
            "nan_fp32": int((~np.isfinite(a)).sum()), "nan_bf16": int((~np.isfinite(b)).sum()),
            "fp32_min": float(np.nanmin(a)), "fp32_max": float(np.nanmax(a))}


def cache_route_works(model: Any) -> bool:
    """Whether KV-cached generation with the attention observer runs in this environment."""
    from headprobe.runtime.decode import generate
    from headprobe.runtime.observer import AttentionObserver

    ids = [model.to_tokens("The key is 4417. The key is")[0]]
    try:
        generate(model, ids, max_new_tokens=2, progress=False,
                 observers=[AttentionObserver(lambda rows: None, include_prefill=True)])
    except (RuntimeError, ValueError):
        return False
    return True


@contextlib.contextmanager
def recompute_route() -> Iterator[None]:
    """``retrieval`` and ``ocr`` decode with ``use_cache=False`` (no prefill chunks) inside."""
    from headprobe.heads.ocr import ocr
    from headprobe.heads.retrieval import retrieval
    from headprobe.runtime import decode

    def recomputing(*args: Any, **kwargs: Any) -> Any:
        kwargs["use_cache"], kwargs["prefill_chunk"] = False, None
        return decode.generate(*args, **kwargs)

    saved = retrieval.generate, ocr.generate
    retrieval.generate = ocr.generate = recomputing
    try:
        yield
    finally:
        retrieval.generate, ocr.generate = saved


def matched_retrieval(models: dict[str, Any], n: int, params: dict[str, Any],
                      batch_size: int) -> dict[str, Any]:
    """Per-trial retrieval credit of the trials both precisions decode to the same tokens:
    the arithmetic's own effect (argmax flips), without the gate's changes."""
    import torch

    from headprobe.heads.retrieval.retrieval import DEFAULTS, prepare_trials, score_trials
    from headprobe.models import describe_model

    runs = []
    for dtype in ("float32", "bfloat16"):
        model = models[dtype]
        spec = describe_model(model)
        data = prepare_trials(model, spec, None, n, 0, {**DEFAULTS, **params})
        runs.append(score_trials(model, spec, data.payload,
                                 max_new_tokens=int(params.get("max_new_tokens", 24)),
                                 batch_size=batch_size))
    a, b = runs
    same = [i for i in range(len(a.texts)) if torch.equal(a.tokens[i], b.tokens[i])]
    if not same:
        return {"n_matched": 0}
    diff = (a.sums[same] - b.sums[same]).abs()  # [M, L, H]
    return {"n_matched": len(same), "n_trials": len(a.texts),
            "max_abs_diff_per_trial": float(diff.max()),
            "max_abs_diff_mean": float((a.sums[same].mean(0) - b.sums[same].mean(0)).abs().max()),
            "hit_count_changes": int((a.hits[same] != b.hits[same]).sum()),
            "hits_fp32": int(a.hits[same].sum())}


def outputs(table: Any) -> list[str] | None:
    """The generated text per trial / sample of a decode-time scorer's table."""
    meta = table.meta
    rows = meta.get("trials") or meta.get("samples")
    return None if rows is None else [str(r.get("output")) for r in rows]


def main() -> None:
    import torch
    from _machine import machine

    from headprobe.catalogue import load_model
    from headprobe.registry import get_scorer

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--ocr-model", default="ocr-reader")
    parser.add_argument("--scorers", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--route", default="auto", choices=["auto", "cache", "recompute"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", default=str(Path(__file__).with_name("precision.json")))
    args = parser.parse_args()
    models: dict[tuple[str, str], Any] = {}

    def model_for(name: str, dtype: str) -> Any:
        if (name, dtype) not in models:
            model = load_model(name, dtype=dtype)[0]
            if getattr(model, "headprobe_processor", None) is None:  # warm-up forward
                with torch.inference_mode():
                    model(model.to_tokens("Warm up the kernels once."))
            models[(name, dtype)] = model
        return models[(name, dtype)]

    route = args.route
    if route == "auto" and any(s in DECODE_SCORERS for s in args.scorers):
        route = "cache" if cache_route_works(model_for(args.model, "float32")) else \
            "recompute"
        if route == "recompute":
            print("KV-cached generation fails in this environment: retrieval and ocr run on "
                  "the recomputing route (use_cache=False)", flush=True)

    def route_for(name: str) -> contextlib.AbstractContextManager[None]:
        if name in DECODE_SCORERS and route == "recompute":
            return recompute_route()
        return contextlib.nullcontext()

    record: dict[str, Any] = {"machine": machine(), "route_decode_scorers": route,
                              "batch_size": args.batch_size, "scorers": {}}
    for name in args.scorers:
        config = CONFIGS[name]
        model_name = getattr(args, config["model"])
        tables, seconds = {}, {}
        for dtype in ("float32", "bfloat16"):
            model = model_for(model_name, dtype)
            started = time.perf_counter()
            with route_for(name):
                tables[dtype] = get_scorer(name)(model, n=config["n"], progress=False,
                                                 batch_size=args.batch_size,
                                                 **config["params"])
            seconds[dtype] = round(time.perf_counter() - started, 2)
        a, b = tables["float32"], tables["bfloat16"]
        entry: dict[str, Any] = {
            "model": model_name, "n": a.meta.get("n_prompts"), "params": {
                k: list(v) if isinstance(v, tuple) else v for k, v in config["params"].items()},
            "heads": len(a.data), "fp32_s": seconds["float32"], "bf16_s": seconds["bfloat16"],
            "dtypes": [a.meta["dtype"], b.meta["dtype"]],
            "columns": {c: compare(a.pivot(c).to_numpy(), b.pivot(c).to_numpy(),
                                   signed=c in config["signed"]) for c in config["columns"]}}
        out_a, out_b = outputs(a), outputs(b)
        if out_a is not None:
            entry["same_outputs"] = sum(x == y for x, y in zip(out_a, out_b, strict=True))
            entry["n_outputs"] = len(out_a)
        for key in ("n_counted", "reading_accuracy", "n_temporal_circuits", "engine"):
            if key in a.meta:
                entry[key] = [a.meta[key], b.meta.get(key)]
        if name == "retrieval":
            with route_for(name):
                entry["matched_trials"] = matched_retrieval(
                    {d: model_for(model_name, d) for d in ("float32", "bfloat16")},
                    config["n"], config["params"], args.batch_size)
        record["scorers"][name] = entry
        score = entry["columns"]["score"]
        print(f"{name:10s} {model_name:22s} fp32 {seconds['float32']:7.2f}s bf16 "
              f"{seconds['bfloat16']:7.2f}s  score max|d| {score['max_abs_diff']:.3g} mean|d| "
              f"{score['mean_abs_diff']:.3g} rho {score['spearman']:.4f} top10 "
              f"{score['top10_overlap']:.1f} same top {score['same_top_head']}", flush=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print()
    print(f"{'scorer':10s} {'column':20s} {'max|d|':>9s} {'mean|d|':>9s} {'spearman':>9s} "
          f"{'rho top50':>9s} {'top10':>6s} {'top':>5s} {'fp32 range':>20s}")
    for name, entry in record["scorers"].items():
        for column, c in entry["columns"].items():
            print(f"{name:10s} {column:20s} {c['max_abs_diff']:9.3g} {c['mean_abs_diff']:9.3g} "
                  f"{c['spearman']:9.4f} {c['spearman_top50']:9.4f} {c['top10_overlap']:6.1f} "
                  f"{c['same_top_head']!s:>5s} "
                  f"[{c['fp32_min']:.3g}, {c['fp32_max']:.3g}]")


if __name__ == "__main__":
    main()
