"""Activation patching and path patching: one engine, small setters.

Activation patching (Meng et al. 2022, "Locating and Editing Factual Associations in GPT";
Heimersheim & Nanda 2024, "How to use and interpret activation patching") runs a *target*
input while overwriting one activation with its value from a *source* input, and measures a
metric on the final-position logits. Two directions (:data:`headprobe.types.Direction`):

- ``denoising`` (default): target = corrupt prompt, source = clean prompt. A head whose clean
  output restores the clean behaviour is *sufficient* (with the rest of the corrupt run);
  normalised logit difference 0 = corrupt behaviour, 1 = clean behaviour.
- ``noising``: target = clean prompt, source = corrupt prompt. A head whose corrupt output
  destroys the clean behaviour is *necessary*; normalised 1 = no effect, 0 = fully broken.

Path patching (Wang et al. 2022; Goldowsky-Dill et al. 2023) measures the effect of *sender*
heads only through chosen *receivers*; see :mod:`headprobe.patching.path`.

Modules:

- :mod:`~headprobe.patching.setters`: :class:`Setter` and its constructors, and
  :func:`run_with_setters` (one forward pass with setters applied, activations observed);
- :mod:`~headprobe.patching.engine`: :class:`PatchingEngine` (prompt pairs, answers, batching,
  cached sources, baselines, metrics: a name or a function, see
  :func:`headprobe.metrics.resolve_metric`);
- :mod:`~headprobe.patching.activation`: :func:`activation_patch_heads` (-> HeadTable) and
  :func:`activation_patch_heads_by_position` (-> DataFrame, :func:`position_grid`);
- :mod:`~headprobe.patching.path`: :func:`path_patch`, :func:`path_patch_values`,
  :func:`path_patch_senders`.
"""

from headprobe.metrics import METRICS, Metric, MetricName, aggregate_metric, per_prompt_metric
from headprobe.patching.activation import (
    activation_patch_heads,
    activation_patch_heads_by_position,
    position_grid,
    unpatched_value,
)
from headprobe.patching.engine import REFERENCES, PairBatch, PatchingEngine
from headprobe.patching.path import (
    PathPatchResult,
    Receiver,
    Receivers,
    path_patch,
    path_patch_senders,
    path_patch_values,
)
from headprobe.patching.setters import (
    Setter,
    attn_out,
    head_k,
    head_q,
    head_v,
    head_z,
    mlp_out,
    resid,
    run_with_setters,
)
from headprobe.tasks.pairs import check_pairs
from headprobe.types import Direction, Position, Which

__all__ = [
    "METRICS",
    "REFERENCES",
    "Direction",
    "Metric",
    "MetricName",
    "PairBatch",
    "PatchingEngine",
    "PathPatchResult",
    "Position",
    "Receiver",
    "Receivers",
    "Setter",
    "Which",
    "activation_patch_heads",
    "activation_patch_heads_by_position",
    "aggregate_metric",
    "attn_out",
    "check_pairs",
    "head_k",
    "head_q",
    "head_v",
    "head_z",
    "mlp_out",
    "path_patch",
    "path_patch_senders",
    "path_patch_values",
    "per_prompt_metric",
    "position_grid",
    "resid",
    "run_with_setters",
    "unpatched_value",
]
