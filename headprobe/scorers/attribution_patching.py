"""Attribution patching (EAP / EAP-IG) node scores of every head's ``z``, as a registered scorer.

Score (Nanda 2023, "Attribution Patching: Activation Patching At Industrial Scale"; Syed, Rager
& Conmy 2023, "Attribution Patching Outperforms Automated Circuit Discovery"; Hanna, Pezzelle &
Belinkov 2024, "Have Faith in Faithfulness"): the first-order estimate of noising head ``h``'s
``z`` (corrupt into clean),

    score_h = sum_positions (z_corrupt - z_clean) . mean_k dLD/dz |_(e_k),
    e_k = e_corrupt + (k/m) (e_clean - e_corrupt),

averaged over prompts, in logit-difference units (``m = steps`` for ``eap-ig``, one gradient at
the clean run for ``eap``). Column ``q``: the same for each head's query input. See
:func:`headprobe.attribution.attribution_patching`.
"""

from __future__ import annotations

from typing import Any

from headprobe.arch import ModelSpec
from headprobe.attribution import attribution_patching
from headprobe.scorers.base import Scorer, ScorerData, ScoreResult
from headprobe.scorers.task_scan import TASK_HELP, prepare_task_scan, scan_meta


def _prepare(model: Any, spec: ModelSpec, prompts: Any, n: int, seed: int,
             params: dict[str, Any]) -> ScorerData:
    return prepare_task_scan(model, spec, prompts, n, seed, params, need_corrupt=True)


def _compute(model: Any, spec: ModelSpec, data: ScorerData, params: dict[str, Any],
             batch_size: int, progress: bool) -> ScoreResult:
    result = attribution_patching(model, data.payload, method=params["method"],
                                  steps=params["steps"], edges=False, batch_size=batch_size,
                                  progress=progress)
    return ScoreResult(score=result.nodes["z"].pivot().to_numpy(),
                       columns={"q": result.nodes["q"].pivot().to_numpy()},
                       meta={**scan_meta(result.meta),
                             "mlp_scores": [float(v) for v in result.mlp["score"]]})


SCORER = Scorer(
    name="attribution_patching",
    description="EAP / EAP-IG estimate of noising each head's z (logit-difference units)",
    reference="Nanda 2023, Attribution Patching; Syed et al. 2023; Hanna et al. 2024, Have "
              "Faith in Faithfulness (EAP-IG)",
    prepare=_prepare,
    compute=_compute,
    defaults={"task": "ioi", "method": "eap-ig", "steps": 5},
    param_help={
        "task": TASK_HELP + "; its items need corrupt prompts and distractors",
        "method": "'eap' (gradient at the clean run) or 'eap-ig' (integrated gradients)",
        "steps": "integrated-gradient steps for eap-ig (5..100)",
    },
    default_n=8,
    cheap=False,
    needs=frozenset({"pairs"}),
)
