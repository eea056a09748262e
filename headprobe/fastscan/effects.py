"""Per-prompt effects of ablating each head on the next-token distribution, for every head.

Ships (Zhou et al. 2025, "On the Role of Attention Heads in Large Language Model Safety"):
for a prompt ``q`` and a head ``h``, ``KL(p_base || p_ablated)`` of the next-token
distribution at the last prompt position, ``sum_v p_base(v) (log p_base(v) - log
p_ablated(v))``. The reference runs one masked forward per head per prompt (``1 + L * H``
forwards per prompt). :func:`head_effects` gives the same numbers from the fast-scan engine:

1. one base forward per batch caches the residual stream entering every layer and the base
   log-probabilities at each prompt's last real token;
2. for layer ``k`` the ``H`` heads run together as ``H`` stacked copies of the batch, copy
   ``i`` ablating head ``i`` (:func:`headprobe.fastscan.copies.copies_hook`), through layers
   ``k..L-1`` only (:func:`headprobe.runtime.layers.run_from_layer`), reading out the last
   position's logits only.

Log-probabilities are computed with ``log_softmax`` in float64, so no ``1e-12`` guard is
needed (the reference's guard changes the KL by less than 1e-10 here).
:func:`loop_head_effects` is the reference's route, one full forward per (head, prompt
batch) with the registered intervention (:func:`headprobe.interventions.build_hooks`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from headprobe.arch import ModelSpec
from headprobe.checkpoint import Checkpoint
from headprobe.errors import InterventionError, UnknownMethodError
from headprobe.fastscan.copies import copies_hook, scaling_hooks
from headprobe.inputs import Batch, iter_batches
from headprobe.metrics import final_logits
from headprobe.models import describe_model
from headprobe.registry import unknown_name_message
from headprobe.runtime.forward import forward_batch
from headprobe.runtime.hooks import attached, capture, check_fired, model_device
from headprobe.runtime.layers import build_layer_inputs, check_supported, run_from_layer
from headprobe.runtime.sdpa import fused_attention
from headprobe.types import DEFAULT_EPS, SCALING_METHODS

__all__ = ["head_effects", "kl_divergence", "loop_head_effects"]


def kl_divergence(base_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """``KL(p || q)`` over the last axis from log-probabilities ([..., V] -> [...])."""
    return (base_logp.exp() * (base_logp - logp)).sum(-1)


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.double(), dim=-1)


def _check(method: str, eps: float) -> None:
    if method not in SCALING_METHODS:
        raise UnknownMethodError(unknown_name_message("head_effects method", method,
                                                      SCALING_METHODS))
    if not eps > 0:
        raise InterventionError(f"eps must be > 0 (the paper: 1e-4 .. 1e-5), got {eps}")


def prompt_batches(model: Any, spec: ModelSpec, prompts: Sequence[torch.Tensor],
                   batch_size: int) -> list[Batch]:
    """Right-padded batches of token-id prompts on the model's device."""
    pad = spec.pad_token_id if spec.pad_token_id is not None else 0
    return list(iter_batches(list(prompts), batch_size, pad_token_id=pad,
                             device=model_device(model)))


