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
============================  ==========================================  =================

``z_h`` is head ``h``'s output before the output projection, ``z_h = A_h V_{kv(h)}``
([B, T, d_head]); its contribution to the residual stream is ``z_h W_O^h``.

Padding: the hooks index positions by column, which equals the token position within each
prompt for right-padded batches (what headprobe's experiments use). Which keys are visible
(causal mask and attention mask) is read from the masked pre-softmax scores of the same
forward pass, so pattern methods respect padding on either side.

References:
    Zhou et al. 2025, "On the Role of Attention Heads in Large Language Model Safety"
    (undifferentiated attention and scaled contribution, Ships).
    Yu et al. 2023, "Characterizing Mechanisms for Factual Recall in Language Models"
    (scaling a head's value vectors).
    Baek et al. 2025, "How Do Large Vision-Language Models See Text in Image? Unveiling the
    Distinctive Role of OCR Heads" (redistributing the sink token's attention).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch

from headprobe.arch import ModelSpec
from headprobe.errors import InterventionError
from headprobe.inputs import Prompts, tokenize_prompts
from headprobe.models import describe_model
from headprobe.runtime.hooks import attached, model_device
from headprobe.runtime.stream import ReduceContext, stream_reduce
from headprobe.weights import head_output_weights

Head = tuple[int, int]
HookFn = Callable[[torch.Tensor, Any], torch.Tensor | None]
HookList = list[tuple[str, HookFn]]
Factory = Callable[..., HookList]

DEFAULT_EPS = 1e-5


# ---------------------------------------------------------------------------------------------
# Heads


def normalize_heads(spec: ModelSpec, heads: Iterable[Sequence[int]]) -> list[Head]:
    """Validate ``(layer, head)`` pairs; returns them sorted without duplicates.

    Raises:
        InterventionError: no heads, or an entry that is not a pair.
        HeadIndexError: a layer or head outside the model.
    """
    if isinstance(heads, tuple) and len(heads) == 2 and all(
        isinstance(x, int) for x in heads
    ):
        raise InterventionError(
            f"heads must be a list of (layer, head) pairs; got one pair {heads!r}: "
            f"wrap it as [{heads!r}]"
        )
    out: set[Head] = set()
    for entry in heads:
        try:
            layer, head = entry
        except (TypeError, ValueError) as error:
            raise InterventionError(
                f"each head must be a (layer, head) pair, got {entry!r}") from error
        layer, head = _as_int(layer), _as_int(head)
        out.add(spec.check_head(layer, head))
    if not out:
        raise InterventionError(
            "the head list is empty: give at least one (layer, head) pair, e.g. [(3, 1)]")
    return sorted(out)


def _as_int(value: Any) -> Any:
    try:
        return operator.index(value)  # accepts numpy / torch integers, refuses floats
    except TypeError:
        return value  # check_head reports it


def heads_by_layer(heads: Iterable[Head]) -> dict[int, list[int]]:
    """``{layer: [heads]}`` in ascending order."""
    grouped: dict[int, list[int]] = {}
    for layer, head in sorted(set(heads)):
        grouped.setdefault(layer, []).append(head)
    return grouped


def _prepare(model: Any, heads: Iterable[Sequence[int]]) -> tuple[ModelSpec, dict[int, list[int]]]:
    spec = describe_model(model)
    return spec, heads_by_layer(normalize_heads(spec, heads))


def _finite(value: float, name: str) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise InterventionError(f"{name} must be a finite number, got {value}")
    return value


# ---------------------------------------------------------------------------------------------
# Hooks on z (head outputs before W_O)

# transform(z_head [B, T, d_head], layer, head) -> new z_head [B, T, d_head]
ZTransform = Callable[[torch.Tensor, int, int], torch.Tensor]


def _z_hooks(spec: ModelSpec, grouped: dict[int, list[int]], transform: ZTransform) -> HookList:
    hooks: HookList = []
    for layer, head_list in grouped.items():

        def hook(z: torch.Tensor, hook: Any, layer: int = layer,
                 head_list: tuple[int, ...] = tuple(head_list)) -> torch.Tensor:
            out = z.clone()
            for head in head_list:
                out[:, :, head] = transform(z[:, :, head], layer, head).to(z.dtype)
            return out

        hooks.append((spec.hooks.at("z", layer), hook))
    return hooks


def zero_ablation(model: Any, heads: Iterable[Sequence[int]]) -> HookList:
    """Zero ablation: ``z_h = 0`` for every targeted head ([B, T, d_head] at ``hook_z``).

    The head then adds nothing to the residual stream (output biases, which are shared by
    all heads of a layer, stay).
    """
    spec, grouped = _prepare(model, heads)
    return _z_hooks(spec, grouped, lambda z, layer, head: torch.zeros_like(z))


def scale_output(
    model: Any, heads: Iterable[Sequence[int]], factor: float = DEFAULT_EPS
) -> HookList:
    """Scale each targeted head's output: ``z_h <- factor * z_h``.

    With a small ``factor`` (1e-4 .. 1e-5) this is the "scaling contribution" ablation of
    Zhou et al. 2025, "On the Role of Attention Heads in Large Language Model Safety".
    """
    spec, grouped = _prepare(model, heads)
    factor = _finite(factor, "factor")
    return _z_hooks(spec, grouped, lambda z, layer, head: z * factor)


def scale_value(model: Any, heads: Iterable[Sequence[int]], alpha: float = 2.0) -> HookList:
    """Value scaling (Yu et al. 2023, "Characterizing Mechanisms for Factual Recall in
    Language Models"): multiply head ``h``'s value vectors by ``alpha``.

    Implemented on ``z`` per query head: ``z_h = A_h V_{kv(h)}`` is linear in ``V``, so
    ``A_h (alpha V) = alpha z_h`` exactly (value biases included, since they are part of
    ``V``). Under grouped-query attention the value head ``V_{kv(h)}`` is shared by the
    ``H / H_kv`` query heads of its group; scaling ``hook_v`` would scale all of them, while
    scaling ``z_h`` scales the value vectors *as read by head h only*, which is the
    per-head intervention of the paper (and the same thing when there is no GQA).
    """
    spec, grouped = _prepare(model, heads)
    alpha = _finite(alpha, "alpha")
    return _z_hooks(spec, grouped, lambda z, layer, head: z * alpha)


@dataclass
class HeadMean:
    """Mean of one head's ``z`` over a reference prompt set.

    Attributes:
        per_position: [T_ref, d_head] mean at each position (over prompts that reach it).
        pooled: [d_head] mean over every real position of every prompt.
        counts: [T_ref] number of prompts that reach each position.
    """

    per_position: torch.Tensor
    pooled: torch.Tensor
    counts: torch.Tensor


def compute_head_means(
    model: Any,
    heads: Iterable[Sequence[int]] | None,
    reference: Prompts,
    *,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[Head, HeadMean]:
    """Means of ``z`` for ``heads`` (``None``: every head) over ``reference`` prompts.

    One streaming pass (:func:`headprobe.runtime.stream.stream_reduce`, right padding): only
    running sums [T_ref, H, d_head] per hooked layer are kept.
    """
    spec = describe_model(model)
    head_list = spec.all_heads() if heads is None else normalize_heads(spec, heads)
    grouped = heads_by_layer(head_list)
    token_lists = tokenize_prompts(model, reference, spec)
    width = max(len(ids) for ids in token_lists)
    sums = {layer: torch.zeros(width, spec.n_heads, spec.d_head, dtype=torch.float64)
            for layer in grouped}
    counts = torch.zeros(width, dtype=torch.float64)

    def reducer(z: torch.Tensor, context: ReduceContext) -> None:
        batch, layer = context.batch, context.layer
        mask = batch.attention_mask.to(torch.float64)  # [B, T]
        masked = z.detach().to(torch.float64) * mask[:, :, None, None]
        sums[layer][: z.shape[1]] += masked.sum(0).cpu()

    def count(batch: Any) -> None:
        counts[: batch.seq_len] += batch.attention_mask.to(torch.float64).sum(0).cpu()

    stream_reduce(model, spec, token_lists, {"z": reducer}, layers=list(grouped),
                  batch_size=batch_size, padding_side="right", progress=progress,
                  desc="mean z", on_batch_end=count)
    total = counts.sum()
    out: dict[Head, HeadMean] = {}
    for layer, head in head_list:
        per = sums[layer][:, head]  # [T_ref, d_head]
        out[(layer, head)] = HeadMean(
            per_position=(per / counts.clamp_min(1)[:, None]).float(),
            pooled=(per.sum(0) / total).float(),
            counts=counts.clone(),
        )
    return out


def mean_ablation(
    model: Any,
    heads: Iterable[Sequence[int]],
    reference: Prompts | None = None,
    *,
    per_position: bool = True,
    means: dict[Head, HeadMean] | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> HookList:
    """Mean ablation: ``z_h[b, t] <- mean over the reference prompts`` of ``z_h``.

    Args:
        reference: prompts whose activations define the mean (strings or token ids).
        per_position: use the mean at the same position ``t`` ([T_ref, d_head]); positions
            beyond the longest reference prompt fall back to the pooled mean. ``False``:
            the pooled mean over all positions ([d_head]) everywhere.
        means: precomputed :func:`compute_head_means` output (then ``reference`` is unused).
    """
    spec, grouped = _prepare(model, heads)
    wanted = [(layer, head) for layer, hs in grouped.items() for head in hs]
    if means is None:
        if reference is None:
            raise InterventionError(
                "mean ablation needs reference prompts (reference=[...]) or precomputed "
                "means (means=compute_head_means(...))")
        means = compute_head_means(model, wanted, reference, batch_size=batch_size,
                                   progress=progress)
    missing = [h for h in wanted if h not in means]
    if missing:
        raise InterventionError(f"means were not computed for heads {missing}")
    device = model_device(model)
    table = {h: HeadMean(means[h].per_position.to(device), means[h].pooled.to(device),
                         means[h].counts) for h in wanted}

    def transform(z: torch.Tensor, layer: int, head: int) -> torch.Tensor:
        entry = table[(layer, head)]
        width = z.shape[1]
        if not per_position:
            value = entry.pooled.expand(width, -1)
        else:
            covered = entry.per_position[:width]
            valid = (entry.counts[:width] > 0).to(device)[:, None]
            covered = torch.where(valid, covered, entry.pooled)
            extra = entry.pooled.expand(width - covered.shape[0], -1)
            value = torch.cat([covered, extra], 0)
        return value.expand_as(z)

    return _z_hooks(spec, grouped, transform)


@dataclass
class ResampleSource:
    """Cached ``z`` of some heads on source prompts.

    Attributes:
        z: ``{(layer, head): [N_src, T_src, d_head]}`` (right-padded, zeros after a prompt).
        lengths: [N_src] token count of each source prompt.
    """

    z: dict[Head, torch.Tensor]
    lengths: torch.Tensor


def cache_resample_source(
    model: Any,
    heads: Iterable[Sequence[int]],
    sources: Prompts,
    *,
    batch_size: int = 8,
    progress: bool = False,
) -> ResampleSource:
    """Run ``sources`` once and keep the targeted heads' ``z`` ([N_src, T_src, d_head] each)."""
    spec = describe_model(model)
    head_list = normalize_heads(spec, heads)
    grouped = heads_by_layer(head_list)
    token_lists = tokenize_prompts(model, sources, spec)
    lengths = torch.tensor([len(ids) for ids in token_lists])
    width = int(lengths.max())
    store = {h: torch.zeros(len(token_lists), width, spec.d_head) for h in head_list}

    def reducer(z: torch.Tensor, context: ReduceContext) -> None:
        batch, layer = context.batch, context.layer
        rows = batch.indices.cpu()
        mask = batch.attention_mask[:, :, None].to(z.dtype)
        for head in grouped[layer]:
            store[(layer, head)][rows, : z.shape[1]] = (z[:, :, head] * mask).float().cpu()

    stream_reduce(model, spec, token_lists, {"z": reducer}, layers=list(grouped),
                  batch_size=batch_size, padding_side="right", progress=progress,
                  desc="resample z")
    return ResampleSource(store, lengths)


def resample_ablation(
    model: Any,
    heads: Iterable[Sequence[int]],
    sources: Prompts | None = None,
    *,
    seed: int = 0,
    source: ResampleSource | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> HookList:
    """Resample ablation: ``z_h[b, t] <- z_h`` of a *source* prompt at the same position.

    Definition used here: the targeted heads' ``z`` are cached on the ``sources`` prompts.
    In every hooked forward pass of width ``T``, each batch row ``b`` draws one source prompt
    ``s_b`` uniformly among the sources with at least ``T`` tokens (a seeded generator owned
    by the hooks; draws advance with each forward), and every targeted head of that row
    gets ``z_h[s_b, 0:T]``; all heads of a row use the same source prompt, as a resampled
    activation in causal scrubbing would. Use sources of the same template as the prompts
    (e.g. a task's corrupt prompts) so that positions mean the same thing.

    Raises (at forward time) :class:`InterventionError` when no source is as long as the
    batch.
    """
    spec, grouped = _prepare(model, heads)
    wanted = [(layer, head) for layer, hs in grouped.items() for head in hs]
    if source is None:
        if sources is None:
            raise InterventionError(
                "resample ablation needs source prompts (sources=[...]) or a cached source "
                "(source=cache_resample_source(...))")
        source = cache_resample_source(model, wanted, sources, batch_size=batch_size,
                                       progress=progress)
    missing = [h for h in wanted if h not in source.z]
    if missing:
        raise InterventionError(f"the resample source has no cached z for heads {missing}")
    device = model_device(model)
    cached = {h: source.z[h].to(device) for h in wanted}
    lengths = source.lengths
    generator = torch.Generator().manual_seed(seed)
    draws: dict[str, Any] = {}

    def choose(width: int, batch: int) -> torch.Tensor:
        eligible = torch.nonzero(lengths >= width).flatten()
        if eligible.numel() == 0:
            raise InterventionError(
                f"resample ablation: no source prompt has {width} tokens (longest: "
                f"{int(lengths.max())}); give longer source prompts")
        picks = eligible[torch.randint(eligible.numel(), (batch,), generator=generator)]
        return picks.to(device)

    hooks: HookList = []
    first_layer = min(grouped)
    for layer, head_list in grouped.items():

        def hook(z: torch.Tensor, hook: Any, layer: int = layer,
                 head_list: tuple[int, ...] = tuple(head_list)) -> torch.Tensor:
            if layer == first_layer:  # one draw per forward pass, shared by all layers
                draws["rows"] = choose(z.shape[1], z.shape[0])
            rows = draws["rows"]
            out = z.clone()
            for head in head_list:
                out[:, :, head] = cached[(layer, head)][rows, : z.shape[1]].to(z.dtype)
            return out

        hooks.append((spec.hooks.at("z", layer), hook))
    return hooks


def head_output_matrix(model: Any, layer: int, head: int) -> torch.Tensor:
    """``W_O^h`` [d_head, d_model]: head ``h``'s block of the output projection (see
    :func:`headprobe.weights.head_output_weights`)."""
    spec = describe_model(model)
    spec.check_head(layer, head)
    return head_output_weights(model, spec, layer)[head]


def add_to_output(
    model: Any,
    heads: Iterable[Sequence[int]],
    vector: torch.Tensor,
    *,
    coefficient: float = 1.0,
    space: Literal["z", "residual"] = "z",
    positions: int | Sequence[int] | None = None,
) -> HookList:
    """Steer by adding a vector to each targeted head's output.

    Args:
        vector: ``space="z"``: a [d_head] vector ``u`` added to ``z_h`` before ``W_O`` (the
            residual stream then moves by ``c * u W_O^h``). ``space="residual"``: a
            [d_model] vector ``r``; it is mapped to ``u = r pinv(W_O^h)``, the least-squares
            z-space vector, so the residual moves by the projection of ``c * r`` onto the
            head's output space (the part a single head can write).
        coefficient: ``c``.
        positions: token positions (columns) to steer; ``None``: all.
    """
    spec, grouped = _prepare(model, heads)
    coefficient = _finite(coefficient, "coefficient")
    vector = torch.as_tensor(vector).detach()
    if space not in ("z", "residual"):
        raise InterventionError(f"space must be 'z' or 'residual', got {space!r}")
    expected = spec.d_head if space == "z" else spec.d_model
    if vector.shape != (expected,):
        raise InterventionError(
            f"add_to_output with space={space!r} needs a vector of shape [{expected}], got "
            f"{tuple(vector.shape)}")
    if not bool(torch.isfinite(vector).all()):
        raise InterventionError("add_to_output: the vector has NaN or infinite entries")
    device = model_device(model)
    per_head: dict[Head, torch.Tensor] = {}
    for layer, hs in grouped.items():
        for head in hs:
            if space == "z":
                u = vector.float()
            else:
                w_o = head_output_matrix(model, layer, head).float().cpu()  # [d_head, d_model]
                u = vector.float() @ torch.linalg.pinv(w_o)
            per_head[(layer, head)] = (coefficient * u).to(device)
    if positions is None:
        selected: slice | list[int] = slice(None)
    elif isinstance(positions, int):
        selected = [positions]
    else:
        selected = list(positions)

    def transform(z: torch.Tensor, layer: int, head: int) -> torch.Tensor:
        added = torch.zeros_like(z)
        added[:, selected] = per_head[(layer, head)].to(z.dtype)
        return z + added

    return _z_hooks(spec, grouped, transform)


# ---------------------------------------------------------------------------------------------
# Hooks on the query


def query_hook_point(model: Any, spec: ModelSpec, layer: int) -> tuple[str, int]:
    """The hook carrying head queries *after* any query norm, and its head axis.

    - rotary models (Llama, Gemma 3): ``hook_rot_q`` [B, T, H, d_head], after the q norm
      and after rotary; rotary is linear, so scaling here equals scaling before it;
    - models with a q norm but no rotary hook: ``hook_q_normed`` [B, H, T, d_head];
    - otherwise (GPT-2): ``hook_q`` [B, T, H, d_head].

    Scaling the q projection output of a model with a query norm (Gemma 3) does *not*
    make its attention uniform: the norm undoes the scale.
    """
    rot = spec.hooks.at("rot_q", layer)
    if rot in model.hook_dict:
        return rot, 2
    if spec.facts.has_qk_norm:
        normed = spec.hooks.at("q_normed", layer)
        if normed in model.hook_dict:
            return normed, 1
        raise InterventionError(
            f"{spec.name} normalises queries but exposes neither hook_rot_q nor hook_q_normed "
            f"at layer {layer}; uniform attention cannot be applied after the q norm")
    return spec.hooks.at("q", layer), 2


def uniform_attention(
    model: Any, heads: Iterable[Sequence[int]], eps: float = DEFAULT_EPS
) -> HookList:
    """Undifferentiated attention (Zhou et al. 2025, "On the Role of Attention Heads in Large
    Language Model Safety"): multiply the head's query by ``eps`` so that every score is
    ~0 and the softmax is uniform over the visible keys, ``1 / (number visible)``
    (``1 / (t + 1)`` at position ``t`` of an unpadded causal prompt).

    The scale is applied after any query norm (see :func:`query_hook_point`); the key,
    value and mask are untouched.
    """
    spec, grouped = _prepare(model, heads)
    eps = _finite(eps, "eps")
    hooks: HookList = []
    for layer, head_list in grouped.items():
        name, axis = query_hook_point(model, spec, layer)
        index = torch.tensor(head_list)

        def hook(q: torch.Tensor, hook: Any, axis: int = axis,
                 index: torch.Tensor = index) -> torch.Tensor:
            if q.shape[axis] != spec.n_heads:
                raise InterventionError(
                    f"{hook.name}: expected {spec.n_heads} query heads on axis {axis}, got "
                    f"shape {tuple(q.shape)}")
            scale = torch.ones(spec.n_heads, dtype=q.dtype, device=q.device)
            scale[index.to(q.device)] = eps
            shape = [1] * q.ndim
            shape[axis] = spec.n_heads
            return q * scale.view(shape)

        hooks.append((name, hook))
    return hooks


# ---------------------------------------------------------------------------------------------
# Hooks on the attention pattern

# transform(pattern [B, T_q, T_k], visible [B, T_q, T_k] bool, layer, head) -> new pattern
PatternTransform = Callable[[torch.Tensor, torch.Tensor, int, int], torch.Tensor]


def _pattern_hooks(spec: ModelSpec, grouped: dict[int, list[int]],
                   transform: PatternTransform) -> HookList:
    """A recording hook on ``hook_attn_scores`` (which keys are visible) and an editing hook
    on ``hook_pattern`` per layer."""
    hooks: HookList = []
    for layer, head_list in grouped.items():
        state: dict[str, torch.Tensor] = {}
        index = list(head_list)

        def record(scores: torch.Tensor, hook: Any, state: dict[str, torch.Tensor] = state,
                   index: list[int] = index) -> None:
            selected = scores[:, index]
            state["visible"] = selected > torch.finfo(scores.dtype).min / 2

        def edit(pattern: torch.Tensor, hook: Any, layer: int = layer,
                 state: dict[str, torch.Tensor] = state,
                 index: list[int] = index) -> torch.Tensor:
            visible = state.pop("visible", None)
            if visible is None or visible.shape[-2:] != pattern.shape[-2:]:
                raise InterventionError(f"{hook.name}: no masked scores seen for this pass")
            out = pattern.clone()
            for i, head in enumerate(index):
                out[:, head] = transform(pattern[:, head], visible[:, i], layer,
                                         head).to(pattern.dtype)
            return out

        hooks.append((spec.hooks.at("attn_scores", layer), record))
        hooks.append((spec.hooks.at("pattern", layer), edit))
    return hooks


def set_pattern(model: Any, heads: Iterable[Sequence[int]], pattern: torch.Tensor) -> HookList:
    """Replace each targeted head's attention pattern with ``pattern``.

    Args:
        pattern: [T_q, T_k] (same for every prompt) or [B, T_q, T_k], non-negative and
            finite, square in its last two dimensions; a pattern larger than the sequence is
            cut to its top-left [T, T] block. At run time it is masked to the visible keys
            (causal mask and padding) and each row is renormalised to sum to 1; a row of a
            real query with no mass on its visible keys raises :class:`InterventionError`.
    """
    spec, grouped = _prepare(model, heads)
    given = torch.as_tensor(pattern).detach().float()
    if given.ndim not in (2, 3) or given.shape[-1] != given.shape[-2]:
        raise InterventionError(
            f"pattern must be [T, T] or [B, T, T], got shape {tuple(given.shape)}")
    if not bool(torch.isfinite(given).all()) or bool((given < 0).any()):
        raise InterventionError("pattern must be finite and non-negative")
    device = model_device(model)
    given = given.to(device)

    def transform(old: torch.Tensor, visible: torch.Tensor, layer: int,
                  head: int) -> torch.Tensor:
        width = old.shape[-1]
        if given.shape[-1] < width:
            raise InterventionError(
                f"set_pattern: the pattern covers {given.shape[-1]} tokens, the input has "
                f"{width}")
        if given.ndim == 3 and given.shape[0] != old.shape[0]:
            raise InterventionError(
                f"set_pattern: the pattern holds {given.shape[0]} prompts, the batch has "
                f"{old.shape[0]}")
        new = given[..., :width, :width].expand_as(old) * visible
        mass = new.sum(-1, keepdim=True)
        has_keys = visible.any(-1, keepdim=True)
        if bool((has_keys & (mass <= 0)).any()):
            raise InterventionError(
                "set_pattern: a query row puts no weight on any visible key; give each row "
                "some mass on positions 0..t")
        return torch.where(has_keys, new / mass.clamp_min(1e-30), torch.zeros_like(new))

    return _pattern_hooks(spec, grouped, transform)


def redistribute_sink(model: Any, heads: Iterable[Sequence[int]], beta: float = 0.4) -> HookList:
    """Sink redistribution (Baek et al. 2025, "How Do Large Vision-Language Models See Text in
    Image? Unveiling the Distinctive Role of OCR Heads").

    For each query row with attention ``a`` over visible keys, the sink is the first visible
    key ``s`` (the BOS token of an unpadded prompt). The head keeps ``beta * a_s`` on the sink
    and gives the removed ``(1 - beta) * a_s`` to the other visible keys in proportion to
    their current attention: ``a'_j = a_j (1 + (1 - beta) a_s / sum_{k != s} a_k)``. Rows sum
    to 1 still; rows whose other keys carry no attention (e.g. position 0) are unchanged.
    """
    spec, grouped = _prepare(model, heads)
    beta = _finite(beta, "beta")
    if not 0.0 <= beta <= 1.0:
        raise InterventionError(f"beta must lie in [0, 1], got {beta}")

    def transform(old: torch.Tensor, visible: torch.Tensor, layer: int,
                  head: int) -> torch.Tensor:
        work = old.float() * visible
        sink = visible.long().argmax(-1, keepdim=True)  # first visible key, [B, T_q, 1]
        sink_mass = work.gather(-1, sink)
        rest = work.scatter(-1, sink, 0.0)
        rest_mass = rest.sum(-1, keepdim=True)
        movable = (rest_mass > 0) & visible.any(-1, keepdim=True)
        gain = 1.0 + (1.0 - beta) * sink_mass / rest_mass.clamp_min(1e-30)
        new = (rest * gain).scatter(-1, sink, beta * sink_mass)
        return torch.where(movable, new, old.float())

    return _pattern_hooks(spec, grouped, transform)


# ---------------------------------------------------------------------------------------------
# Table and entry point


@dataclass(frozen=True)
class InterventionMethod:
    """A named intervention for ``--method`` and :func:`intervene`.

    Attributes:
        name: registry name.
        kind: ``ablation`` (removes a head's contribution) or ``steering``.
        acts_on: ``z``, ``query`` or ``pattern``.
        factory: ``factory(model, heads, **options) -> HookList``.
        description: one line.
        needs: option names that must be given (``reference`` for ``mean`` ...).
    """

    name: str
    kind: Literal["ablation", "steering"]
    acts_on: Literal["z", "query", "pattern"]
    factory: Factory
    description: str
    needs: tuple[str, ...] = ()


METHODS: dict[str, InterventionMethod] = {
    "zero": InterventionMethod("zero", "ablation", "z", zero_ablation,
                               "head output z set to 0"),
    "mean": InterventionMethod("mean", "ablation", "z", mean_ablation,
                               "z replaced by its mean over reference prompts",
                               needs=("reference",)),
    "resample": InterventionMethod("resample", "ablation", "z", resample_ablation,
                                   "z taken from a source prompt at the same positions",
                                   needs=("sources",)),
    "uniform_attention": InterventionMethod(
        "uniform_attention", "ablation", "query", uniform_attention,
        "query scaled by eps after any q norm: uniform attention (Zhou et al. 2025)"),
    "scale_output": InterventionMethod("scale_output", "ablation", "z", scale_output,
                                       "z multiplied by a factor (default 1e-5, Zhou et al. 2025)"),
    "scale_value": InterventionMethod("scale_value", "steering", "z", scale_value,
                                      "value vectors scaled by alpha (Yu et al. 2023)"),
    "add_to_output": InterventionMethod("add_to_output", "steering", "z", add_to_output,
                                        "a vector added to the head output",
                                        needs=("vector",)),
    "set_pattern": InterventionMethod("set_pattern", "steering", "pattern", set_pattern,
                                      "attention pattern replaced by a given one",
                                      needs=("pattern",)),
    "redistribute_sink": InterventionMethod(
        "redistribute_sink", "steering", "pattern", redistribute_sink,
        "keep beta of the sink's attention, spread the rest (Baek et al. 2025)"),
}

ABLATION_METHODS = tuple(name for name, m in METHODS.items() if m.kind == "ablation")


def get_method(name: str) -> InterventionMethod:
    """The method registered as ``name``; :class:`InterventionError` listing the known ones."""
    if name not in METHODS:
        raise InterventionError(
            f"unknown intervention method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def build_hooks(model: Any, heads: Iterable[Sequence[int]], method: str | Factory,
                **options: Any) -> HookList:
    """The hooks of ``method`` (a name in :data:`METHODS` or a factory) on ``heads``."""
    if callable(method):
        return method(model, heads, **options)
    entry = get_method(method)
    missing = [name for name in entry.needs if options.get(name) is None
               and not (name == "reference" and options.get("means") is not None)
               and not (name == "sources" and options.get("source") is not None)]
    if missing:
        raise InterventionError(f"method {method!r} needs the option(s) {missing}")
    return entry.factory(model, heads, **options)


@contextmanager
def intervene(model: Any, heads: Iterable[Sequence[int]], method: str | Factory = "zero",
              **options: Any) -> Iterator[Any]:
    """Apply ``method`` to ``heads`` inside a ``with`` block; the hooks go away afterwards.

    Example::

        with intervene(model, [(5, 1), (7, 3)], "uniform_attention"):
            logits = model(tokens)
    """
    hooks = build_hooks(model, heads, method, **options)
    with attached(model, hooks):
        yield model


@contextmanager
def intervene_many(model: Any, hook_lists: Sequence[HookList]) -> Iterator[Any]:
    """Attach several factories' hooks at once (e.g. two methods on different heads)."""
    hooks = [hook for hooks in hook_lists for hook in hooks]
    with attached(model, hooks):
        yield model
