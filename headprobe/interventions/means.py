"""Replacing a head's output with a reference: mean ablation and resample ablation, with the
caches they read (per-position means; source prompts' ``z``), all indexed by *absolute*
position (the token position within each prompt, see :mod:`headprobe.runtime.positions`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from headprobe.errors import InterventionError
from headprobe.inputs import Batch, Prompts, encode_prompts
from headprobe.interventions.heads import (
    HookList,
    OnDevice,
    heads_by_layer,
    normalize_heads,
    prepare,
    z_hooks,
)
from headprobe.models import describe_model
from headprobe.runtime.hooks import model_device
from headprobe.runtime.positions import current_positions
from headprobe.runtime.stream import ReduceContext, stream_reduce
from headprobe.types import Head


@dataclass
class HeadMean:
    """Mean of one head's ``z`` over a reference prompt set.

    Attributes:
        per_position: [T_ref, d_head] mean at each absolute position (over prompts that
            reach it).
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

    One streaming pass (:func:`headprobe.runtime.stream.stream_reduce`, under ``no_grad``
    also when called inside ``torch.inference_mode``): only running sums [T_ref, H, d_head]
    per hooked layer are kept, accumulated by absolute position (so the padding side does
    not matter).
    """
    spec = describe_model(model)
    head_list = spec.all_heads() if heads is None else normalize_heads(spec, heads)
    grouped = heads_by_layer(head_list)
    token_lists = encode_prompts(model, reference, spec)  # any prompt kind, images included
    width = max(len(ids) for ids in token_lists)
    # the sums and the streamed activations are ordinary tensors also when the caller runs
    # under inference_mode (stream_reduce checks the activations' version counters)
    with torch.inference_mode(False):
        sums = {layer: torch.zeros(width, spec.n_heads, spec.d_head, dtype=torch.float64)
                for layer in grouped}
        counts = torch.zeros(width, dtype=torch.float64)

        def reducer(z: torch.Tensor, context: ReduceContext) -> None:
            real = context.batch.attention_mask  # [B, T]
            positions = context.batch.position_ids if context.positions is None else (
                context.positions)
            # z lives on its layer's device (device maps), the batch on the main device
            values = z.detach()[real.to(z.device)].to(torch.float64).cpu()  # [n_real, H, d]
            sums[context.layer].index_add_(0, positions[real].cpu(), values)

        def count(batch: Batch) -> None:
            real = batch.attention_mask
            counts.index_add_(0, batch.position_ids[real].cpu(),
                              torch.ones(int(real.sum()), dtype=torch.float64))

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


def pooled_head_means(
    model: Any,
    layers: Iterable[int],
    reference: Prompts,
    *,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[int, torch.Tensor]:
    """``{layer: [H, d_head]}``: the pooled mean of every head's ``z`` over every real token
    of every ``reference`` prompt (:attr:`HeadMean.pooled` of :func:`compute_head_means`,
    stacked over the heads of each layer).

    The mean-ablation value of the fast scans (mean ablation: Wang et al. 2022,
    "Interpretability in the Wild"; Heimersheim & Nanda 2024); sums in float64, returned in
    float32 on the CPU.
    """
    spec = describe_model(model)
    layer_list = sorted(set(spec.check_layers(list(layers))))
    heads = [(layer, head) for layer in layer_list for head in range(spec.n_heads)]
    means = compute_head_means(model, heads, reference, batch_size=batch_size,
                               progress=progress)
    return {layer: torch.stack([means[(layer, head)].pooled for head in range(spec.n_heads)])
            for layer in layer_list}


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
        per_position: use the mean at the same absolute position ``pos(b, t)``
            ([T_ref, d_head]); positions beyond the longest reference prompt fall back to
            the pooled mean. ``False``: the pooled mean over all positions ([d_head])
            everywhere.
        means: precomputed :func:`compute_head_means` output (then ``reference`` is unused).
    """
    spec, grouped = prepare(model, heads)
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
    # on the main device; each layer's hook reads them on its own device (device maps)
    table = OnDevice({(h, part): getattr(means[h], part).to(device) for h in wanted
                      for part in ("per_position", "pooled", "counts")})

    def transform(z: torch.Tensor, layer: int, head: int, at: torch.Tensor) -> torch.Tensor:
        pooled = table[((layer, head), "pooled"), z.device]
        if not per_position:
            return pooled.expand_as(z)
        by_position = table[((layer, head), "per_position"), z.device]
        width = by_position.shape[0]
        index = at.clamp(0, width - 1)  # [B, T]
        valid = (at < width) & (table[((layer, head), "counts"), z.device][index] > 0)
        return torch.where(valid[..., None], by_position[index], pooled)

    return z_hooks(spec, grouped, transform)