def head_effects(
    model: Any,
    prompts: Sequence[torch.Tensor],
    *,
    method: str = "uniform_attention",
    eps: float = DEFAULT_EPS,
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    heads_per_pass: int | None = None,
    progress: bool = True,
    checkpoint: Checkpoint | None = None,
    fused: bool = True,
) -> torch.Tensor:
    """``KL(p_base || p_ablated)`` at each prompt's last token for every (layer, head).

    Args:
        model: a bridge over a llama-family or Gemma 3 model (:func:`loop_head_effects`
            for the others).
        prompts: token id tensors [T_i] (e.g. :func:`headprobe.inputs.encode_prompts` of
            chat prompts).
        method: ``uniform_attention`` (query * eps, after any q norm) or ``scale_output``
            (head output z * eps).
        eps: the scale, > 0.
        layers: layers to scan (default all); others stay NaN.
        batch_size: prompts per batch; a pass runs ``batch_size * heads_per_pass`` rows.
        heads_per_pass: heads ablated in one stacked pass (default all H).
        checkpoint: resume per batch of prompts after a kill.
        fused: run the fused ``sdpa`` attention in every layer nobody listens to inside
            (:func:`headprobe.runtime.sdpa.fused_attention`: all layers for
            ``scale_output``; every layer but the ablated one for ``uniform_attention``,
            whose query edit needs the eager attention); ``False``: eager throughout.

    Returns:
        [N, L, H] float64 KL per prompt and head (NaN on unscanned layers).
    """
    _check(method, eps)
    spec = check_supported(model)
    layer_list = sorted(set(spec.check_layers(layers)))
    chunk = spec.n_heads if heads_per_pass is None else max(1, min(heads_per_pass, spec.n_heads))
    batches = prompt_batches(model, spec, prompts, batch_size)
    out = torch.full((len(prompts), spec.n_layers, spec.n_heads), float("nan"),
                     dtype=torch.float64)
    done = 0
    state = checkpoint.load() if checkpoint is not None else None
    if state is not None and tuple(state["effects"].shape) == tuple(out.shape):
        out.copy_(state["effects"])
        done = int(state["batches_done"])
    bar = tqdm(total=(len(batches) - done) * len(layer_list), desc=f"head effects ({method})",
               disable=not progress, leave=False)
    captured = sorted(set(layer_list))
    try:
        with torch.inference_mode():
            for index in range(done, len(batches)):
                batch = batches[index]
                names = [spec.hooks.at("resid_pre", layer) for layer in captured]
                with capture(model, names) as seen, fused_attention(model, spec, fused):
                    logits = forward_batch(model, batch)
                check_fired(seen, names)
                base_logp = _log_probs(final_logits(logits, batch.last))  # [B, V]
                rows = batch.indices.cpu()
                layer_inputs: dict[int, Any] = {}
                for layer in layer_list:
                    for first in range(0, spec.n_heads, chunk):
                        heads = list(range(first, min(first + chunk, spec.n_heads)))
                        copies = len(heads)
                        if copies not in layer_inputs:
                            full = seen[names[0]][:1, :1].expand(
                                copies * batch.size, batch.seq_len, -1)
                            layer_inputs[copies] = build_layer_inputs(
                                model, full, batch.attention_mask.repeat(copies, 1),
                                batch.position_ids.repeat(copies, 1))
                        resid = seen[spec.hooks.at("resid_pre", layer)].repeat(copies, 1, 1)
                        hook = copies_hook(model, spec, method, layer, heads, copies, eps=eps)
                        # attached first: a query edit keeps its own layer eager
                        with attached(model, [hook]), fused_attention(model, spec, fused):
                            ablated = run_from_layer(
                                model, resid, layer, batch.attention_mask.repeat(copies, 1),
                                batch.position_ids.repeat(copies, 1),
                                positions=batch.last.repeat(copies),
                                layer_inputs=layer_inputs[copies])
                        logp = _log_probs(ablated).reshape(copies, batch.size, -1)
                        kl = kl_divergence(base_logp[None], logp)  # [c, B]
                        out[rows, layer, first:first + copies] = kl.T.cpu()
                    bar.update(1)
                if checkpoint is not None:
                    checkpoint.save({"effects": out, "batches_done": index + 1},
                                    progress=f"batch {index + 1} of {len(batches)}")
    finally:
        bar.close()
    return out


def loop_head_effects(
    model: Any,
    prompts: Sequence[torch.Tensor],
    *,
    method: str = "uniform_attention",
    eps: float = DEFAULT_EPS,
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> torch.Tensor:
    """The reference's route: one full forward per (layer, head) and batch, with the
    registered intervention ``method`` on that head. Same result as :func:`head_effects`;
    works on every bridge architecture."""
    _check(method, eps)
    spec = describe_model(model)
    layer_list = sorted(set(spec.check_layers(layers)))
    batches = prompt_batches(model, spec, prompts, batch_size)
    out = torch.full((len(prompts), spec.n_layers, spec.n_heads), float("nan"),
                     dtype=torch.float64)
    bar = tqdm(total=len(batches) * len(layer_list) * spec.n_heads, desc="head effects (loop)",
               disable=not progress, leave=False)
    try:
        with torch.inference_mode():
            for batch in batches:
                rows = batch.indices.cpu()
                base_logp = _log_probs(final_logits(forward_batch(model, batch), batch.last))
                for layer in layer_list:
                    for head in range(spec.n_heads):
                        hooks = scaling_hooks(model, [(layer, head)], method, eps)
                        with attached(model, hooks):
                            logits = forward_batch(model, batch)
                        logp = _log_probs(final_logits(logits, batch.last))
                        out[rows, layer, head] = kl_divergence(base_logp, logp).cpu()
                        bar.update(1)
    finally:
        bar.close()
    return out
