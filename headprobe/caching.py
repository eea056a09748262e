"""Streaming activation caching.

A full ``run_with_cache`` keeps every activation of every prompt. headprobe instead runs the
prompts in padded batches, attaches hooks only at the points a scorer asks for, and hands each
activation to a *reducer* while the forward pass is still running, so at most one layer's
activation of one batch is alive at a time and memory stays flat as the prompt count grows.

Reducers never edit the activation they receive (the hooks return ``None``), so a reducer
cannot change the forward pass or a cache that someone else holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from tqdm.auto import tqdm

from headprobe.arch import ModelSpec
from headprobe.batching import PaddingSide, TokenBatch, iter_batches

# reducer(activation, batch, layer) -> None; the activation must not be modified.
Reducer = Callable[[torch.Tensor, TokenBatch, int], None]


@contextmanager
def attached(model: Any, fwd_hooks: Sequence[tuple[str, Callable[..., Any]]]) -> Any:
    """Attach forward hooks for the duration of a block; they are removed even on error."""
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        yield model


def model_device(model: Any) -> torch.device:
    return next(model.original_model.parameters()).device


def stream_reduce(
    model: Any,
    spec: ModelSpec,
    token_lists: Sequence[torch.Tensor],
    reducers: dict[str, Reducer],
    *,
    layers: Iterable[int] | None = None,
    batch_size: int = 8,
    padding_side: PaddingSide = "right",
    progress: bool = True,
    desc: str = "batches",
    on_batch_end: Callable[[TokenBatch], None] | None = None,
) -> None:
    """Run every prompt once and feed the requested activations to reducers.

    Args:
        model: a TransformerLens bridge.
        spec: its :class:`ModelSpec`.
        token_lists: the tokenized prompts (see :func:`headprobe.batching.tokenize_prompts`).
        reducers: ``{hook kind: reducer}``, where the kind is a :class:`HookNames` field
            (``pattern``, ``z``, ``q``, ...); the reducer is called once per layer per batch
            with the activation, the :class:`TokenBatch` and the layer index.
        layers: layers to hook (default: all).
        batch_size, padding_side: batching of the prompts.
        progress: show a tqdm bar over batches.
        on_batch_end: called after each batch's forward pass (e.g. to checkpoint).
    """
    layer_list = list(range(spec.n_layers)) if layers is None else list(layers)
    for layer in layer_list:
        spec.check_layer(layer)
    device = model_device(model)
    pad = spec.pad_token_id if spec.pad_token_id is not None else 0
    n_batches = -(-len(token_lists) // batch_size)
    batches = iter_batches(token_lists, batch_size, pad_token_id=pad,
                           padding_side=padding_side, device=device)
    for batch in tqdm(batches, total=n_batches, desc=desc, disable=not progress, leave=False):
        hooks = [
            (spec.hooks.at(kind, layer), partial(_call_reducer, reducer, batch, layer))
            for kind, reducer in reducers.items()
            for layer in layer_list
        ]
        with torch.inference_mode(), attached(model, hooks):
            model(batch.tokens, **batch.forward_kwargs())
        if on_batch_end is not None:
            on_batch_end(batch)


def _call_reducer(reducer: Reducer, batch: TokenBatch, layer: int,
                  activation: torch.Tensor, hook: Any) -> None:
    reducer(activation, batch, layer)


def collect_per_prompt(
    model: Any,
    spec: ModelSpec,
    token_lists: Sequence[torch.Tensor],
    kind: str,
    reduce: Callable[[torch.Tensor, TokenBatch], torch.Tensor],
    *,
    layers: Iterable[int] | None = None,
    batch_size: int = 8,
    padding_side: PaddingSide = "right",
    progress: bool = True,
    desc: str = "batches",
) -> torch.Tensor:
    """Reduce one hook kind per prompt and layer; returns ``[N, n_layers_hooked, ...]`` on CPU.

    ``reduce(activation, batch)`` must return a tensor whose first dimension is the batch.
    """
    layer_list = list(range(spec.n_layers)) if layers is None else list(layers)
    position = {layer: i for i, layer in enumerate(layer_list)}
    rows: dict[int, list[torch.Tensor | None]] = {}

    def reducer(activation: torch.Tensor, batch: TokenBatch, layer: int) -> None:
        out = reduce(activation, batch).detach().cpu()
        for row, index in enumerate(batch.indices.tolist()):
            rows.setdefault(index, [None] * len(layer_list))[position[layer]] = out[row]

    stream_reduce(model, spec, token_lists, {kind: reducer}, layers=layer_list,
                  batch_size=batch_size, padding_side=padding_side, progress=progress, desc=desc)
    return torch.stack([torch.stack(rows[i]) for i in range(len(token_lists))])  # type: ignore[arg-type]
