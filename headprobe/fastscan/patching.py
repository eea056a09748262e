"""All-head patching and ablation scans of a task's logit difference, reusing the unchanged
prefix of the forward pass.

Activation patching per head (Meng et al. 2022, "Locating and Editing Factual Associations in
GPT"; TransformerLens ``patching.get_act_patch_attn_head_out_all_pos``) and head ablation run
one full forward pass per (layer, head): ``L * H`` passes of ``L`` layers each. An
intervention at layer ``k`` leaves layers ``0..k-1`` unchanged, so this module

1. runs the base input once and caches the residual stream entering every layer
   (``hook_resid_pre``, [B, T, d_model]);
2. for layer ``k`` starts from that cached residual and runs only layers ``k..L-1``
   (:func:`run_from_layer`), reading out only the scored position;
3. batches the heads of a layer along the batch dimension: the prompts are repeated ``c``
   times and copy ``i`` intervenes on head ``heads[i]`` only;
4. for ``method="patch"`` also skips the positions the clean and corrupt prompts share. Let
   ``P`` be the first position where a clean and its corrupt prompt differ (the minimum over
   the prompts of a batch, and at most each prompt's last real token; prompts are right-padded
   so they all start at position 0). In a causal model every activation at a position
   ``p < P`` is the same in the clean, the corrupt and every patched run, so patching ``z``
   there changes nothing and the residual at ``p < P`` stays the base run's at every layer.
   Layers ``k..L-1`` then run on positions ``P..T-1`` of the cached residual only; the keys and
   values of positions ``0..P-1`` at every layer (after rotary and q/k norms, per kv head, as
   the attention uses them) are recorded once per batch from the base prompts
   (:func:`record_kv`) and handed to the attention as a past cache (:class:`PrefixKV`); the
   masks and rotary tables are the full-sequence ones cut to query rows ``P..T-1``, so the
   causal, padding and Gemma 3 sliding-window masks stay exact. Zero and mean ablation change
   every position (``P = 0``): they take the full-sequence path.

The numbers equal the plain loop of full forward passes (:func:`loop_scan`, kept as the
reference and as the fallback for architectures :func:`run_from_layer` does not support) to
float32 round-off.

Interventions (copy ``i`` of a stacked pass gets the one for head ``heads[i]``:
:mod:`headprobe.fastscan.copies`) on ``hook_z`` ([B, T, H, d_head], every position):

- ``patch``: denoising activation patching: the corrupt run with head ``h``'s ``z`` replaced by
  its value on the clean prompt (``direction="noising"`` swaps the roles: the clean run with
  the corrupt ``z``);
- ``zero``: the base (clean) run with head ``h``'s ``z`` set to 0;
- ``mean``: the base (clean) run with head ``h``'s ``z`` set to its mean over every real token
  of every prompt in the set ([d_head] per head:
  :func:`headprobe.interventions.means.pooled_head_means`, the pooled mean of
  :func:`~headprobe.interventions.means.compute_head_means`, so it equals
  ``mean_ablation(..., per_position=False)`` with the task's prompts as reference).

- ``scale_output``: head ``h``'s ``z`` multiplied by ``eps`` ("scaling contribution", Zhou et
  al. 2025);
- ``uniform_attention``: head ``h``'s query multiplied by ``eps`` after any query norm
  ("undifferentiated attention", Zhou et al. 2025; at
  :func:`~headprobe.interventions.query.query_hook_point`).

Copy ``i`` of a batched pass gets its replacement through
:func:`headprobe.interventions.heads.write_heads`, the interventions' own z-replacement; the
loop reference applies the registered interventions (:func:`headprobe.interventions.
build_hooks`) one head at a time.

Metrics (:mod:`headprobe.metrics`, at each prompt's last real token):

- ``logit_diff``: score = mean over prompts of ``LD(intervened) - LD(base)``, where
  ``LD = logit[answer] - logit[distractor]``;
- ``normalized_logit_diff``: score = ``(mean LD(intervened) - mean LD_corrupt) /
  (mean LD_clean - mean LD_corrupt)``, normalised on the means as in
  :func:`headprobe.metrics.aggregate_metric`: 1 = clean behaviour, 0 = corrupt behaviour (for
  ablation without corrupt prompts ``LD_corrupt`` is 0, i.e. ``mean LD(ablated) / mean
  LD_clean``); the ``std`` column is the spread of the per-prompt ratios.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from headprobe.arch import ModelSpec
from headprobe.errors import InterventionError, UnknownMethodError, UnknownMetricError
from headprobe.fastscan.copies import copies_hook, scaling_hooks
from headprobe.fastscan.effects import prompt_batches
from headprobe.fastscan.sums import REFERENCE, ScanSums, scan_table
from headprobe.headtable import HeadTable
from headprobe.inputs import Batch, fingerprint
from headprobe.interventions.means import pooled_head_means
from headprobe.metrics import check_finite, final_logits, logit_difference
from headprobe.models import describe_model
from headprobe.provenance import Timer
from headprobe.registry import unknown_name_message
from headprobe.runtime.forward import forward_batch
from headprobe.runtime.hooks import attached, capture, check_fired, model_device
from headprobe.runtime.layers import (
    LayerInputs,
    PrefixKV,
    build_layer_inputs,
    check_supported,
    record_kv,
    rows_sliceable,
    run_from_layer,
)
from headprobe.runtime.sdpa import fused_attention
from headprobe.tasks.base import Task, TaskItem
from headprobe.tasks.pairs import ScanData, prepare_scan_data
from headprobe.types import (
    DEFAULT_EPS,
    SCALING_METHODS,
    SCAN_METHODS,
    SCAN_METRICS,
    Direction,
    ScanMethod,
    ScanMetric,
    normalize_direction,
)

# ScanData and prepare_scan_data live in headprobe.tasks.pairs (shared with attribution and
# the patching engine); re-exported here for existing imports.
__all__ = ["REFERENCE", "ScanData", "loop_scan", "prepare_scan_data", "scan_heads",
           "scan_params", "scan_sums", "shared_prefix_length"]


# ---------------------------------------------------------------------------------------------
# Scans


@dataclass
class _BatchRuns:
    """Per-batch base data: base tokens, cached residuals, replacement z, reference LDs, and
    the shared prefix (``prefix``: base keys/values of the ``prefix.length`` leading positions
    where the clean and corrupt prompts agree; ``None``: no shared prefix is skipped)."""

    base: Batch
    resid: dict[int, torch.Tensor]
    source_z: dict[int, torch.Tensor] | None
    ld_base: torch.Tensor
    ld_clean: torch.Tensor
    ld_corrupt: torch.Tensor
    prefix: PrefixKV | None = None
    layer_inputs: dict[int, LayerInputs] = field(default_factory=dict)
    method: str = "patch"
    eps: float = DEFAULT_EPS
    fused: bool = False

    @property
    def start(self) -> int:
        """First position that is run (``P``; 0 without a prefix)."""
        return self.prefix.length if self.prefix is not None else 0


def _ld(logits: torch.Tensor, batch: Batch, answers: torch.Tensor,
        distractors: torch.Tensor) -> torch.Tensor:
    last = final_logits(logits, batch.last) if logits.ndim == 3 else logits
    return logit_difference(last, answers, distractors).float()


def _run_capture(model: Any, batch: Batch, spec: ModelSpec, kinds: Sequence[str],
                 layers: Sequence[int], fused: bool = False,
                 ) -> tuple[torch.Tensor, dict[str, dict[int, torch.Tensor]]]:
    """One full forward pass; logits [B, T, V] and ``{kind: {layer: activation}}`` clones
    (through :func:`headprobe.runtime.hooks.capture`; ``fused``: idle attentions run
    ``sdpa``)."""
    names = {(kind, layer): spec.hooks.at(kind, layer) for kind in kinds for layer in layers}
    with capture(model, list(names.values())) as seen, fused_attention(model, spec, fused):
        logits = forward_batch(model, batch)
    check_fired(seen, list(names.values()))
    store: dict[str, dict[int, torch.Tensor]] = {kind: {} for kind in kinds}
    for (kind, layer), name in names.items():
        store[kind][layer] = seen[name]
    return logits, store


def _prepare_runs(model: Any, spec: ModelSpec, data: ScanData, method: ScanMethod,
                  direction: Direction, batch_size: int, layers: Sequence[int],
                  need_resid: bool, mean_z: dict[int, torch.Tensor] | None,
                  eps: float = DEFAULT_EPS, fused: bool = False) -> list[_BatchRuns]:
    """Base runs of every batch; ``mean_z``: ``{layer: [H, d_head]}`` for ``method="mean"``."""
    device = model_device(model)
    clean_batches = prompt_batches(model, spec, data.clean, batch_size)
    corrupt_batches = (prompt_batches(model, spec, data.corrupt, batch_size)
                       if data.corrupt is not None else None)
    runs = []
    # record_kv starts from the residual entering layer 0, also when layer 0 is not scanned
    captured = sorted(set(layers) | {0}) if need_resid else list(layers)
    for index, clean in enumerate(clean_batches):
        rows = clean.indices.cpu()
        answers, distractors = data.answers[rows], data.distractors[rows]
        clean_logits, clean_store = _run_capture(
            model, clean, spec, ["resid_pre", "z"] if need_resid else ["z"], captured, fused)
        ld_clean = _ld(clean_logits, clean, answers, distractors)
        corrupt = corrupt_batches[index] if corrupt_batches is not None else None
        corrupt_store: dict[str, dict[int, torch.Tensor]] = {}
        if corrupt is not None:
            corrupt_logits, corrupt_store = _run_capture(
                model, corrupt, spec, ["resid_pre", "z"] if need_resid else ["z"], captured,
                fused)
            ld_corrupt = _ld(corrupt_logits, corrupt, answers, distractors)
        else:
            ld_corrupt = torch.zeros_like(ld_clean)
        source_z: dict[int, torch.Tensor] | None
        if method == "patch":
            assert corrupt is not None
            if direction == "denoising":
                base, base_store, source_z, ld_base = corrupt, corrupt_store, clean_store["z"], \
                    ld_corrupt
            else:
                base, base_store, source_z, ld_base = clean, clean_store, corrupt_store["z"], \
                    ld_clean
        else:
            base, base_store, ld_base = clean, clean_store, ld_clean
            if method != "mean":  # zero ablation and the scalings need no source values
                source_z = None
            else:
                assert mean_z is not None
                source_z = {layer: mean_z[layer].to(device)[None, None].expand(
                    clean.size, clean.seq_len, -1, -1) for layer in layers}
        resid = base_store.get("resid_pre", {}) if need_resid else {}
        prefix = None
        if need_resid and corrupt is not None and method == "patch":
            length = shared_prefix_length(clean, corrupt)
            if length > 0:
                try:
                    with fused_attention(model, spec, fused):
                        prefix = record_kv(model, base_store["resid_pre"][0][:, :length],
                                           base.attention_mask[:, :length],
                                           base.position_ids[:, :length])
                except NotImplementedError:  # attention ignores past_key_values: full path
                    prefix = None
        runs.append(_BatchRuns(base, resid, source_z, ld_base, ld_clean, ld_corrupt, prefix,
                               method=method, eps=eps, fused=fused))
    return runs


def shared_prefix_length(clean: Batch, corrupt: Batch) -> int:
    """``P``: positions ``0..P-1`` hold the same real tokens in every clean/corrupt pair.

    The first position where a pair's tokens differ, minimum over the batch, capped at each
    prompt's last real token (whose logits are read; an identical pair caps ``P`` there), and
    0 unless both batches are right-padded (every prompt starts at position 0).

    Args:
        clean, corrupt: batches of the same prompts' pairs (equal lengths), [B, T] tokens.
    """
    if (clean.tokens.shape != corrupt.tokens.shape or bool((clean.start != 0).any())
            or bool((corrupt.start != 0).any())):
        return 0
    differs = (clean.tokens != corrupt.tokens) & clean.attention_mask.bool()
    seq = torch.arange(clean.seq_len, device=differs.device)
    first = torch.where(differs, seq, clean.seq_len).min(dim=1).values  # [B]
    first = torch.minimum(first, clean.last.to(first.device))
    return int(first.min())


def _replacement(run: _BatchRuns, layer: int, heads: Sequence[int],
                 start: int = 0) -> torch.Tensor:
    """[c, B, T - start, d_head] replacement z for copies of ``heads`` at positions
    ``start..T-1`` (zeros for zero ablation)."""
    if run.source_z is None:  # zero ablation: broadcast by the hook
        return torch.zeros(1, 1, 1, 1, device=run.base.tokens.device)
    source = run.source_z[layer]  # [B, T, H, d_head]
    return source[:, start:, list(heads)].permute(2, 0, 1, 3)


def _score(values: torch.Tensor, run: _BatchRuns, metric: ScanMetric) -> torch.Tensor:
    """[..., B] intervened LDs -> [..., B] per-prompt effects."""
    if metric == "logit_diff":
        return values - run.ld_base
    return (values - run.ld_corrupt) / (run.ld_clean - run.ld_corrupt)


def check_scan_args(method: str, metric: str, direction: str, eps: float) -> Direction:
    """Validate a fast scan's method, metric, direction and eps; the normalised direction."""
    if method not in SCAN_METHODS:
        raise UnknownMethodError(unknown_name_message("fast-scan method", method, SCAN_METHODS))
    if method in SCALING_METHODS and not eps > 0:
        raise InterventionError(f"eps must be > 0, got {eps}")
    if metric not in SCAN_METRICS:
        raise UnknownMetricError(unknown_name_message("fast-scan metric", metric, SCAN_METRICS))
    return normalize_direction(direction)


