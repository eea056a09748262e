"""Zero or mean ablation of every head's output ``z`` (all positions), as a registered scorer.

Score (mean ablation: Wang et al. 2022, "Interpretability in the Wild"; zero ablation: Olsson
et al. 2022, "In-context Learning and Induction Heads"): the clean run with head ``h``'s ``z``
set to 0 (``zero``) or to its mean over every real token of every prompt (``mean``); with
``logit_diff`` the score is the mean change of ``LD = logit[answer] - logit[distractor]``
(negative: the head supports the answer), with ``normalized_logit_diff`` ``mean LD(ablated) /
mean LD_clean``. Runs :func:`headprobe.fastscan.scan_heads` where supported, else the loop;
sharded over Ray workers by :func:`headprobe.distributed.ray_scorer` (``headprobe scan
ablation_scan --ray``) through this module's :func:`scan_options`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from headprobe.arch import ModelSpec
from headprobe.options import ScanOptions
from headprobe.scorers.activation_patching import run_scan, scan_result
from headprobe.scorers.base import Scorer, ScorerData, ScoreResult
from headprobe.scorers.params import Params, param
from headprobe.scorers.task_scan import (
    ENGINE_HELP,
    TASK_HELP,
    Engine,
    prepare_task_scan,
    task_prompts,
)
from headprobe.types import ScanMetric


@dataclass(frozen=True)
class AblationScanParams(Params):
    """Parameters of :data:`SCORER` (``ablation_scan``)."""

    task: str = param("ioi", TASK_HELP + "; its items need distractors")
    method: Literal["mean", "zero"] = param("mean", "'mean' (z set to its mean over the task's "
                                            "tokens) or 'zero'")
    metric: ScanMetric = param("logit_diff", "'logit_diff' (mean change) or "
                           "'normalized_logit_diff' (LD / LD_clean)")
    layers: tuple[int, ...] | None = param(None, "layers to scan (None: all); other layers are "
                                           "NaN", ge=0)
    engine: Engine = param("auto", ENGINE_HELP)
    heads_per_pass: int | None = param(None, "heads ablated in one batched pass of the fast "
                                       "scan (None: all)", ge=1)


def scan_options(params: Mapping[str, Any], batch_size: int, progress: bool) -> ScanOptions:
    """The :class:`~headprobe.options.ScanOptions` of an ``ablation_scan`` run."""
    return ScanOptions(method=params["method"], metric=params["metric"], direction="denoising",
                       layers=params["layers"], batch_size=batch_size,
                       heads_per_pass=params["heads_per_pass"], progress=progress)


def _prepare(model: Any, spec: ModelSpec, prompts: Any, n: int, seed: int,
             params: dict[str, Any]) -> ScorerData:
    return prepare_task_scan(model, spec, prompts, n, seed, params, need_corrupt=False)


def _compute(model: Any, spec: ModelSpec, data: ScorerData, params: dict[str, Any],
             batch_size: int, progress: bool) -> ScoreResult:
    table = run_scan(model, data.payload, spec, scan_options(params, batch_size, progress),
                     params["engine"])
    return scan_result(table)


SCORER = Scorer(
    name="ablation_scan",
    description="zero or mean ablation of each head's z (all positions) on a task",
    reference="Wang et al. 2022, Interpretability in the Wild (mean ablation); Olsson et al. "
              "2022, In-context Learning and Induction Heads (zero ablation)",
    prepare=_prepare,
    compute=_compute,
    prompts=task_prompts(need_corrupt=False),
    params=AblationScanParams,
    default_n=8,
    cheap=False,
)
