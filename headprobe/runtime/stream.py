"""Streaming reduction of activations: hooks hand each activation to a reducer in the pass.

A full ``run_with_cache`` keeps every activation of every prompt. headprobe instead runs the
prompts in padded batches, attaches hooks only at the points a scorer asks for, and hands each
activation to a *reducer* while the forward pass is still running, so at most one layer's
activation of one batch is alive at a time and memory stays flat as the prompt count grows.

Reducers must not edit the activation they receive: the hooks return ``None``, and a reducer
that edits it in place raises :class:`~headprobe.errors.ReducerError` (the tensor's version
counter is compared before and after the call; the pass runs under ``torch.no_grad``, not
``inference_mode``, so that the counter exists).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from tqdm.auto import tqdm

from headprobe.arch import ModelSpec
from headprobe.errors import ReducerError
from headprobe.inputs import Batch, Encoded, PaddingSide, iter_batches
from headprobe.runtime.forward import forward_batch
from headprobe.runtime.hooks import attached, model_device


@dataclass(frozen=True)
class ReduceContext:
    """What a reducer is told besides the activation.

    Attributes:
        batch: the :class:`~headprobe.inputs.Batch` being run (the whole prompts).
        layer: the layer whose hook fired.
        step: ``None`` for a full forward pass over the prompts; during KV-cached decoding
            (:mod:`headprobe.runtime.decode`) ``0`` is the prefill and ``k >= 1`` the k-th
            generated token.
        positions: [B, T_step] absolute position (within each prompt) of every column of the
            activation; padding columns hold 0. For a full pass this is
            ``batch.position_ids``; in decode step ``k >= 1`` it is [B, 1].
    """

    batch: Batch
    layer: int
    step: int | None = None
    positions: torch.Tensor | None = None


# reducer(activation, context) -> None; the activation must not be modified.
Reducer = Callable[[torch.Tensor, ReduceContext], None]


def stream_reduce(
    model: Any,
    spec: ModelSpec,
    token_lists: Sequence[torch.Tensor | Encoded],
    reducers: dict[str, Reducer],
    *,
    layers: Iterable[int] | None = None,
    batch_size: int = 8,
    padding_side: PaddingSide = "right",
    progress: bool = True,
    desc: str = "batches",
    on_batch_end: Callable[[Batch], None] | None = None,
    start_batch: int = 0,
) -> None:
    """Run every prompt once and feed the requested activations to reducers.

    Args:
        model: a TransformerLens bridge.
        spec: its :class:`ModelSpec`.
        token_lists: the prompts, each a 1-D id tensor [T_i] or an
            :class:`~headprobe.inputs.Encoded` prompt (from
            :func:`headprobe.inputs.encode_prompts`: any prompt kind, text, chat or image),
            whose spans and extra inputs (``pixel_values`` [N_images, 3, H, W]) the batches
            carry to the forward pass.
        reducers: ``{hook kind: reducer}``, where the kind is a :class:`HookNames` field
            (``pattern``, ``z``, ``q``, ...); the reducer is called once per layer per batch
            with the activation and a :class:`ReduceContext` (batch, layer, positions).
        layers: layers to hook (default: all).
        batch_size, padding_side: batching of the prompts.
        progress: show a tqdm bar over batches.
        on_batch_end: called after each batch's forward pass (e.g. to checkpoint).
        start_batch: skip the first ``start_batch`` batches (no forward pass, no reducer or
            ``on_batch_end`` call): how a run resumed from a checkpoint
            (:mod:`headprobe.checkpoint`) leaves out the batches it already reduced.
    """
    if start_batch < 0:
        raise ValueError(f"start_batch must be >= 0, got {start_batch}")
    layer_list = list(range(spec.n_layers)) if layers is None else list(layers)
    for layer in layer_list:
        spec.check_layer(layer)
    device = model_device(model)
    pad = spec.pad_token_id if spec.pad_token_id is not None else 0
    n_batches = -(-len(token_lists) // batch_size)
    batches = iter_batches(token_lists, batch_size, pad_token_id=pad,
                           padding_side=padding_side, device=device)
    bar = tqdm(batches, total=n_batches, desc=desc, disable=not progress, leave=False)
    for index, batch in enumerate(bar):
        if index < start_batch:
            continue
        hooks = [
            (spec.hooks.at(kind, layer),
             partial(_call_reducer, reducer,
                     ReduceContext(batch, layer, None, batch.position_ids)))
            for kind, reducer in reducers.items()
            for layer in layer_list
        ]
        with torch.no_grad(), attached(model, hooks):
            forward_batch(model, batch)
        if on_batch_end is not None:
            on_batch_end(batch)


def _call_reducer(reducer: Reducer, context: ReduceContext, activation: torch.Tensor,
                  hook: Any) -> None:
    call_reducer(reducer, activation, context, getattr(hook, "name", "?"))


def call_reducer(reducer: Reducer, activation: torch.Tensor, context: ReduceContext,
                 hook_name: str) -> None:
    """Call ``reducer``; :class:`ReducerError` if it edited ``activation`` in place."""
    before = activation._version
    reducer(activation, context)
    if activation._version != before:
        raise ReducerError(
            f"a reducer edited the activation at {hook_name} in place; reducers must only "
            "read (compute on a copy: activation.float(), activation * x, ...)")


def collect_per_prompt(
    model: Any,
    spec: ModelSpec,
    token_lists: Sequence[torch.Tensor | Encoded],
    kind: str,
    reduce: Callable[[torch.Tensor, Batch], torch.Tensor],
    *,
    layers: Iterable[int] | None = None,
    batch_size: int = 8,
    padding_side: PaddingSide = "right",
    progress: bool = True,
    desc: str = "batches",
) -> torch.Tensor:
    """Reduce one hook kind per prompt and layer; returns ``[N, n_layers_hooked, ...]`` on CPU.

    ``token_lists``: 1-D id tensors or :class:`~headprobe.inputs.Encoded` prompts (any kind,
    images included), as for :func:`stream_reduce`. ``reduce(activation, batch)`` must return
    a tensor whose first dimension is the batch.
    """
    layer_list = list(range(spec.n_layers)) if layers is None else list(layers)
    position = {layer: i for i, layer in enumerate(layer_list)}
    rows: dict[int, list[torch.Tensor | None]] = {}

    def reducer(activation: torch.Tensor, context: ReduceContext) -> None:
        out = reduce(activation, context.batch).detach().cpu()
        for row, index in enumerate(context.batch.indices.tolist()):
            rows.setdefault(index, [None] * len(layer_list))[position[context.layer]] = out[row]

    stream_reduce(model, spec, token_lists, {kind: reducer}, layers=layer_list,
                  batch_size=batch_size, padding_side=padding_side, progress=progress, desc=desc)
    return torch.stack([torch.stack(rows[i]) for i in range(len(token_lists))])  # type: ignore[arg-type]