def scan_sums(
    model: Any,
    data: ScanData,
    *,
    method: ScanMethod = "patch",
    metric: ScanMetric = "normalized_logit_diff",
    direction: Direction = "denoising",
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    heads_per_pass: int | None = None,
    progress: bool = True,
    fast: bool = True,
    eps: float = DEFAULT_EPS,
    mean_z: dict[int, torch.Tensor] | None = None,
    offset: int = 0,
    fused: bool = True,
) -> ScanSums:
    """The additive sums of a scan of ``data`` (:class:`~headprobe.fastscan.sums.ScanSums`):
    one shard of a sharded scan, or the whole of :func:`scan_heads` / :func:`loop_scan`.

    Args:
        data: the tokenized prompts (:func:`prepare_scan_data`; a shard:
            :meth:`ScanData.subset`).
        mean_z: ``{layer: [H, d_head]}`` pooled mean ``z`` for ``method="mean"``; default: the
            mean over ``data``'s clean prompts. A shard of prompts must be given the mean
            over all of them to equal the unsharded scan.
        offset: index of ``data``'s first prompt in the whole set (keys of
            ``prefix_lengths``).
        fused: let the fast scan run the fused ``sdpa`` attention in every layer where the
            intervention allows it (:func:`headprobe.runtime.sdpa.fused_attention`: z
            patching, ablation and output scaling do; a query edit inside the attention keeps
            that layer eager); ``False``: eager attention everywhere.
        Other arguments: as :func:`scan_heads` (``fast=False``: one forward per head).
    """
    direction = check_scan_args(method, metric, direction, eps)
    spec = check_supported(model) if fast else describe_model(model)
    layer_list = sorted(set(spec.check_layers(layers)))
    chunk = spec.n_heads if heads_per_pass is None else max(1, min(heads_per_pass, spec.n_heads))
    sums = ScanSums.zeros(spec.n_layers, spec.n_heads, has_corrupt=data.corrupt is not None)
    # mean ablation: the pooled mean of z over every real token of the clean prompts (the one
    # mean of z, headprobe.interventions.means: one streaming pass of its own)
    if method == "mean" and mean_z is None:
        mean_z = pooled_head_means(model, layer_list, data.clean, batch_size=batch_size)
    with torch.inference_mode():
        runs = _prepare_runs(model, spec, data, method, direction, batch_size, layer_list,
                             need_resid=fast, mean_z=mean_z, eps=eps,
                             fused=fast and fused)
        steps = len(runs) * len(layer_list)
        bar = tqdm(total=steps, desc="fastscan" if fast else "loop scan",
                   disable=not progress, leave=False)
        try:
            for run in runs:
                rows = run.base.indices.cpu()
                answers, distractors = data.answers[rows], data.distractors[rows]
                sums.prefix_lengths[offset + int(rows.min())] = run.start
                for layer in layer_list:
                    sums.n[layer] += run.base.size
                    for key in ("ld_clean", "ld_corrupt", "ld_base"):
                        getattr(sums, key)[layer] += float(getattr(run, key).double().sum())
                    for first in range(0, spec.n_heads, chunk):
                        heads = list(range(first, min(first + chunk, spec.n_heads)))
                        if fast:
                            values = _fast_values(model, spec, run, layer, heads, answers,
                                                  distractors)
                        else:
                            values = _loop_values(model, spec, run, layer, heads, answers,
                                                  distractors)
                        check_finite(values, f"intervened logit difference at layer {layer}")
                        effects = _score(values, run, metric).double().cpu()  # [c, B]
                        sums.effect[layer, heads] += effects.sum(1)
                        sums.effect_sq[layer, heads] += (effects ** 2).sum(1)
                        sums.value[layer, heads] += values.double().cpu().sum(1)
                    bar.update(1)
        finally:
            bar.close()
    return sums


