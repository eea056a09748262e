"""Activation patching of every head's output ``z`` (all positions), as a registered scorer.

Score (Meng et al. 2022, "Locating and Editing Factual Associations in GPT"; Wang et al. 2022,
"Interpretability in the Wild"; Heimersheim & Nanda 2024, "How to use and interpret activation
patching"): ``denoising`` runs each corrupt prompt with head ``h``'s ``z`` taken from its clean
prompt; ``noising`` the other way round. With ``normalized_logit_diff`` the score is
``(mean LD(patched) - mean LD_corrupt) / (mean LD_clean - mean LD_corrupt)`` (1 = clean
behaviour); with ``logit_diff`` the mean change of ``LD = logit[answer] - logit[distractor]``.
Runs :func:`headprobe.fastscan.scan_heads` (prefix reuse) where the layer runner supports the
architecture, else the reference loop (``engine="auto"``). Sharded over Ray workers by
:func:`headprobe.distributed.ray_scorer` (``headprobe scan activation_patching --ray``), which
runs this module's :func:`scan_options` through ``ray_scan``; the scorer itself knows no Ray.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from headprobe.arch import ModelSpec
from headprobe.fastscan import loop_scan, scan_heads
from headprobe.headtable import HeadTable
from headprobe.options import ScanOptions
from headprobe.scorers.base import Scorer, ScorerData, ScoreResult
from headprobe.scorers.params import Params, param
from headprobe.scorers.task_scan import (
    ENGINE_HELP,
    TASK_HELP,
    Engine,
    prepare_task_scan,
    scan_meta,
    task_prompts,
)
from headprobe.types import Direction, ScanMetric


@dataclass(frozen=True)
class ActivationPatchingParams(Params):
    """Parameters of :data:`SCORER` (``activation_patching``)."""

    task: str = param("ioi", TASK_HELP + "; its items need corrupt prompts and distractors")
    metric: ScanMetric = param("normalized_logit_diff", "'normalized_logit_diff' (1 = clean "
                           "behaviour) or 'logit_diff' (mean change)")
    direction: Direction = param("denoising", "'denoising' (clean z into the corrupt run) or "
                                 "'noising' (the reverse)")
    layers: tuple[int, ...] | None = param(None, "layers to scan (None: all); other layers are "
                                           "NaN", ge=0)
    engine: Engine = param("auto", ENGINE_HELP)
    heads_per_pass: int | None = param(None, "heads patched in one batched pass of the fast "
                                       "scan (None: all)", ge=1)


def scan_options(params: Mapping[str, Any], batch_size: int, progress: bool) -> ScanOptions:
    """The :class:`~headprobe.options.ScanOptions` of an ``activation_patching`` run."""
    return ScanOptions(method="patch", metric=params["metric"], direction=params["direction"],
                       layers=params["layers"], batch_size=batch_size,
                       heads_per_pass=params["heads_per_pass"], progress=progress)


def use_fast(spec: ModelSpec, engine: str) -> bool:
    """Whether ``engine`` (``auto`` / ``fast`` / ``loop``) runs the fast scan on ``spec``."""
    return engine == "fast" or (engine == "auto" and bool(spec.facts.layer_runner))


def run_scan(model: Any, task: Any, spec: ModelSpec, options: ScanOptions,
             engine: str) -> HeadTable:
    """The fast scan (or the loop, by ``engine``) of ``task`` with ``options``."""
    if use_fast(spec, engine):
        return scan_heads(model, task, **options.kwargs())
    return loop_scan(model, task, **options.loop_kwargs())


def scan_result(table: HeadTable) -> ScoreResult:
    """A scan's table as a scorer result (score, ``std``, ``mean_ld``; its metadata kept,
    ``distributed`` included)."""
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
             batch_size: int, progress: bool) -> ScoreResult:
    table = run_scan(model, data.payload, spec, scan_options(params, batch_size, progress),
                     params["engine"])
    return scan_result(table)


SCORER = Scorer(
    name="activation_patching",
    description="patch each head's z (all positions) between clean and corrupt prompts",
    reference="Meng et al. 2022 (ROME); Wang et al. 2022 (IOI); Heimersheim & Nanda 2024, "
              "How to use and interpret activation patching",
    prepare=_prepare,
    compute=_compute,
    prompts=task_prompts(need_corrupt=True),
    params=ActivationPatchingParams,
    default_n=8,
    cheap=False,
    needs=frozenset({"pairs"}),
)
