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

The same runner is the KV-cached decode step (:func:`headprobe.runtime.decode.generate`):
:func:`embed` gives the residual entering layer 0 from token ids, and :func:`run_from_layer`
with ``cache=`` (any HF ``Cache`` that keeps every key, e.g. a ``DynamicCache()`` built
without a config) runs only the new columns against the keys/values the cache holds.

One mask rule (:func:`position_masks`): a key column is visible to a query column iff the key
is a real token, ``pos_k <= pos_q`` and, on a sliding-window layer, ``pos_q - pos_k <
window``, with ``pos`` the *absolute* positions (``position_ids``), not the columns. On a
padded batch this is HF's column-causal mask on every real query row (padding query rows see
nothing; no real position reads them), and it stays right when a KV cache holds pad columns
between a prompt and its continuation. Rotary tables are built for the absolute positions of
the columns that run.

Models spread over devices (``load_model(..., device_map=...)``): every module called here
(embedding, decoder layers, final norm, unembedding, rotary table) is one that
:func:`headprobe.placement.dispatch_hf_model` gives an accelerate hook of its own, so calling it
directly moves its inputs (residual, masks, rotary tables, positions) to its device and loads
offloaded weights, as the full forward does; keys/values and the residual stay where their
layer ran, and the logits are returned on the model's main device.
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
from headprobe.runtime.hf_compat import bridge_attention_cache, cache_kwarg
from headprobe.runtime.hooks import Hook, attached, model_device
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
        old_key = self.prefix.keys[layer_idx].to(key.device, key.dtype).repeat(
            self.copies, 1, 1, 1)
        old_value = self.prefix.values[layer_idx].to(value.device, value.dtype).repeat(
            self.copies, 1, 1, 1)
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
        masks: ``{layer_type: mask}``: the 4-D attention masks the HF layers take, one per
            layer type (``full_attention``, ``sliding_attention``): [B, 1, T_q, T_k] additive
            from :func:`position_masks` (``None`` is accepted too: the attention's own causal
            mask, aligned to the last keys).
        position_embeddings: ``{layer_type: (cos, sin)}`` rotary tables, each
            [B, T_q, d_rot], for the query columns' absolute positions.
        position_ids: [B, T_q] absolute positions of the query columns.
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