def scan_params(method: str, metric: str, direction: str, layers: Sequence[int],
                heads_per_pass: int, fast: bool, eps: float) -> dict[str, Any]:
    """The ``params`` a scan's table records."""
    return {"method": method, "metric": metric, "direction": normalize_direction(direction),
            "eps": eps if method in SCALING_METHODS else None, "layers": list(layers),
            "heads_per_pass": heads_per_pass, "engine": "fastscan" if fast else "loop"}


def _scan(
    model: Any,
    task: Task | Sequence[TaskItem],
    *,
    method: ScanMethod,
    metric: ScanMetric,
    direction: Direction,
    layers: Sequence[int] | None,
    batch_size: int,
    heads_per_pass: int | None,
    progress: bool,
    fast: bool,
    eps: float = DEFAULT_EPS,
    fused: bool = True,
) -> HeadTable:
    check_scan_args(method, metric, direction, eps)
    spec = check_supported(model) if fast else describe_model(model)
    layer_list = sorted(set(spec.check_layers(layers)))
    timer = Timer()
    data = prepare_scan_data(model, task, need_corrupt=method == "patch")
    chunk = spec.n_heads if heads_per_pass is None else max(1, min(heads_per_pass, spec.n_heads))
    sums = scan_sums(model, data, method=method, metric=metric, direction=direction,
                     layers=layer_list, batch_size=batch_size, heads_per_pass=chunk,
                     progress=progress, fast=fast, eps=eps, fused=fused)
    return scan_table(
        sums, spec, metric=metric,
        params=scan_params(method, metric, direction, layer_list, chunk, fast, eps),
        fingerprint=fingerprint(data.clean + (data.corrupt or [])), task=data.name,
        batch_size=batch_size, timer=timer)


