"""Interventions on a set of attention heads: ablations and steering, as removable hooks.

Every method exists in two forms:

- a *factory* ``method(model, heads, **options) -> list[(hook_name, hook_fn)]`` that only
  builds TransformerLens forward hooks (nothing is attached);
- the context manager :func:`intervene` ``(model, heads, method, **options)`` which attaches
  those hooks through :func:`headprobe.runtime.stream.attached` (``model.hooks``), so they are
  removed when the block ends, also when it raises.

``heads`` is a sequence of ``(layer, head)`` pairs over any layers; ``head`` is a *query*
head index (0..H-1). Each pair is checked with :meth:`ModelSpec.check_head`
(:class:`~headprobe.errors.HeadIndexError`); an empty list raises
:class:`~headprobe.errors.InterventionError`. Hooks never modify the tensor they receive:
they return a new tensor in which only the targeted heads differ.

Where each method acts (bridge shapes, ``B`` batch, ``T`` tokens, ``H`` query heads):

============================  ==========================================  =================
method                        definition                                  hook
============================  ==========================================  =================
``zero``                      ``z_h <- 0``                                ``hook_z`` [B,T,H,d]
``mean``                      ``z_h <- mean of z_h over reference set``   ``hook_z``
``resample``                  ``z_h <- z_h of a source prompt, same t``   ``hook_z``
``scale_output``              ``z_h <- factor * z_h``                     ``hook_z``
``scale_value``               ``V_h <- alpha * V_h`` (= ``alpha * z_h``)  ``hook_z``
``add_to_output``             ``z_h <- z_h + c * u``                      ``hook_z``
``uniform_attention``         ``q_h <- eps * q_h`` after any q norm       ``hook_rot_q`` /
                                                                          ``hook_q``
``set_pattern``               ``A_h <- P`` (masked, renormalised)         ``hook_pattern``
``redistribute_sink``         sink mass ``beta * a_0``, rest spread       ``hook_pattern``
``streaming_attention``       kv heads see sink + recent window only      ``hook_pattern``
============================  ==========================================  =================

``z_h`` is head ``h``'s output before the output projection, ``z_h = A_h V_{kv(h)}``
([B, T, d_head]); its contribution to the residual stream is ``z_h W_O^h``.

Positions: every hook addresses *absolute* positions (the token position within each
prompt, BOS = 0), never columns: ``mean`` takes the mean at the same absolute position,
``resample`` the source's ``z`` at the same absolute position, ``add_to_output(positions=)``
and ``set_pattern`` index absolute positions. headprobe's runners publish the positions of
each forward's columns (:mod:`headprobe.runtime.positions`); without them (a direct
``model(tokens)``) column ``t`` is position ``t``. So every method gives the same result on
left- and right-padded batches, and the same continuation with and without the KV cache
(:func:`headprobe.runtime.decode.generate`). Which keys are visible (causal mask, attention
mask, sliding window) is read from the masked pre-softmax scores of the same forward pass.

Modules: :mod:`~headprobe.interventions.heads` (head lists, the ``z`` hook builder),
:mod:`~headprobe.interventions.output` (zero, scale, add), :mod:`~headprobe.interventions.means`
(mean, resample and their caches), :mod:`~headprobe.interventions.query` (uniform attention),
:mod:`~headprobe.interventions.window` (streaming attention on kv heads: its ``heads`` are
``(layer, kv head)`` pairs),
:mod:`~headprobe.interventions.pattern` (set pattern, sink redistribution),
:mod:`~headprobe.interventions.registry` (:data:`METHODS`, :func:`intervene`).

References:
    Zhou et al. 2025, "On the Role of Attention Heads in Large Language Model Safety"
    (undifferentiated attention and scaled contribution, Ships).
    Yu et al. 2023, "Characterizing Mechanisms for Factual Recall in Language Models"
    (scaling a head's value vectors).
    Baek et al. 2025, "How Do Large Vision-Language Models See Text in Image? Unveiling the
    Distinctive Role of OCR Heads" (redistributing the sink token's attention).
    Xiao et al. 2024, "DuoAttention: Efficient Long-Context LLM Inference with Retrieval and
    Streaming Heads" (streaming heads: sink + recent window).
"""

from headprobe.interventions.heads import (
    Factory,
    HookFn,
    HookList,
    heads_by_layer,
    normalize_heads,
)
from headprobe.interventions.means import (
    HeadMean,
    ResampleSource,
    cache_resample_source,
    compute_head_means,
    mean_ablation,
    resample_ablation,
)
from headprobe.interventions.output import (
    add_to_output,
    head_output_matrix,
    scale_output,
    scale_value,
    zero_ablation,
)
from headprobe.interventions.pattern import redistribute_sink, set_pattern
from headprobe.interventions.query import query_hook_point, uniform_attention
from headprobe.interventions.registry import (
    ABLATION_METHODS,
    METHODS,
    InterventionMethod,
    build_hooks,
    experiment_methods,
    get_method,
    intervene,
    intervene_many,
)
from headprobe.interventions.window import streaming_attention
from headprobe.types import DEFAULT_EPS, Head

__all__ = [
    "ABLATION_METHODS",
    "DEFAULT_EPS",
    "METHODS",
    "Factory",
    "Head",
    "HeadMean",
    "HookFn",
    "HookList",
    "InterventionMethod",
    "ResampleSource",
    "add_to_output",
    "build_hooks",
    "cache_resample_source",
    "compute_head_means",
    "experiment_methods",
    "get_method",
    "head_output_matrix",
    "heads_by_layer",
    "intervene",
    "intervene_many",
    "mean_ablation",
    "normalize_heads",
    "query_hook_point",
    "redistribute_sink",
    "resample_ablation",
    "scale_output",
    "scale_value",
    "set_pattern",
    "streaming_attention",
    "uniform_attention",
    "zero_ablation",
]
