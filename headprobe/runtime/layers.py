"""The layer runner: resume a forward pass at layer ``k`` from a cached residual stream.

An intervention at layer ``k`` leaves layers ``0..k-1`` unchanged, so scans that intervene on
one layer at a time (:mod:`headprobe.fastscan`) cache the residual stream entering every layer
once and run only layers ``k..L-1`` through the Hugging Face decoder layers
(:func:`run_from_layer`). The bridge's ``forward`` has no ``start_at_layer`` (it delegates to
the HF model), hence this route. Positions that an intervention does not change can be
skipped too: their keys and values at every layer are recorded once (:func:`record_kv`) and
handed to the attention as a past cache (:class:`PrefixKV`).

Where the HF modules live (decoder, layers, final norm, rotary table, unembedding) and
whether the logits are soft-capped are architecture facts read from
:class:`~headprobe.arch.ArchitectureFacts`; the route is tested against the full forward pass
(exact to 1e-5) on tiny Llama, tiny Gemma 3, a sliding-window Gemma fixture and SmolLM2.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from headprobe.arch import ModelSpec
from headprobe.metrics import final_logits
from headprobe.models import describe_model
from headprobe.runtime.hooks import Hook, attached
from headprobe.runtime.positions import forward_positions
from headprobe.weights import hf_module

FALLBACK = (
    "use headprobe.fastscan.loop_scan (one full forward pass per head; same numbers, slower)"
)

@dataclass
class PrefixKV:
    """Keys and values of the first ``length`` positions at every layer, as attention uses them.

    Attributes:
        keys: ``{layer: [B, n_kv_heads, P, d_head]}`` keys after q/k norms and rotary.
        values: ``{layer: [B, n_kv_heads, P, d_head]}``.
    """

    keys: dict[int, torch.Tensor]
    values: dict[int, torch.Tensor]

    @property
    def length(self) -> int:
        """``P``, the number of prefix positions."""
        return int(next(iter(self.keys.values())).shape[-2]) if self.keys else 0

    @property
    def batch(self) -> int:
        """``B``, the number of rows."""
        return int(next(iter(self.keys.values())).shape[0]) if self.keys else 0


class _PrefixCache:
    """The slice of the HF ``Cache`` interface the attention uses (``update``): puts a layer's
    prefix keys/values (rows repeated ``copies`` times, copy-major) before the new ones."""

    def __init__(self, prefix: PrefixKV, copies: int) -> None:
        self.prefix = prefix
        self.copies = copies

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int,
               *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """[c*B, n_kv, S, d_head] new keys/values -> [c*B, n_kv, P + S, d_head]."""
        old_key = self.prefix.keys[layer_idx].to(key.dtype).repeat(self.copies, 1, 1, 1)
        old_value = self.prefix.values[layer_idx].to(value.dtype).repeat(self.copies, 1, 1, 1)
        return torch.cat([old_key, key], dim=-2), torch.cat([old_value, value], dim=-2)


class _RecordingCache:
    """An HF ``Cache`` stand-in that records each layer's keys/values and changes nothing."""

    def __init__(self) -> None:
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int,
               *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys[layer_idx] = key.detach().clone()
        self.values[layer_idx] = value.detach().clone()
        return key, value


@dataclass
class LayerInputs:
    """What every decoder layer needs besides the residual stream, built once per batch shape.

    Attributes:
        masks: ``{layer_type: mask}``: the 4-D attention masks the HF layers expect
            ([B, 1, T, T] additive, or ``None`` where HF skips the mask), one per layer type
            (``full_attention``, ``sliding_attention``).
        position_embeddings: ``{layer_type: (cos, sin)}`` rotary tables, each [B, T, d_rot].
        position_ids: [B, T].
        layer_types: the type of every layer (``full_attention`` for plain Llama).
    """

    masks: dict[str, Any]
    position_embeddings: dict[str, tuple[torch.Tensor, torch.Tensor]]
    position_ids: torch.Tensor
    layer_types: list[str]


def check_supported(model: Any) -> ModelSpec:
    """The model's spec; :class:`NotImplementedError` if :func:`run_from_layer` cannot run it."""
    spec = describe_model(model)
    if not spec.facts.layer_runner or not spec.causal:
        raise NotImplementedError(
            "the layer runner (headprobe.runtime.layers.run_from_layer) supports rotary "
            "pre-norm decoders (architectures with layer_runner=True in headprobe.arch); "
            f"{spec.name} is {spec.model_type!r} (family {spec.facts.family!r}). "
            f"Instead, {FALLBACK}."
        )
    return spec


def _decoder(model: Any) -> Any:
    """The HF decoder that owns the layers (``arch`` fact ``decoder``, e.g. ``model``)."""
    return hf_module(model, describe_model(model).facts.decoder, bridged=True)


