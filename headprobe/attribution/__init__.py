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

# Private helpers are re-exported (``_x as _x``) so that they stay importable from here as
# before the split (the tests use some of them).
from headprobe.attribution.activation_ig import ACT_ROWS_PER_PASS
from headprobe.attribution.activation_ig import _activation_ig_batch as _activation_ig_batch
from headprobe.attribution.activation_ig import _down_slices as _down_slices
from headprobe.attribution.activation_ig import _shared_prefix as _shared_prefix
from headprobe.attribution.activation_ig import _site_pass as _site_pass
from headprobe.attribution.activation_ig import _sites as _sites
from headprobe.attribution.common import (
    MAX_IG_STEPS,
    METHODS,
    MIN_IG_STEPS,
    REFERENCE,
    AttributionResult,
)
from headprobe.attribution.common import _check_method as _check_method
from headprobe.attribution.common import _collect_upstream as _collect_upstream
from headprobe.attribution.common import _downstream_grads as _downstream_grads
from headprobe.attribution.common import _edge_frame as _edge_frame
from headprobe.attribution.common import _gradient_mode as _gradient_mode
from headprobe.attribution.common import _Grads as _Grads
from headprobe.attribution.common import _head_writes as _head_writes
from headprobe.attribution.common import _names as _names
from headprobe.attribution.common import _post_norm as _post_norm
from headprobe.attribution.common import _Scores as _Scores
from headprobe.attribution.common import _Upstream as _Upstream
from headprobe.attribution.comparison import Agreement, agreement, compare_to_exact
from headprobe.attribution.engine import _attribute as _attribute
from headprobe.attribution.engine import attribution_patching
from headprobe.attribution.inputs_ig import _GRAD_HOOKS as _GRAD_HOOKS
from headprobe.attribution.inputs_ig import _input_ig_batch as _input_ig_batch
from headprobe.attribution.inputs_ig import _integrated_grads as _integrated_grads

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