def position_masks(
    spec: ModelSpec,
    query_positions: torch.Tensor,
    query_real: torch.Tensor,
    key_positions: torch.Tensor,
    key_real: torch.Tensor,
    dtype: torch.dtype,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """Additive attention masks built from absolute positions, per layer type.

    Key column ``k`` is visible to query column ``q`` iff both are real tokens,
    ``pos_k <= pos_q`` and, on a ``sliding_attention`` layer, ``pos_q - pos_k < window``.

    Args:
        spec: the model's spec (``layer_types``, ``sliding_window``).
        query_positions, query_real: [B, T_q] position and realness of the query columns.
        key_positions, key_real: [B, T_k] the same for the key columns (cache + current).
        dtype: the model's dtype (masked entries hold its most negative value).

    Returns:
        [B, 1, T_q, T_k] when every layer has the same type, else ``{layer_type: mask}``
        (the form Gemma 3's decoder takes).
    """
    masks = _position_mask_dict(spec, query_positions, query_real, key_positions, key_real,
                                dtype)
    return next(iter(masks.values())) if len(masks) == 1 else masks


def _position_mask_dict(
    spec: ModelSpec,
    query_positions: torch.Tensor,
    query_real: torch.Tensor,
    key_positions: torch.Tensor,
    key_real: torch.Tensor,
    dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    """:func:`position_masks` as ``{layer_type: [B, 1, T_q, T_k]}`` for every layer type."""
    query_real, key_real = query_real.bool(), key_real.bool()
    visible = ((key_positions[:, None, :] <= query_positions[:, :, None])
               & key_real[:, None, :] & query_real[:, :, None])
    masks: dict[str, torch.Tensor] = {}
    for layer_type in dict.fromkeys(spec.layer_types or ("full_attention",)):
        allowed = visible
        if layer_type == "sliding_attention":
            if spec.sliding_window is None:
                raise NotImplementedError(f"{spec.name} has sliding layers but no window")
            distance = query_positions[:, :, None] - key_positions[:, None, :]
            allowed = visible & (distance < spec.sliding_window)
        elif layer_type != "full_attention":
            raise NotImplementedError(
                f"layer type {layer_type!r} of {spec.name} has no mask rule; add it to "
                f"headprobe.runtime.layers.position_masks (or {FALLBACK})")
        additive = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        masks[layer_type] = additive.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
    return masks


def embed(model: Any, ids: torch.Tensor) -> torch.Tensor:
    """Token embeddings of ``ids`` through the HF embedding module (``arch`` fact ``embed``,
    default ``{decoder}.embed_tokens``).

    The module is called as the HF model holds it (bridge component included), so
    ``hook_embed`` fires as in a full forward pass, and a model's own scaling is applied
    (Gemma's ``sqrt(d_model)`` is part of its HF embedding module). For the architectures
    :func:`run_from_layer` supports (no learned position embedding) this is the residual
    entering layer 0 (``hook_resid_pre`` of layer 0).

    Args:
        model: a bridge over a causal HF model.
        ids: [B, T] token ids.

    Returns:
        [B, T, d_model] in the model's dtype.
    """
    facts = describe_model(model).facts
    path = facts.embed if facts.embed is not None else f"{facts.decoder}.embed_tokens"
    return hf_module(model, path, bridged=True)(ids.to(model_device(model)))


def build_layer_inputs(
    model: Any,
    resid: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    *,
    start: int = 0,
) -> LayerInputs:
    """Masks and rotary tables for a batch, from absolute positions (:func:`position_masks`).

    On every real query position the masks equal those the HF decoder's forward builds
    (key padding and column causality), so the layers give the same numbers.

    Args:
        model: a bridge over a supported model.
        resid: [B, T - start, d_model] the columns that run (only its shape, dtype and
            device are used).
        attention_mask: [B, T], 1/True on real tokens, over every key column (``None``: no
            padding).
        position_ids: [B, T] absolute positions of every key column (``None``: ``0..T-1``).
        start: the first column that runs; columns ``0..start-1`` are keys only (a prefix
            or a KV cache holds them).

    Returns:
        :class:`LayerInputs` for the query columns ``start..T-1``: masks
        [B, 1, T - start, T], rotary tables [B, T - start, d_rot], position_ids
        [B, T - start].
    """
    spec = check_supported(model)
    batch, seq = resid.shape[0], resid.shape[1] + start
    keys = _key_positions(resid, seq, position_ids)
    if attention_mask is None:
        real = torch.ones(batch, seq, dtype=torch.bool, device=resid.device)
    else:
        real = attention_mask.to(resid.device).bool()
    if tuple(keys.shape) != (batch, seq) or tuple(real.shape) != (batch, seq):
        raise ValueError(
            f"position_ids {tuple(keys.shape)} / attention_mask {tuple(real.shape)} must be "
            f"[B, T] = {(batch, seq)}: {resid.shape[1]} columns that run after {start} others")
    query = keys[:, start:]
    layer_types = list(spec.layer_types)
    masks = _position_mask_dict(spec, query, real[:, start:], keys, real, resid.dtype)
    position_embeddings: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    rotary = _rotary(model)
    rotary_takes_type = _rotary_takes_layer_type(rotary)
    for layer_type in sorted(set(layer_types)):
        if rotary_takes_type:
            position_embeddings[layer_type] = rotary(resid, query, layer_type)
        else:
            position_embeddings[layer_type] = rotary(resid, query)
    return LayerInputs(masks, position_embeddings, query, layer_types)


def _key_positions(resid: torch.Tensor, seq: int,
                   position_ids: torch.Tensor | None) -> torch.Tensor:
    """[B, T] ``position_ids`` on ``resid``'s device, or ``0..T-1`` in every row."""
    if position_ids is None:
        return torch.arange(seq, device=resid.device).unsqueeze(0).expand(resid.shape[0], -1)
    return position_ids.to(resid.device).long()


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
    cache: Any | None = None,
    rows: torch.Tensor | None = None,
    session: object | None = None,
) -> torch.Tensor:
    """Run decoder layers ``layer..L-1``, the final norm and the unembedding from a residual.

    The layers are the bridge's own block modules inside the HF model, so bridge hooks at or
    after ``layer`` (``hook_z``, ``hook_q``, ``hook_resid_pre``...) fire as in a full forward
    pass; hooks below ``layer`` do not fire (those layers do not run). From token ids, pass
    ``embed(model, ids)`` with ``layer=0``.

    Only the last ``S`` columns of the sequence run (``resid`` [B, S, d_model]); the first
    ``P = T - S`` enter only as keys/values, either from ``prefix`` (fixed, from
    :func:`record_kv`, reused by every call) or from ``cache`` (an HF ``Cache``, which the
    attention grows by the ``S`` new columns, as in KV-cached decoding). Hooks see the ``S``
    columns only. The result equals the full run as long as nothing that runs here changes
    positions ``< P``. During the run :func:`~headprobe.runtime.positions.forward_positions`
    publishes the query positions (``position_ids`` of the ``S`` columns), the key positions
    (all ``T`` columns) when ``P > 0``, and ``rows`` / ``session``.

    Args:
        model: a bridge over a llama-family or Gemma 3 model.
        resid: [B, S, d_model] the residual stream entering ``layer`` (``hook_resid_pre``)
            at the columns that run; for ``layer=0`` the token embeddings (:func:`embed`).
            ``S = T`` without ``prefix`` / ``cache`` (or with an empty cache).
        layer: first layer to run, ``0 <= layer <= L`` (``L``: only the final norm and head).
        attention_mask: [B, T], 1/True on real tokens, over the whole sequence (prefix or
            cached columns included); ``None`` for no padding.
        position_ids: [B, T] absolute positions of the whole sequence; ``None`` for
            ``0..T-1``. Masks and rotary tables follow these (:func:`position_masks`).
        hooks: ``(hook name, fn)`` forward hooks attached for this run only.
        positions: optional [B] column per row (in ``0..T-1``; ``>= P``): return [B, V]
            logits at those columns only (skips the unembedding of every other column).
        layer_inputs: masks / rotary tables from :func:`build_layer_inputs` for this batch's
            full sequence ([B, T], ``start=0``), to skip rebuilding them.
        prefix: keys/values of positions ``0..P-1`` at every layer ``>= layer`` for ``B0``
            rows, ``B`` a multiple of ``B0``: row ``i`` of ``resid`` continues prefix row
            ``i % B0`` (the layout of ``Tensor.repeat`` on the batch dimension).
        cache: an HF ``Cache`` (e.g. ``transformers.DynamicCache()``) holding the keys and
            values of the first ``P`` columns at every layer ``>= layer`` (``P`` read from
            ``attention_mask`` / ``position_ids``, else 0); the run appends the new columns'
            keys/values. It must keep every key (no sliding-window cache layers: windows are
            applied by the masks). Not together with ``prefix``.
        rows, session: published with the positions (see
            :class:`~headprobe.runtime.positions.ForwardPositions`), e.g. by a generation.

    Returns:
        [B, S, V] logits (``S = T`` without prefix or cache), or [B, V] with ``positions``;
        equal to the full forward's logits at those columns, on the device a full forward
        returns them on (:func:`~headprobe.runtime.hooks.model_device`).

    Raises:
        NotImplementedError: the architecture is not supported (names the fallback).
        ValueError: shapes that disagree, or ``prefix`` together with ``cache``.
    """
    spec = check_supported(model)
    if not 0 <= layer <= spec.n_layers:
        spec.check_layer(layer)
    if prefix is not None and cache is not None:
        raise ValueError("pass either prefix (fixed keys/values) or cache (a growing HF "
                         "Cache), not both")
    start, layer_cache = 0, None
    if prefix is not None and prefix.length:
        start = prefix.length
        if resid.shape[0] % prefix.batch:
            raise ValueError(f"resid has {resid.shape[0]} rows, not a multiple of the "
                             f"prefix's {prefix.batch}")
        layer_cache = _PrefixCache(prefix, resid.shape[0] // prefix.batch)
    elif cache is not None:
        start = _cached_columns(cache, resid, layer, spec, attention_mask, position_ids)
        layer_cache = cache
    keys = _key_positions(resid, resid.shape[1] + start, position_ids)
    if layer_inputs is None:
        layer_inputs = build_layer_inputs(model, resid, attention_mask, keys, start=start)
    elif start:
        layer_inputs = _query_rows(layer_inputs, start)
    with attached(model, hooks), forward_positions(
            layer_inputs.position_ids, key=keys if start else None, rows=rows, session=session):
        hidden = _run_layers(model, spec, resid, layer, layer_inputs, layer_cache)
        if positions is not None:
            hidden = final_logits(hidden, positions.to(hidden.device) - start)
        final_norm = hf_module(model, spec.facts.final_norm, bridged=True)
        logits = hf_module(model, spec.facts.unembed, bridged=True)(final_norm(hidden))
    softcap = spec.final_logit_softcap
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return logits.to(model_device(model))  # where a full forward returns them


def _cached_columns(cache: Any, resid: torch.Tensor, layer: int, spec: ModelSpec,
                    attention_mask: torch.Tensor | None,
                    position_ids: torch.Tensor | None) -> int:
    """``P``, the columns ``cache`` holds before ``resid``'s [B, S] ones: ``T - S`` with ``T``
    the width of ``attention_mask`` / ``position_ids`` (0 without them), checked against the
    cache's own length where it reports one."""
    widths = {int(t.shape[-1]) for t in (attention_mask, position_ids) if t is not None}
    if len(widths) > 1:
        raise ValueError(f"attention_mask and position_ids differ in width: {sorted(widths)}")
    width = widths.pop() if widths else resid.shape[1]
    if width < resid.shape[1]:
        raise ValueError(f"resid has {resid.shape[1]} columns, more than the {width} of "
                         "attention_mask / position_ids")
    start = width - resid.shape[1]
    held = getattr(cache, "get_seq_length", None)
    if callable(held) and layer < spec.n_layers and int(held(layer)) != start:
        raise ValueError(
            f"the cache holds {int(held(layer))} columns at layer {layer} but attention_mask"
            f" / position_ids describe {start} before the {resid.shape[1]} that run; pass "
            "them over the whole sequence (cached columns + new ones)")
    return start


def _run_layers(model: Any, spec: ModelSpec, hidden: torch.Tensor, layer: int,
                layer_inputs: LayerInputs, cache: Any) -> torch.Tensor:
    """[B, S, d_model] residual entering ``layer`` -> [B, S, d_model] after the last layer;
    ``cache`` (if not ``None``) is passed to every decoder layer under the installed
    transformers' name and reaches the bridge attention under the one it reads
    (:mod:`headprobe.runtime.hf_compat`)."""
    decoder = _decoder(model)
    if cache is None:
        return _layer_loop(decoder, spec, hidden, layer, layer_inputs, {})
    with bridge_attention_cache(model):
        return _layer_loop(decoder, spec, hidden, layer, layer_inputs,
                           {cache_kwarg(): cache})


def _layer_loop(decoder: Any, spec: ModelSpec, hidden: torch.Tensor, layer: int,
                layer_inputs: LayerInputs, extra: dict[str, Any]) -> torch.Tensor:
    """The decoder layers ``layer..L-1`` in turn, each called with ``extra`` keywords."""
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
            f"the attention of {spec.name} does not use the KV cache (recorded "
            f"{len(cache.keys)} of {spec.n_layers} layers); {FALLBACK}")
    return PrefixKV(cache.keys, cache.values)