def _fast_values(model: Any, spec: ModelSpec, run: _BatchRuns, layer: int, heads: list[int],
                 answers: torch.Tensor, distractors: torch.Tensor) -> torch.Tensor:
    """[c, B] intervened LDs for ``heads`` at ``layer`` from the cached residual (positions
    ``run.start..T-1`` only, the shared prefix entering as keys/values)."""
    copies = len(heads)
    batch = run.base
    mask = batch.attention_mask.repeat(copies, 1)
    position_ids = batch.position_ids.repeat(copies, 1)
    if copies not in run.layer_inputs:  # full-sequence masks / rotary for c*B rows
        full = run.resid[layer][:1, :1].expand(copies * batch.size, batch.seq_len, -1)
        run.layer_inputs[copies] = build_layer_inputs(model, full, mask, position_ids)
        if not rows_sliceable(run.layer_inputs[copies]):  # e.g. flex-attention block masks
            run.prefix = None
    start = run.start
    resid = run.resid[layer][:, start:].repeat(copies, 1, 1)
    replacement = (None if run.method in SCALING_METHODS
                   else _replacement(run, layer, heads, start))
    hook = copies_hook(model, spec, run.method, layer, heads, copies, eps=run.eps,
                       replacement=replacement)
    # the hook is attached first, so a query edit inside the attention keeps its layer eager
    with attached(model, [hook]), fused_attention(model, spec, run.fused):
        logits = run_from_layer(model, resid, layer, mask, position_ids,
                                positions=batch.last.repeat(copies),
                                layer_inputs=run.layer_inputs[copies], prefix=run.prefix)
    ld = logit_difference(logits, answers.repeat(copies), distractors.repeat(copies))
    return ld.float().reshape(copies, batch.size)