def _rotary(model: Any) -> Any:
    spec = describe_model(model)
    if spec.facts.rotary is None:
        raise NotImplementedError(f"{spec.name} has no rotary table; {FALLBACK}")
    return hf_module(model, spec.facts.rotary, bridged=True)


def build_layer_inputs(
    model: Any,
    resid: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> LayerInputs:
    """Masks and rotary tables for a batch, built exactly as the HF decoder's forward builds them.

    Args:
        model: a bridge over a supported model.
        resid: [B, T, d_model] (only its shape, dtype and device are used).
        attention_mask: [B, T], 1/True on real tokens (``None``: no padding).
        position_ids: [B, T] (``None``: ``0..T-1``).
    """
    from transformers.masking_utils import (
        create_causal_mask,
        create_sliding_window_causal_mask,
    )

    check_supported(model)
    decoder = _decoder(model)
    config = decoder.config
    batch, seq = resid.shape[:2]
    if position_ids is None:
        position_ids = torch.arange(seq, device=resid.device).unsqueeze(0).expand(batch, -1)
    if attention_mask is not None:
        attention_mask = attention_mask.to(resid.device).long()
    layer_types = list(describe_model(model).layer_types)
    kwargs = {"config": config, "inputs_embeds": resid, "attention_mask": attention_mask,
              "past_key_values": None, "position_ids": position_ids}
    masks: dict[str, Any] = {}
    position_embeddings: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    rotary = _rotary(model)
    rotary_takes_type = _rotary_takes_layer_type(rotary)
    for layer_type in sorted(set(layer_types)):
        if layer_type == "sliding_attention":
            masks[layer_type] = create_sliding_window_causal_mask(**kwargs)
        elif layer_type == "full_attention":
            masks[layer_type] = create_causal_mask(**kwargs)
        else:
            raise NotImplementedError(
                f"layer type {layer_type!r} is not supported by run_from_layer; {FALLBACK}")
        if rotary_takes_type:
            position_embeddings[layer_type] = rotary(resid, position_ids, layer_type)
        else:
            position_embeddings[layer_type] = rotary(resid, position_ids)
    return LayerInputs(masks, position_embeddings, position_ids, layer_types)


def _rotary_takes_layer_type(rotary: Any) -> bool:
    target = getattr(rotary, "original_component", None) or rotary
    try:
        return "layer_type" in inspect.signature(target.forward).parameters
    except (TypeError, ValueError):
        return False


def run_from_layer(
    model: Any,
    resid: torch.Tensor,
    layer: int,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    hooks: Sequence[Hook] = (),
    *,
    positions: torch.Tensor | None = None,
    layer_inputs: LayerInputs | None = None,
    prefix: PrefixKV | None = None,
) -> torch.Tensor:
    """Run decoder layers ``layer..L-1``, the final norm and the unembedding from a residual.

    The layers are the bridge's own block modules inside the HF model, so bridge hooks at or
    after ``layer`` (``hook_z``, ``hook_q``, ``hook_resid_pre``...) fire as in a full forward
    pass; hooks below ``layer`` do not fire (those layers do not run).

    With ``prefix`` only the positions after the prefix run: ``resid`` holds positions
    ``P..T-1`` (``P = prefix.length``), the prefix positions enter only as the keys/values of
    every layer in ``prefix`` (from :func:`record_kv`), and hooks see ``P..T-1`` only. The
    result equals the full run as long as nothing that runs here changes positions ``< P``.

    Args:
        model: a bridge over a llama-family or Gemma 3 model.
        resid: [B, T, d_model] the residual stream entering ``layer`` (``hook_resid_pre``);
            for ``layer=0`` the (scaled, for Gemma) token embeddings. With ``prefix``:
            [B, T - P, d_model], positions ``P..T-1``.
        layer: first layer to run, ``0 <= layer <= L`` (``L``: only the final norm and head).
        attention_mask: [B, T], 1/True on real tokens; ``None`` for no padding (always the
            full sequence, also with ``prefix``).
        position_ids: [B, T]; ``None`` for ``0..T-1`` (full sequence, also with ``prefix``).
        hooks: ``(hook name, fn)`` forward hooks attached for this run only.
        positions: optional [B] position per row (in ``0..T-1``; ``>= P`` with ``prefix``):
            return [B, V] logits at those positions only (skips the unembedding of every
            other position).
        layer_inputs: masks / rotary tables from :func:`build_layer_inputs` for this batch's
            full sequence ([B, T]), to skip rebuilding them.
        prefix: keys/values of positions ``0..P-1`` at every layer ``>= layer`` for ``B0``
            rows, ``B`` a multiple of ``B0``: row ``i`` of ``resid`` continues prefix row
            ``i % B0`` (the layout of ``Tensor.repeat`` on the batch dimension).

    Returns:
        [B, T, V] logits ([B, T - P, V] with ``prefix``), or [B, V] with ``positions``; equal
        to the full forward's logits.

    Raises:
        NotImplementedError: the architecture is not supported (names the fallback).
    """
    spec = check_supported(model)
    if not 0 <= layer <= spec.n_layers:
        spec.check_layer(layer)
    start = prefix.length if prefix is not None else 0
    cache = None
    if prefix is not None and start:
        if resid.shape[0] % prefix.batch:
            raise ValueError(f"resid has {resid.shape[0]} rows, not a multiple of the "
                             f"prefix's {prefix.batch}")
        cache = _PrefixCache(prefix, resid.shape[0] // prefix.batch)
    if layer_inputs is None:
        full = resid[:, :1].expand(resid.shape[0], resid.shape[1] + start, resid.shape[2])
        layer_inputs = build_layer_inputs(model, full, attention_mask, position_ids)
    if start:
        layer_inputs = _query_rows(layer_inputs, start)
    with attached(model, hooks), forward_positions(layer_inputs.position_ids):
        hidden = _run_layers(model, spec, resid, layer, layer_inputs, cache)
        if positions is not None:
            hidden = final_logits(hidden, positions.to(hidden.device) - start)
        final_norm = hf_module(model, spec.facts.final_norm, bridged=True)
        logits = hf_module(model, spec.facts.unembed, bridged=True)(final_norm(hidden))
    softcap = spec.final_logit_softcap
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def _run_layers(model: Any, spec: ModelSpec, hidden: torch.Tensor, layer: int,
                layer_inputs: LayerInputs, cache: Any) -> torch.Tensor:
    """[B, S, d_model] residual entering ``layer`` -> [B, S, d_model] after the last layer;
    ``cache`` (if not ``None``) is passed to every attention as ``past_key_values``."""
    decoder = _decoder(model)
    extra = {} if cache is None else {"past_key_values": cache}
    for index in range(layer, spec.n_layers):
        layer_type = layer_inputs.layer_types[index]
        out = decoder.layers[index](
            hidden,
            attention_mask=layer_inputs.masks[layer_type],
            position_embeddings=layer_inputs.position_embeddings[layer_type],
            position_ids=layer_inputs.position_ids,
            **extra,
        )
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def rows_sliceable(inputs: LayerInputs) -> bool:
    """Whether every mask is ``None`` or a [B, 1, T, T] tensor (so its query rows can be cut)."""
    return all(mask is None or (isinstance(mask, torch.Tensor) and mask.ndim == 4)
               for mask in inputs.masks.values())


def _query_rows(inputs: LayerInputs, start: int) -> LayerInputs:
    """Full-sequence layer inputs cut to the query positions ``start..T-1`` (every key kept).

    A ``None`` mask stays ``None``: the attention then applies a causal mask aligned to the
    last keys, which is the same cut.
    """
    if not rows_sliceable(inputs):
        raise NotImplementedError(
            "prefix reuse needs attention masks that are None or 4-D tensors; run without a "
            "prefix")
    masks = {layer_type: None if mask is None else mask[:, :, start:]
             for layer_type, mask in inputs.masks.items()}
    tables = {layer_type: (cos[:, start:], sin[:, start:])
              for layer_type, (cos, sin) in inputs.position_embeddings.items()}
    return LayerInputs(masks, tables, inputs.position_ids[:, start:], inputs.layer_types)


def record_kv(
    model: Any,
    resid: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> PrefixKV:
    """Keys and values of every layer's attention for a residual entering layer 0.

    In a causal model the keys/values of positions ``0..P-1`` depend on those positions only,
    so calling this on the first ``P`` positions gives the ``prefix`` of
    :func:`run_from_layer`.

    Args:
        model: a bridge over a llama-family or Gemma 3 model.
        resid: [B, P, d_model] the residual entering layer 0 (``hook_resid_pre`` of layer 0).
        attention_mask: [B, P], 1/True on real tokens (``None``: no padding).
        position_ids: [B, P] (``None``: ``0..P-1``).

    Returns:
        :class:`PrefixKV` with [B, n_kv_heads, P, d_head] keys (after q/k norms and rotary)
        and values for every layer.
    """
    spec = check_supported(model)
    layer_inputs = build_layer_inputs(model, resid, attention_mask, position_ids)
    cache = _RecordingCache()
    _run_layers(model, spec, resid, 0, layer_inputs, cache)
    if len(cache.keys) != spec.n_layers:
        raise NotImplementedError(
            f"the attention of {spec.name} does not use past_key_values (recorded "
            f"{len(cache.keys)} of {spec.n_layers} layers); {FALLBACK}")
    return PrefixKV(cache.keys, cache.values)
