"""Decode-time attention observer: each head's attention row of the newest query, per step.

Retrieval heads (Wu et al. 2024, "Retrieval Head Mechanistically Explains Long-Context
Factuality") are found by looking, at every decode step and for every (layer, query head), at
the attention row of the *current* query over the context: the head retrieves when the argmax
of that row lands on the needle token being copied. The reference asks the model for full
attention matrices at every step (eager attention, ``output_attentions``); this module needs
only the one row per head, computed as one ``q . K`` product:

- ``q`` [B, H, d_head]: the newest query of the step (after the q norm and rotary), read from
  the query hook (``hook_rot_q``; see
  :func:`headprobe.runtime.hooks.query_hook_point`) at the column whose logits choose
  the next token. Hooks the user attaches at the same point (e.g. uniform attention) run
  first, so the row is the one the edited model uses.
- ``K`` [B, H_kv, T_k, d_head]: the layer's keys after the k norm and rotary, as the layer
  uses them: read from the ``transformers.DynamicCache`` of the KV-cached decode step after the
  step ran (no copy is kept), or, on the recomputing ``use_cache=False`` route, from the key
  hook (``hook_rot_k``, GPT-2: ``hook_k``) of that step's full forward.
- scores ``q . k * scaling`` with the attention module's own ``scaling`` (arch fact
  ``attn_scaling_attr``: ``1 / sqrt(d_head)`` for Llama, ``query_pre_attn_scalar ** -0.5``
  for Gemma 3), grouped-query attention (query head ``h`` reads kv head ``h // group_size``),
  the attention-logit soft-cap ``cap * tanh(s / cap)`` when the config has one, then the mask
  built from absolute positions exactly as :func:`headprobe.runtime.layers.position_masks`
  (key visible iff real, ``pos_k <= pos_q`` and, on a ``sliding_attention`` layer,
  ``pos_q - pos_k < window``; invisible keys get exactly zero weight), and a softmax in fp32.

Never a T x T matrix and never ``output_attentions``: memory per layer per step is
O(B * H * T_k) for the row (fp32), plus a transient fp32 copy of that layer's keys
(O(B * H_kv * T_k * d_head)) when the model is not fp32; the queries held during a step are
O(L * B * H * d_head). Not covered: edits to the pattern itself (``hook_pattern`` /
``hook_attn_scores`` interventions) are not seen, since the row is recomputed from ``q`` and
``K``.

Use it through :func:`headprobe.runtime.decode.generate` (``observers=[AttentionObserver(
on_row)]``) or :func:`observe_attention`; :func:`argmax_positions` and :func:`span_mass`
reduce a row to what the retrieval scorer needs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from headprobe.arch import ModelSpec
from headprobe.errors import NonCausalModelError
from headprobe.inputs import Batch, Prompts
from headprobe.runtime.decode import DecodeStep, Generation, generate
from headprobe.runtime.hooks import Hook, query_hook_point
from headprobe.weights import hf_module

__all__ = [
    "AttentionObserver",
    "AttentionRows",
    "RowRecorder",
    "argmax_positions",
    "attention_row",
    "observe_attention",
    "span_mass",
]


@dataclass
class AttentionRows:
    """One layer's attention rows of the newest query of every batch row, at one step.

    Attributes:
        step: 0 for the prefill (the last prompt token's query), ``k >= 1`` for the ``k``-th
            generated token's query.
        layer: the layer.
        weights: [B, H, T_k] fp32 attention weights of each query head over the key columns
            (each row sums to 1; invisible keys exactly 0).
        key_positions: [B, T_k] absolute position of each key column, ``-1`` on padding.
        query_positions: [B] absolute position of the query.
        tokens: [B] the token chosen from this query's logits (the one being generated).
        live: [B] rows that had not stopped at EOS before this step.
        batch: the padded batch (``batch.indices``: prompt indices; ``batch.spans``).
    """

    step: int
    layer: int
    weights: torch.Tensor
    key_positions: torch.Tensor
    query_positions: torch.Tensor
    tokens: torch.Tensor
    live: torch.Tensor
    batch: Batch

    def to(self, device: str | torch.device) -> AttentionRows:
        """A copy with every tensor field moved to ``device`` (the batch is kept as is)."""
        return replace(self, weights=self.weights.to(device),
                       key_positions=self.key_positions.to(device),
                       query_positions=self.query_positions.to(device),
                       tokens=self.tokens.to(device), live=self.live.to(device))


RowCallback = Callable[[AttentionRows], None]


def attention_row(
    query: torch.Tensor,
    keys: torch.Tensor,
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    key_real: torch.Tensor,
    *,
    scaling: float,
    softcap: float | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """Attention weights of one query per row over the keys: one grouped ``q . K`` product.

    Computes ``softmax(mask(softcap(q . k * scaling)))`` in fp32 (the eager attention of Llama
    / Gemma 3 / GPT-2 on that query row; Wu et al. 2024, "Retrieval Head Mechanistically
    Explains Long-Context Factuality", score their retrieval heads on this row).

    Args:
        query: [B, H, d_head] queries after q norm and rotary.
        keys: [B, H_kv, T_k, d_head] keys after k norm and rotary; ``H`` must be a multiple
            of ``H_kv`` (query head ``h`` reads kv head ``h // (H // H_kv)``).
        query_positions: [B] absolute position of each query.
        key_positions, key_real: [B, T_k] absolute position and realness of each key column.
        scaling: the score factor (the attention module's ``scaling``).
        softcap: attention-logit soft-cap ``cap * tanh(s / cap)``, or ``None``.
        window: sliding window (a key is visible iff ``pos_q - pos_k < window``), or ``None``.

    Returns:
        [B, H, T_k] fp32; keys that are padding, after the query, or outside the window get
        exactly 0. Memory O(B * H * T_k) (plus an fp32 copy of ``keys`` if not fp32).
    """
    batch, n_heads, d_head = query.shape
    n_kv, width = keys.shape[1], keys.shape[2]
    if n_heads % n_kv or keys.shape[0] != batch or keys.shape[-1] != d_head:
        raise ValueError(f"query {tuple(query.shape)} and keys {tuple(keys.shape)} do not "
                         "match as [B, H, d_head] and [B, H_kv, T_k, d_head], H % H_kv == 0")
    if tuple(key_positions.shape) != (batch, width) or key_real.shape != key_positions.shape:
        raise ValueError(f"key_positions {tuple(key_positions.shape)} / key_real "
                         f"{tuple(key_real.shape)} must be [B, T_k] = {(batch, width)}")
    grouped = query.float().reshape(batch, n_kv, n_heads // n_kv, 1, d_head)
    scores = torch.matmul(grouped, keys.float()[:, :, None].transpose(-1, -2))
    scores = scores.reshape(batch, n_heads, width) * scaling  # [B, H, T_k]
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    device = scores.device
    key_positions, query_positions = key_positions.to(device), query_positions.to(device)
    visible = key_real.to(device).bool() & (key_positions <= query_positions[:, None])
    if window is not None:
        visible &= (query_positions[:, None] - key_positions) < window
    scores = scores.masked_fill(~visible[:, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1)


def argmax_positions(rows: AttentionRows, below: torch.Tensor | int | None = None
                     ) -> torch.Tensor:
    """[B, H] absolute position of the key each head attends to most.

    Args:
        rows: one step's :class:`AttentionRows`.
        below: only keys with position ``< below`` compete (int or [B], e.g. the prompt
            lengths to take the argmax over the prompt only); ``None``: the whole row (the
            reference's argmax, prompt and generated tokens).

    Returns:
        [B, H] long positions (ties: the first column).
    """
    weights = rows.weights
    if below is not None:
        limit = torch.as_tensor(below, device=weights.device).reshape(-1, 1)
        allowed = (rows.key_positions.to(weights.device) < limit) & (rows.key_positions >= 0)
        weights = weights.masked_fill(~allowed[:, None, :], -1.0)
    columns = weights.argmax(-1)  # [B, H]
    return torch.gather(rows.key_positions.to(columns.device), 1, columns)


def span_mass(rows: AttentionRows, start: torch.Tensor | int, end: torch.Tensor | int
              ) -> torch.Tensor:
    """[B, H] attention mass each head puts on the keys at positions ``start <= pos < end``.

    ``start`` / ``end``: ints or [B] tensors (e.g. a named span of each prompt).
    """
    weights = rows.weights
    positions = rows.key_positions.to(weights.device)
    low = torch.as_tensor(start, device=weights.device).reshape(-1, 1)
    high = torch.as_tensor(end, device=weights.device).reshape(-1, 1)
    inside = (positions >= low) & (positions < high) & (positions >= 0)  # [B, T_k]
    return (weights * inside[:, None, :]).sum(-1)


class AttentionObserver:
    """A :class:`~headprobe.runtime.decode.StepObserver` giving each layer's attention rows of
    the newest query at every decode step to ``on_row`` (Wu et al. 2024, "Retrieval Head
    Mechanistically Explains Long-Context Factuality").

    Example::

        seen = RowRecorder()
        generate(model, prompts, max_new_tokens=8, observers=[AttentionObserver(seen)])
        seen.rows[0].weights   # [B, H, T_k] fp32, step 0 (the prefill's last query), layer 0

    Args:
        on_row: called once per (step, layer) with :class:`AttentionRows`, layers in
            increasing order. It must not keep ``weights`` on the GPU over many steps unless
            it means to (each is O(B * H * T_k)).
        layers: layers to observe (default: all).
        include_prefill: also observe step 0, the last prompt token's query, which chooses
            the first generated token (the reference's first decode step feeds that token).

    Hooks (one on the query hook per observed layer, plus the key hook on the
    ``use_cache=False`` route) are attached by :func:`generate` with its own and removed with
    them, also on error.
    """

    def __init__(self, on_row: RowCallback, *, layers: Sequence[int] | None = None,
                 include_prefill: bool = True) -> None:
        self.on_row = on_row
        self.layers = None if layers is None else list(layers)
        self.include_prefill = include_prefill
        self._queries: dict[int, torch.Tensor] = {}
        self._keys: dict[int, torch.Tensor] = {}
        self._plan: list[tuple[int, float, int | None]] = []
        self._softcap: float | None = None

    def _observed(self, state: DecodeStep) -> bool:
        return (state.step > 0 or self.include_prefill) and not state.prefix

    def batch_hooks(self, model: Any, spec: ModelSpec, state: DecodeStep) -> list[Hook]:
        """Hooks recording the newest query (and, uncached, the keys) of each observed layer.

        ``state`` is the batch's :class:`~headprobe.runtime.decode.DecodeStep`, updated by
        :func:`generate` before each forward (its ``query_column`` picks the query).
        """
        if not spec.causal:
            raise NonCausalModelError(
                f"{spec.name} is not a causal model: the decode-time attention observer needs "
                "a decoder with a KV cache; use a causal model")
        facts = spec.facts
        self._queries.clear()
        self._keys.clear()
        self._softcap = spec.attn_logit_softcap
        self._plan = []
        hooks: list[Hook] = []
        for layer in sorted(set(spec.check_layers(self.layers))):
            module = hf_module(model, f"{facts.layers_path}.{layer}.{facts.attention_module}")
            scaling = getattr(module, facts.attn_scaling_attr, None)
            if scaling is None:
                raise NotImplementedError(
                    f"the attention module of {spec.name} ({type(module).__name__}) has no "
                    f"{facts.attn_scaling_attr!r}; set attn_scaling_attr for "
                    f"{spec.model_type!r} in headprobe.arch")
            kinds = spec.layer_types or ()
            window = (spec.sliding_window
                      if layer < len(kinds) and kinds[layer] == "sliding_attention" else None)
            self._plan.append((layer, float(scaling), window))
            name, axis = query_hook_point(model, spec, layer)
            hooks.append((name, self._query_hook(state, layer, axis)))
            if not state.use_cache:
                hooks.append((self._key_hook_name(model, spec, layer),
                              self._key_hook(state, layer)))
        return hooks

    @staticmethod
    def _key_hook_name(model: Any, spec: ModelSpec, layer: int) -> str:
        """The hook carrying keys as attention uses them, [B, T, H_kv, d_head]."""
        rot = spec.hooks.at("rot_k", layer)
        if rot in model.hook_dict:
            return rot
        if spec.facts.has_qk_norm or spec.facts.rotary is not None:
            raise NotImplementedError(
                f"{spec.name} exposes no hook_rot_k at layer {layer}: the use_cache=False "
                "route cannot read its keys after norm and rotary; observe with use_cache=True")
        return spec.hooks.at("k", layer)

    def _query_hook(self, state: DecodeStep, layer: int, axis: int) -> Callable[..., None]:
        def hook(query: torch.Tensor, hook: Any = None) -> None:
            if not self._observed(state):
                return
            query = query.detach().movedim(axis, 2)  # [B, T_step, H, d_head]
            rows = torch.arange(query.shape[0], device=query.device)
            self._queries[layer] = query[rows, state.query_column.to(query.device)].clone()

        return hook

    def _key_hook(self, state: DecodeStep, layer: int) -> Callable[..., None]:
        def hook(keys: torch.Tensor, hook: Any = None) -> None:
            if self._observed(state):
                self._keys[layer] = keys.detach().transpose(1, 2)  # [B, H_kv, T, d_head]

        return hook

    def after_step(self, state: DecodeStep) -> None:
        """Compute each observed layer's rows for the step just run and call ``on_row``."""
        if not self._observed(state):
            return
        device = state.query_column.device
        rows = torch.arange(state.query_column.shape[0], device=device)
        query_positions = state.query_positions[rows, state.query_column]  # [B]
        key_positions = state.key_positions.masked_fill(~state.key_real.bool(), -1)
        tokens = state.tokens if state.tokens is not None else torch.empty(0, dtype=torch.long)
        live = (state.live if state.live is not None
                else torch.ones(len(rows), dtype=torch.bool))
        try:
            for layer, scaling, window in self._plan:
                query = self._queries.get(layer)
                keys = self._layer_keys(state, layer)
                if query is None or keys is None:
                    raise RuntimeError(
                        f"the attention observer saw no query/keys for layer {layer} at step "
                        f"{state.step}: its hooks did not fire")
                if keys.shape[2] != key_positions.shape[1]:
                    raise RuntimeError(
                        f"layer {layer} holds {keys.shape[2]} key columns but the step "
                        f"describes {key_positions.shape[1]}")
                weights = attention_row(query, keys, query_positions, state.key_positions,
                                        state.key_real, scaling=scaling,
                                        softcap=self._softcap, window=window)
                self.on_row(AttentionRows(state.step, layer, weights, key_positions,
                                          query_positions, tokens, live, state.batch))
        finally:
            self._queries.clear()
            self._keys.clear()

    def _layer_keys(self, state: DecodeStep, layer: int) -> torch.Tensor | None:
        """[B, H_kv, T_k, d_head] keys of ``layer`` for the step just run."""
        if not state.use_cache:
            return self._keys.get(layer)
        cache = state.cache
        if cache is None:
            return None
        held = getattr(cache, "layers", None)
        if held is not None:
            return held[layer].keys if layer < len(held) else None
        return cache.key_cache[layer]  # older transformers


class RowRecorder:
    """An ``on_row`` callback that keeps every :class:`AttentionRows` (moved to ``device``).

    Memory: O(steps * layers * B * H * T_k); meant for short runs and tests.
    """

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = device
        self.rows: list[AttentionRows] = []

    def __call__(self, rows: AttentionRows) -> None:
        """Record ``rows``."""
        self.rows.append(rows.to(self.device))

    def at(self, step: int, layer: int) -> list[AttentionRows]:
        """The recorded rows of ``step`` and ``layer`` (one per batch)."""
        return [row for row in self.rows if row.step == step and row.layer == layer]


def observe_attention(
    model: Any,
    prompts: Prompts | Sequence[torch.Tensor],
    *,
    max_new_tokens: int = 16,
    layers: Sequence[int] | None = None,
    include_prefill: bool = True,
    **generate_options: Any,
) -> tuple[Generation, list[AttentionRows]]:
    """Generate and record every observed attention row (see :class:`AttentionObserver`).

    Args:
        model: a bridge over a causal HF model.
        prompts: as :func:`headprobe.runtime.decode.generate`.
        max_new_tokens, **generate_options: passed to
            :func:`~headprobe.runtime.decode.generate` (``batch_size``, ``padding_side``,
            ``use_cache``, ``hooks``...).
        layers, include_prefill: as :class:`AttentionObserver`.

    Returns:
        The :class:`~headprobe.runtime.decode.Generation` and the rows in call order (per
        batch: step, then layer), on the CPU. Memory O(steps * layers * B * H * T_k).
    """
    recorder = RowRecorder()
    observer = AttentionObserver(recorder, layers=layers, include_prefill=include_prefill)
    generation = generate(model, prompts, max_new_tokens=max_new_tokens,
                          observers=[observer], **generate_options)
    return generation, recorder.rows
