"""Zero or mean ablation of every head's output ``z`` (all positions), as a registered scorer.

Score (mean ablation: Wang et al. 2022, "Interpretability in the Wild"; zero ablation: Olsson
et al. 2022, "In-context Learning and Induction Heads"): the clean run with head ``h``'s ``z``
set to 0 (``zero``) or to its mean over every real token of every prompt (``mean``); with
``logit_diff`` the score is the mean change of ``LD = logit[answer] - logit[distractor]``
(negative: the head supports the answer), with ``normalized_logit_diff`` ``mean LD(ablated) /
mean LD_clean``. Runs :func:`headprobe.fastscan.scan_heads` where supported, else the loop;
sharded over Ray workers through :func:`headprobe.distributed.ray_scorer` (``headprobe scan
ablation_scan --ray``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from headprobe.arch import ModelSpec
from headprobe.scorers.activation_patching import run_scan
from headprobe.scorers.base import Scorer, ScorerData, ScoreResult, ScorerParamError
from headprobe.scorers.task_scan import TASK_HELP, prepare_task_scan


def _prepare(model: Any, spec: ModelSpec, prompts: Any, n: int, seed: int,
             params: dict[str, Any]) -> ScorerData:
    return prepare_task_scan(model, spec, prompts, n, seed, params, need_corrupt=False)


def _compute(model: Any, spec: ModelSpec, data: ScorerData, params: dict[str, Any],
             batch_size: int, progress: bool, *,
             distributed: Mapping[str, Any] | None = None) -> ScoreResult:
    if params["method"] not in ("zero", "mean"):
        raise ScorerParamError(f"ablation_scan method must be 'zero' or 'mean', got "
                             f"{params['method']!r}")
    return run_scan(model, spec, data, params, batch_size, progress, method=params["method"],
                    direction="denoising", distributed=distributed)


SCORER = Scorer(
    name="ablation_scan",
    description="zero or mean ablation of each head's z (all positions) on a task",
    reference="Wang et al. 2022, Interpretability in the Wild (mean ablation); Olsson et al. "
              "2022, In-context Learning and Induction Heads (zero ablation)",
    prepare=_prepare,
    compute=_compute,
    defaults={"task": "ioi", "method": "mean", "metric": "logit_diff", "layers": None,
              "engine": "auto", "heads_per_pass": None},
    param_help={
        "task": TASK_HELP + "; its items need distractors",
        "method": "'mean' (z set to its mean over the task's tokens) or 'zero'",
        "metric": "'logit_diff' (mean change) or 'normalized_logit_diff' (LD / LD_clean)",
        "layers": "layers to scan (None: all); other layers are NaN",
        "engine": "'auto' (fast scan where supported), 'fast' or 'loop' (one pass per head)",
        "heads_per_pass": "heads ablated in one batched pass of the fast scan (None: all)",
    },
    default_n=8,
    cheap=False,
)
