"""Activation patching of every head's output ``z`` (all positions), as a registered scorer.

Score (Meng et al. 2022, "Locating and Editing Factual Associations in GPT"; Wang et al. 2022,
"Interpretability in the Wild"; Heimersheim & Nanda 2024, "How to use and interpret activation
patching"): ``denoising`` runs each corrupt prompt with head ``h``'s ``z`` taken from its clean
prompt; ``noising`` the other way round. With ``normalized_logit_diff`` the score is
``(mean LD(patched) - mean LD_corrupt) / (mean LD_clean - mean LD_corrupt)`` (1 = clean
behaviour); with ``logit_diff`` the mean change of ``LD = logit[answer] - logit[distractor]``.
Runs :func:`headprobe.fastscan.scan_heads` (prefix reuse) where the layer runner supports the
architecture, else the reference loop (``engine="auto"``). Sharded over Ray workers through
:func:`headprobe.distributed.ray_scorer` (``headprobe scan activation_patching --ray``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from headprobe.arch import ModelSpec
from headprobe.fastscan import loop_scan, scan_heads
from headprobe.headtable import HeadTable
from headprobe.scorers.base import Scorer, ScorerData, ScoreResult, ScorerParamError
from headprobe.scorers.task_scan import TASK_HELP, prepare_task_scan, scan_meta
from headprobe.types import normalize_direction


def run_scan(model: Any, spec: ModelSpec, data: ScorerData, params: dict[str, Any],
             batch_size: int, progress: bool, *, method: str, direction: str,
             distributed: Mapping[str, Any] | None = None) -> ScoreResult:
    """Run the fast scan (or the loop) on the task in ``data`` and wrap its table.

    ``distributed``: keywords of :func:`headprobe.distributed.ray_scan` (``model_name``,
    ``address``, ``num_workers``, ...): the same scan sharded over Ray workers, its
    ``meta["distributed"]`` kept.
    """
    engine = params["engine"]
    if engine not in ("auto", "fast", "loop"):
        raise ScorerParamError(f"engine must be 'auto', 'fast' or 'loop', got {engine!r}")
    fast = engine == "fast" or (engine == "auto" and spec.facts.layer_runner)
    kwargs: dict[str, Any] = {"method": method, "metric": params["metric"],
                              "direction": direction, "layers": params["layers"],
                              "batch_size": batch_size, "progress": progress}
    table: HeadTable
    if distributed is not None:
        from headprobe.distributed import ray_scan

        table = ray_scan(task=data.payload, heads_per_pass=params["heads_per_pass"],
                         fast=bool(fast), **kwargs, **dict(distributed))
    elif fast:
        table = scan_heads(model, data.payload, heads_per_pass=params["heads_per_pass"],
                           **kwargs)
    else:
        table = loop_scan(model, data.payload, **kwargs)
    meta = scan_meta(table.meta)
    if "distributed" in table.meta:
        meta["distributed"] = table.meta["distributed"]
    return ScoreResult(score=table.pivot().to_numpy(),
                       columns={"std": table.pivot("std").to_numpy(),
                                "mean_ld": table.pivot("mean_ld").to_numpy()},
                       meta=meta)


def _prepare(model: Any, spec: ModelSpec, prompts: Any, n: int, seed: int,
             params: dict[str, Any]) -> ScorerData:
    return prepare_task_scan(model, spec, prompts, n, seed, params, need_corrupt=True)


def _compute(model: Any, spec: ModelSpec, data: ScorerData, params: dict[str, Any],
             batch_size: int, progress: bool, *,
             distributed: Mapping[str, Any] | None = None) -> ScoreResult:
    try:
        direction = normalize_direction(params["direction"])
    except ValueError as error:
        raise ScorerParamError(str(error)) from error
    return run_scan(model, spec, data, params, batch_size, progress, method="patch",
                    direction=direction, distributed=distributed)


SCORER = Scorer(
    name="activation_patching",
    description="patch each head's z (all positions) between clean and corrupt prompts",
    reference="Meng et al. 2022 (ROME); Wang et al. 2022 (IOI); Heimersheim & Nanda 2024, "
              "How to use and interpret activation patching",
    prepare=_prepare,
    compute=_compute,
    defaults={"task": "ioi", "metric": "normalized_logit_diff", "direction": "denoising",
              "layers": None, "engine": "auto", "heads_per_pass": None},
    param_help={
        "task": TASK_HELP + "; its items need corrupt prompts and distractors",
        "metric": "'normalized_logit_diff' (1 = clean behaviour) or 'logit_diff' (mean change)",
        "direction": "'denoising' (clean z into the corrupt run) or 'noising' (the reverse)",
        "layers": "layers to scan (None: all); other layers are NaN",
        "engine": "'auto' (fast scan where supported), 'fast' or 'loop' (one pass per head)",
        "heads_per_pass": "heads patched in one batched pass of the fast scan (None: all)",
    },
    default_n=8,
    cheap=False,
    needs=frozenset({"pairs"}),
)
