"""Run the attention of a bridged model with PyTorch's fused ``scaled_dot_product_attention``
while nobody listens to its inside.

TransformerLens's bridge re-implements each attention in eager form so that
``hook_attn_scores``, ``hook_pattern``, ``hook_rot_q`` ... fire; that costs a [B, H, S, T]
score tensor per layer. When no hook is attached to any of those points (the projections
``hook_q`` / ``hook_k`` / ``hook_v`` / ``hook_z`` still fire: they live in the projection
modules), the same layer can run its original Hugging Face attention with ``sdpa``: same
weights, same q/k norms, rotary, cache update and masks (the 4-D masks headprobe builds from
absolute positions), only the fused kernel instead of an explicit softmax. The KV-cached
decode uses it for the prompt columns it prefills in chunks
(:func:`headprobe.runtime.decode.generate` ``prefill_chunk``), where nothing observes the
attention weights; at 4k tokens this makes the prefill about twice as fast and never holds
a [B, H, chunk, T] score tensor (``bench/bench_retrieval.py``).

Why by hand: neither TransformerLens nor Hugging Face offers switching a bridged model's
attention kernel for part of a run. :func:`sdpa_attention` swaps each decoder layer's
bridge attention for its HF original (with a per-module copy of the config saying
``sdpa``) and puts everything back on exit, also on error; the shared model config is not
touched.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from headprobe.arch import ModelSpec
from headprobe.weights import hf_module

__all__ = ["attention_hooks_idle", "fused_attention", "idle_attention_layers", "sdpa_attention",
           "sdpa_supported"]

# children of the bridge attention whose hooks still fire when the HF attention runs (its
# q_proj / k_proj / v_proj / o_proj are these bridge components)
_PROJECTIONS = ("q", "k", "v", "o")


def sdpa_supported(spec: ModelSpec) -> bool:
    """Whether :func:`sdpa_attention` applies: a layer-runner architecture (llama family,
    Gemma 3) without an attention-logit soft-cap (``sdpa`` has none)."""
    return spec.facts.layer_runner and spec.causal and spec.attn_logit_softcap is None


def _layers(model: Any, spec: ModelSpec) -> Iterator[tuple[Any, Any]]:
    """(HF decoder layer, the bridge attention it holds) per layer."""
    facts = spec.facts
    for layer in range(spec.n_layers):
        decoder_layer = hf_module(model, f"{facts.layers_path}.{layer}")
        yield decoder_layer, getattr(decoder_layer, facts.attention_module)


def _has_hooks(module: torch.nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks)


def _layer_idle(attention: Any) -> bool:
    """Whether no hook is attached inside one bridge attention except its projections."""
    original = getattr(attention, "_original_component", None)
    if original is None:  # not a bridge attention: nothing to swap
        return False
    projections = [getattr(attention, name, None) for name in _PROJECTIONS]
    inside = {id(m) for p in projections if p is not None for m in p.modules()}
    inside |= {id(m) for m in original.modules()}
    return not any(id(module) not in inside and _has_hooks(module)
                   for module in attention.modules())


def idle_attention_layers(model: Any, spec: ModelSpec) -> list[int]:
    """The layers whose attention has no hook attached except on its projections (those
    :func:`sdpa_attention` can swap without skipping a hook)."""
    return [layer for layer, (_, attention) in enumerate(_layers(model, spec))
            if _layer_idle(attention)]


def attention_hooks_idle(model: Any, spec: ModelSpec) -> bool:
    """Whether no hook is attached inside any layer's attention except its projections (the
    hooks :func:`sdpa_attention` would skip: ``hook_attn_scores``, ``hook_pattern``,
    ``hook_rot_q`` / ``hook_rot_k``, ``hook_q_input`` ..., the attention's ``hook_in`` /
    ``hook_out``)."""
    return len(idle_attention_layers(model, spec)) == spec.n_layers


@contextmanager
def sdpa_attention(model: Any, spec: ModelSpec,
                   layers: Sequence[int] | None = None) -> Iterator[None]:
    """Within the block, the given layers (default every layer) run their original HF
    attention with ``sdpa``.

    The caller must make sure the skipped hooks are idle (:func:`idle_attention_layers`) and
    the architecture is supported (:func:`sdpa_supported`); both are checked here too.

    Raises:
        ValueError: a hook is attached to an attention hook point that ``sdpa`` would skip,
            or the architecture is not supported.
    """
    if not sdpa_supported(spec):
        raise ValueError(f"{spec.name}: sdpa attention needs a layer-runner architecture "
                         "without attention soft-capping")
    chosen = set(range(spec.n_layers) if layers is None else layers)
    if not chosen <= set(idle_attention_layers(model, spec)):
        raise ValueError("a hook is attached inside an attention (pattern, scores, rotary "
                         "q/k...); sdpa would skip it: run the eager bridge attention")
    swapped: list[tuple[Any, Any, Any, Any]] = []
    name = spec.facts.attention_module
    try:
        for layer, (decoder_layer, attention) in enumerate(_layers(model, spec)):
            if layer not in chosen:
                continue
            original = attention._original_component
            config = original.config
            fused = copy.copy(config)
            fused._attn_implementation = "sdpa"
            swapped.append((decoder_layer, attention, original, config))
            original.config = fused
            setattr(decoder_layer, name, original)
        yield
    finally:
        for decoder_layer, attention, original, config in reversed(swapped):
            original.config = config
            setattr(decoder_layer, name, attention)


@contextmanager
def fused_attention(model: Any, spec: ModelSpec, enabled: bool = True) -> Iterator[list[int]]:
    """Run every layer whose attention nobody listens to inside with ``sdpa``, the others
    eagerly; yields the fused layers (``[]`` when ``enabled`` is false or the architecture
    is not supported).

    Attach the run's hooks before entering: a hook on ``hook_z`` or the projections (head
    output patching and ablation, steering the residual) leaves a layer fused; one on the
    pattern, the scores or the rotated queries (pattern edits, Gemma 3's post-norm query
    scaling, attention observers) keeps that layer eager. The numbers equal the eager run's
    to float round-off."""
    layers = (idle_attention_layers(model, spec) if enabled and sdpa_supported(spec)
              else [])
    if not layers:
        yield []
        return
    with sdpa_attention(model, spec, layers):
        yield layers
