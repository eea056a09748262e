"""Attribution patching (EAP / EAP-IG) node scores of every head's ``z``, as a registered scorer.

Score (Nanda 2023, "Attribution Patching: Activation Patching At Industrial Scale"; Syed, Rager
& Conmy 2023, "Attribution Patching Outperforms Automated Circuit Discovery"; Hanna, Pezzelle &
Belinkov 2024, "Have Faith in Faithfulness"): the first-order estimate of noising head ``h``'s
``z`` (corrupt into clean),

    score_h = sum_positions (z_corrupt - z_clean) . mean_k dLD/dz |_(e_k),
    e_k = e_corrupt + (k/m) (e_clean - e_corrupt),

averaged over prompts, in logit-difference units (``m = ig_steps`` for ``eap-ig``, one gradient at
the clean run for ``eap``). ``eap-ig-act`` integrates over the head's own layer instead of the
input embeddings (Hanna et al.'s EAP-IG-activations, one layer at a time)::

    score_h = sum_positions (z_corrupt - z_clean) . mean_k dLD/dz_h |_(z_l = z_l,k),
    z_l,k = z_l_corrupt + ((k - 1/2)/m) (z_l_clean - z_l_corrupt),

with every other layer's input clean and everything downstream recomputed; ``eap-ig-act-head``
moves one head's ``z_h`` at a time (the noising path itself). These agree with the exact scan
where input-space EAP-IG does not (``bench/RESULTS.md``). Column ``q``: the
same for each head's query input. See :func:`headprobe.attribution.attribution_patching`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from headprobe.arch import ModelSpec
from headprobe.attribution import attribution_patching
from headprobe.scorers.base import Scorer, ScorerData, ScoreResult
from headprobe.scorers.params import Params, param
from headprobe.scorers.task_scan import TASK_HELP, prepare_task_scan, scan_meta, task_prompts

AttributionMethod = Literal["eap", "eap-ig", "eap-ig-act", "eap-ig-act-head"]


@dataclass(frozen=True)
class AttributionPatchingParams(Params):
    """Parameters of :data:`SCORER` (``attribution_patching``)."""

    renamed: ClassVar[Mapping[str, str]] = {"steps": "ig_steps"}

    task: str = param("ioi", TASK_HELP + "; its items need corrupt prompts and distractors")
    method: AttributionMethod = param(
        "eap-ig", "'eap' (gradient at the clean run), 'eap-ig' (integrated gradients over the "
        "input embeddings), 'eap-ig-act' (over each layer's activations, 2L+1 passes per "
        "batch) or 'eap-ig-act-head' (over each head's own z; tends to exact noising patching)")
    ig_steps: int = param(5, "integrated-gradient steps: 5..100 for eap-ig, 1..100 for "
                          "eap-ig-act(-head)", ge=1, le=100)


def _prepare(model: Any, spec: ModelSpec, prompts: Any, n: int, seed: int,
             params: dict[str, Any]) -> ScorerData:
    return prepare_task_scan(model, spec, prompts, n, seed, params, need_corrupt=True)


def _compute(model: Any, spec: ModelSpec, data: ScorerData, params: dict[str, Any],
             batch_size: int, progress: bool) -> ScoreResult:
    result = attribution_patching(model, data.payload, method=params["method"],
                                  steps=params["ig_steps"], edges=False, batch_size=batch_size,
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
    prompts=task_prompts(need_corrupt=True),
    params=AttributionPatchingParams,
    default_n=8,
    cheap=False,
    needs=frozenset({"pairs"}),
)