@dataclass
class ResampleSource:
    """Cached ``z`` of some heads on source prompts.

    Attributes:
        z: ``{(layer, head): [N_src, T_src, d_head]}`` indexed by absolute position (zeros
            after a prompt's end).
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
    """Run ``sources`` once and keep the targeted heads' ``z`` ([N_src, T_src, d_head] each,
    by absolute position)."""
    spec = describe_model(model)
    head_list = normalize_heads(spec, heads)
    grouped = heads_by_layer(head_list)
    token_lists = encode_prompts(model, sources, spec)  # any prompt kind, images included
    lengths = torch.tensor([len(ids) for ids in token_lists])
    width = int(lengths.max())
    with torch.inference_mode(False):  # ordinary tensors also under inference_mode
        store = {h: torch.zeros(len(token_lists), width, spec.d_head) for h in head_list}

        def reducer(z: torch.Tensor, context: ReduceContext) -> None:
            batch = context.batch
            real = batch.attention_mask.cpu()
            positions = (batch.position_ids if context.positions is None
                         else context.positions).cpu()
            rows = batch.indices.cpu()[:, None].expand_as(real)
            for head in grouped[context.layer]:
                values = z[:, :, head].detach().float().cpu()[real]  # [n_real, d_head]
                store[(context.layer, head)][rows[real], positions[real]] = values

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
    """Resample ablation: ``z_h[b, t] <- z_h`` of a *source* prompt at the same absolute
    position.

    Definition used here: the targeted heads' ``z`` are cached on the ``sources`` prompts.
    Each batch row ``b`` uses one source prompt ``s_b`` for all targeted heads (as a
    resampled activation in causal scrubbing would), drawn uniformly among the sources that
    reach the row's last position, and gets ``z_h[s_b, pos(b, t)]`` at each column ``t``.
    The draw comes from a generator seeded with ``seed`` and owned by the hooks:

    - in an independent forward pass, one draw per pass (draws advance with each forward;
      eligible: sources with at least as many tokens as the pass's widest prompt);
    - inside a generation (:func:`headprobe.runtime.decode.generate` publishes a session
      and row ids), one draw per row for the whole generation from a generator re-seeded
      for that generation, so the KV-cached and the recomputing routes see the same source.
      The source must then also reach the generated positions.

    Use sources of the same template as the prompts (e.g. a task's corrupt prompts) so that
    positions mean the same thing.

    Raises (at forward time) :class:`InterventionError` when no source reaches a position.
    """
    spec, grouped = prepare(model, heads)
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
    cached = OnDevice({h: source.z[h].to(device) for h in wanted})  # read on z's device
    lengths = source.lengths
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, Any] = {"session": None, "picks": {}, "generator": None}

    def eligible_for(needed: int) -> torch.Tensor:
        eligible = torch.nonzero(lengths >= needed).flatten()
        if eligible.numel() == 0:
            raise InterventionError(
                f"resample ablation: no source prompt has {needed} tokens (longest: "
                f"{int(lengths.max())}); give longer source prompts")
        return eligible

    def choose(at: torch.Tensor) -> torch.Tensor:
        """[B, T] positions -> [B] source index per row."""
        needed = (at.max(-1).values + 1).cpu()  # pads hold position 0
        published = current_positions()
        if published is None or published.session is None or published.rows is None:
            eligible = eligible_for(int(needed.max()))
            picks = eligible[torch.randint(eligible.numel(), (at.shape[0],),
                                           generator=generator)]
            return picks.to(device)
        if state["session"] is not published.session:
            state.update(session=published.session, picks={},
                         generator=torch.Generator().manual_seed(seed))
        picks_list = []
        for key, need in zip(published.rows.tolist(), needed.tolist(), strict=True):
            if key not in state["picks"]:
                eligible = eligible_for(need)
                draw = torch.randint(eligible.numel(), (1,), generator=state["generator"])
                state["picks"][key] = int(eligible[draw])
            pick = state["picks"][key]
            if int(lengths[pick]) < need:
                raise InterventionError(
                    f"resample ablation: no source prompt for position {need - 1}: the "
                    f"source drawn for row {key} has {int(lengths[pick])} tokens; give "
                    "source prompts at least as long as prompt + generated tokens")
            picks_list.append(pick)
        return torch.tensor(picks_list, device=device)

    draws: dict[str, torch.Tensor] = {}
    first_layer = min(grouped)

    def transform(z: torch.Tensor, layer: int, head: int, at: torch.Tensor) -> torch.Tensor:
        if layer == first_layer and head == grouped[layer][0]:
            draws["rows"] = choose(at)  # one draw per forward pass, shared by all layers
        table = cached[(layer, head), z.device]
        index = at.clamp(0, table.shape[1] - 1)
        return table[draws["rows"].to(z.device)[:, None], index]

    return z_hooks(spec, grouped, transform)