def _loop_values(model: Any, spec: ModelSpec, run: _BatchRuns, layer: int, heads: list[int],
                 answers: torch.Tensor, distractors: torch.Tensor) -> torch.Tensor:
    """[c, B] intervened LDs: one full forward pass per head."""
    batch = run.base
    out = []
    for head in heads:
        if run.method in SCALING_METHODS:
            hooks = scaling_hooks(model, [(layer, head)], run.method, run.eps)
        else:
            hooks = [copies_hook(model, spec, run.method, layer, [head], 1,
                                 replacement=_replacement(run, layer, [head]))]
        with attached(model, hooks):
            logits = forward_batch(model, batch)
        out.append(_ld(logits, batch, answers, distractors))
    return torch.stack(out)


def scan_heads(
    model: Any,
    task: Task | Sequence[TaskItem],
    *,
    method: ScanMethod = "patch",
    metric: ScanMetric = "normalized_logit_diff",
    direction: Direction = "denoising",
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    heads_per_pass: int | None = None,
    progress: bool = True,
    eps: float = DEFAULT_EPS,
    fused: bool = True,
) -> HeadTable:
    """Patch or ablate every (layer, head) at all positions, with prefix reuse.

    Layer ``k`` runs from the cached residual entering it; for ``method="patch"`` only the
    positions from the first token where a batch's clean and corrupt prompts differ are
    rerun, the shared prefix entering as cached keys/values (module docstring, step 4;
    ``meta["shared_prefix_lengths"]`` gives the number of skipped positions per batch).

    Args:
        model: a bridge over a llama-family or Gemma 3 model.
        task: a :class:`Task` (or its items): prompts, single-token answers and distractors,
            and for ``method="patch"`` corrupt prompts of equal token length.
        method: ``patch`` (clean z into the corrupt run), ``zero`` or ``mean`` ablation,
            ``scale_output`` (z * eps) or ``uniform_attention`` (query * eps after any
            q norm).
        metric: ``logit_diff`` (mean change of the logit difference) or
            ``normalized_logit_diff`` ((mean LD - mean LD_corrupt) / (mean LD_clean - mean
            LD_corrupt)).
        direction: ``denoising`` (clean into corrupt) or ``noising`` (corrupt into clean).
        layers: layers to scan (default all); other layers get NaN.
        batch_size: prompts per batch; each pass runs ``batch_size * heads_per_pass`` rows.
        heads_per_pass: heads intervened on in one batched pass (default: all H heads).
        progress: tqdm bar over (batch, layer) steps.
        eps: the scale of ``scale_output`` / ``uniform_attention``.
        fused: run PyTorch's fused ``sdpa`` attention in every layer where the intervention
            allows it (z patching / ablation / output scaling: all layers; a query edit keeps
            its own layer eager); ``False``: the bridge's eager attention throughout.

    Returns:
        A :class:`HeadTable` (``score``: mean effect over prompts; ``std``: its standard
        deviation; ``mean_ld``: mean intervened logit difference) with metadata.

    Raises:
        NotImplementedError: unsupported architecture (use :func:`loop_scan`).
    """
    return _scan(model, task, method=method, metric=metric, direction=direction, layers=layers,
                 batch_size=batch_size, heads_per_pass=heads_per_pass, progress=progress,
                 fast=True, eps=eps, fused=fused)


def loop_scan(
    model: Any,
    task: Task | Sequence[TaskItem],
    *,
    method: ScanMethod = "patch",
    metric: ScanMetric = "normalized_logit_diff",
    direction: Direction = "denoising",
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    progress: bool = True,
    eps: float = DEFAULT_EPS,
) -> HeadTable:
    """The plain reference: one full forward pass (``model.hooks``) per (layer, head).

    Same arguments and result as :func:`scan_heads`; works on any bridge architecture.
    """
    return _scan(model, task, method=method, metric=metric, direction=direction, layers=layers,
                 batch_size=batch_size, heads_per_pass=1, progress=progress, fast=False,
                 eps=eps, fused=False)
