"""Attribution patching: node and edge scores from gradients instead of one run per patch.

Attribution patching (Nanda 2023, "Attribution Patching: Activation Patching At Industrial
Scale"; Syed, Rager & Conmy 2023, "Attribution Patching Outperforms Automated Circuit
Discovery") replaces the effect of patching activation ``a`` from the corrupt into the clean
run by its first-order estimate::

    M(clean with a <- a_corrupt) - M(clean)  ~  (a_corrupt - a_clean) . dM/da |clean

with M the logit difference ``logit[answer] - logit[distractor]`` at each prompt's last token.
Edges ``u -> v`` are scored as ``(a_u_corrupt - a_u_clean) . dM/dx_v`` (EAP, Syed et al.).
:func:`attribution_patching` computes node (z, q, k, v, mlp) and edge scores with one of four
estimators (``method``):

- ``eap`` / ``eap-ig``: the gradient at the clean run, or averaged over points between the
  corrupt and the clean input embeddings (EAP-IG-inputs, Hanna, Pezzelle & Belinkov 2024, "Have
  Faith in Faithfulness"): :mod:`headprobe.attribution.inputs_ig`, which also explains why
  input-IG disagrees with exact per-head noising.
- ``eap-ig-act`` / ``eap-ig-act-head``: integrated gradients over each upstream site's own
  activations, everything else clean (EAP-IG-activations): tends to exact noising patching;
  :mod:`headprobe.attribution.activation_ig`.

Modules: :mod:`~headprobe.attribution.common` (the residual decomposition into upstream writes
and downstream inputs, gradient mode, names, :class:`AttributionResult`),
:mod:`~headprobe.attribution.engine` (:func:`attribution_patching`),
:mod:`~headprobe.attribution.inputs_ig`, :mod:`~headprobe.attribution.activation_ig`, and
:mod:`~headprobe.attribution.comparison` (:func:`compare_to_exact`, :func:`agreement`,
:class:`Agreement`: Pearson, Spearman and top-k agreement with exact noising patching,
:func:`headprobe.fastscan.scan_heads`).
"""

from headprobe.attribution.activation_ig import ACT_ROWS_PER_PASS
from headprobe.attribution.common import (
    MAX_IG_STEPS,
    METHODS,
    MIN_IG_STEPS,
    REFERENCE,
    AttributionResult,
)
from headprobe.attribution.comparison import Agreement, agreement, compare_to_exact
from headprobe.attribution.engine import attribution_patching

__all__ = [
    "ACT_ROWS_PER_PASS",
    "MAX_IG_STEPS",
    "METHODS",
    "MIN_IG_STEPS",
    "REFERENCE",
    "Agreement",
    "AttributionResult",
    "agreement",
    "attribution_patching",
    "compare_to_exact",
]
