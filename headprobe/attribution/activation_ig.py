"""EAP-IG over activations (``method="eap-ig-act"`` / ``"eap-ig-act-head"``).

Hanna et al.'s (2024, "Have Faith in Faithfulness") "EAP-IG-activations", done here one
upstream *site* at a time, each site's path being a straight line in its own activation space.
The sites are the embedding, each layer's heads (their ``z``, jointly) and each MLP's output.
For site ``s`` with output ``o_s`` and every other upstream site clean::

    o_s(alpha) = o_s_corrupt + alpha (o_s_clean - o_s_corrupt),   alpha_k = (k - 1/2) / m
    node  z_h:     (z_h_corrupt - z_h_clean) . (1/m) sum_k dM/dz_h   |_(o_s(alpha_k))
    edge u -> v:   (a_u_corrupt - a_u_clean) . (1/m) sum_k dM/dx_v   |_(o_s(alpha_k)),  u in s

(midpoint rule, error O(1/m^2)), everything downstream of ``s`` recomputed from the
interpolated value. ``method="eap-ig-act-head"`` makes every head its own site (head ``h``'s
``z_h`` moves, the other heads of its layer stay clean; MLP and embedding sites as above): its
path is then exactly the noising intervention, so its z-node scores tend to exact per-head
noising patching as ``m`` grows (tested), and its edges out of a head use the gradient of the
runs where only that head moves.

By the completeness of integrated gradients (Sundararajan et al. 2017) the scores of a site's
components sum, as ``m`` grows, to the exact effect of noising the whole site,
``M(clean with o_s <- o_s_corrupt) - M(clean)`` (tested); with ``eap-ig-act`` one head's score
estimates its own noising effect up to the interaction between heads of the same layer.
Input nodes (q / k / v per head or kv head, MLP inputs) are the sums of their incoming edges
(the corrupt-minus-clean input is the sum of the upstream writes' differences). Cost: ``2L + 1``
forward + backward passes per batch (each over ``m x B`` rows, up to ``ACT_ROWS_PER_PASS`` rows a
pass, from the site's layer on and only over the positions after the prefix that every clean /
corrupt pair shares: :func:`headprobe.runtime.layers.run_from_layer` with a
:class:`~headprobe.runtime.layers.PrefixKV`, as the fast scans do), against ``m`` for
``eap-ig`` (:mod:`headprobe.attribution.inputs_ig`); ``eap-ig-act-head`` runs ``H`` times the
rows at the head sites.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from headprobe.arch import ModelSpec
from headprobe.attribution.common import Scores, Upstream, gradient_mode
from headprobe.fastscan.patching import shared_prefix_length
from headprobe.inputs import Batch
from headprobe.metrics import logit_difference
from headprobe.runtime.layers import (
    LayerInputs,
    PrefixKV,
    build_layer_inputs,
    record_kv,
    rows_sliceable,
    run_from_layer,
)

ACT_ROWS_PER_PASS = 64  # eap-ig-act: interpolation steps stacked up to this many rows per pass


def _shared_prefix(model: Any, clean: Batch, corrupt: Batch,
                   up_clean: Upstream) -> PrefixKV | None:
    """Keys / values of the positions every pair of the batch shares (fastscan's prefix
    reuse: :func:`headprobe.fastscan.shared_prefix_length`), or None."""
    length = shared_prefix_length(clean, corrupt)
    if length == 0:
        return None
    try:
        with torch.no_grad():
            return record_kv(model, up_clean.resid_pre[0][:, :length],
                             clean.attention_mask[:, :length], clean.position_ids[:, :length])
    except NotImplementedError:  # attention ignores past_key_values: full-sequence path
        return None


def _down_slices(spec: ModelSpec) -> dict[tuple[str, int], slice]:
    """Columns of the downstream axis of :func:`node_names` per (kind, layer): ``q`` / ``k`` /
    ``v`` of each layer, ``mlp`` of each layer, ``logits`` (layer -1)."""
    per_layer = spec.n_heads + 2 * spec.n_kv_heads
    out: dict[tuple[str, int], slice] = {}
    for layer in range(spec.n_layers):
        base = layer * per_layer
        out[("q", layer)] = slice(base, base + spec.n_heads)
        out[("k", layer)] = slice(base + spec.n_heads, base + spec.n_heads + spec.n_kv_heads)
        out[("v", layer)] = slice(base + spec.n_heads + spec.n_kv_heads, base + per_layer)
        out[("mlp", layer)] = slice(spec.n_layers * per_layer + layer,
                                    spec.n_layers * per_layer + layer + 1)
    out[("logits", -1)] = slice(spec.n_layers * (per_layer + 1),
                                spec.n_layers * (per_layer + 1) + 1)
    return out


def _sites(spec: ModelSpec) -> list[tuple[str, int, int, slice]]:
    """Upstream sites ``(kind, layer, first layer run, rows of the upstream axis)``: the
    embedding, each layer's heads (interpolated at ``hook_z``), each MLP (interpolated as the
    residual entering the next layer)."""
    heads = spec.n_heads
    out = [("embed", -1, 0, slice(0, 1))]
    for layer in range(spec.n_layers):
        out.append(("attn", layer, layer, slice(1 + layer * heads, 1 + (layer + 1) * heads)))
        mlp_row = 1 + spec.n_layers * heads + layer
        out.append(("mlp", layer, layer + 1, slice(mlp_row, mlp_row + 1)))
    return out


def activation_ig_batch(model: Any, spec: ModelSpec, clean: Batch, corrupt: Batch,
                        up_clean: Upstream, up_corrupt: Upstream, answers: torch.Tensor,
                        distractors: torch.Tensor, alphas: Sequence[float], scores: Scores,
                        bar: Any, per_head: bool) -> int:
    """EAP-IG over activations (module docstring) for one batch, added to ``scores``; returns
    the number of forward + backward passes.

    Site ``s`` (embedding, layer ``l``'s heads, MLP ``l``): its output ``o_s(alpha) = o_s^corr +
    alpha (o_s^clean - o_s^corr)`` at the points ``alphas`` is the leaf; the run starts at the
    first layer after it from the clean residual (only positions ``P..T-1`` run, the shared
    prefix entering as keys/values). Rows of a pass: ``G x c x B`` (group, step, prompt; the
    prompt index fastest), ``G = H`` for a layer's heads with ``per_head`` (group ``g``
    interpolates head ``g`` only), else 1. Gradients of ``sum_b LD_b`` at the leaf give the z
    nodes, those at every downstream input the edges.
    """
    size, seq = clean.size, clean.seq_len
    sites = _sites(spec)
    plans: list[tuple[tuple[str, int, int, slice], int, list[list[float]]]] = []
    for site in sites:
        groups = spec.n_heads if per_head and site[0] == "attn" else 1
        per_pass = max(1, ACT_ROWS_PER_PASS // (groups * size))
        plans.append((site, groups, [list(alphas[i:i + per_pass])
                                     for i in range(0, len(alphas), per_pass)]))
    layer_inputs: dict[int, LayerInputs] = {}
    for _, groups, chunks in plans:  # full-sequence masks / rotary per row count
        for chunk in chunks:
            rows = groups * len(chunk)
            if rows not in layer_inputs:
                full = up_clean.resid_pre[0][:1, :1].expand(rows * size, seq, -1)
                layer_inputs[rows] = build_layer_inputs(
                    model, full, clean.attention_mask.repeat(rows, 1),
                    clean.position_ids.repeat(rows, 1))
    prefix = None
    if all(rows_sliceable(inputs) for inputs in layer_inputs.values()):
        prefix = _shared_prefix(model, clean, corrupt, up_clean)
    start = prefix.length if prefix is not None else 0
    real = clean.attention_mask[:, start:, None].float()  # [B, S, 1]
    delta = (up_corrupt.writes - up_clean.writes)[:, :, start:] * real[None]  # [n_up, B, S, d]
    edges = torch.zeros_like(scores.edges)
    passes = 0
    for site, groups, chunks in plans:
        for chunk in chunks:
            _site_pass(model, spec, site, groups, chunk, 1.0 / len(alphas), up_clean,
                       up_corrupt, start, delta, clean, answers, distractors, prefix,
                       layer_inputs[groups * len(chunk)], scores, edges)
            passes += 1
        bar.update(1)
    # input nodes: the sum of their incoming edges (the corrupt-minus-clean input of a
    # downstream component is the sum of the upstream writes' differences)
    down = _down_slices(spec)
    scores.edges += edges
    column = edges.sum(0)
    for layer in range(spec.n_layers):
        scores.q[layer] += column[down[("q", layer)]]
        scores.k[layer] += column[down[("k", layer)]]
        scores.v[layer] += column[down[("v", layer)]]
        scores.mlp[layer] += column[down[("mlp", layer)]].sum()
    return passes


def _site_pass(model: Any, spec: ModelSpec, site: tuple[str, int, int, slice], groups: int,
               chunk: Sequence[float], weight: float, up_clean: Upstream,
               up_corrupt: Upstream, start: int, delta: torch.Tensor, clean: Batch,
               answers: torch.Tensor, distractors: torch.Tensor, prefix: PrefixKV | None,
               layer_inputs: LayerInputs, scores: Scores, edges: torch.Tensor) -> None:
    """One forward + backward pass with ``site`` interpolated at the points ``chunk``; adds
    ``weight x`` its z-node scores to ``scores.z`` and its edge scores to ``edges``.

    Gradients are reduced as they arrive (tensor hooks), never stored: for a downstream input
    ``x_v`` [rows, S, (heads,) d] the edge block is ``delta_u . sum_steps grad_v`` per group.
    """
    kind, layer, first, up_rows = site
    size, copies = clean.size, groups * len(chunk)
    dtype = up_clean.resid_pre[0].dtype
    alpha = torch.tensor(list(chunk), device=delta.device).repeat_interleave(size)
    alpha = alpha.repeat(groups)  # [rows]: group-major, then step, then prompt

    def interp(clean_value: torch.Tensor, corrupt_value: torch.Tensor,
               reps: int) -> torch.Tensor:
        shape = (reps,) + (1,) * (clean_value.ndim - 1)
        c, x = clean_value.float().repeat(shape), corrupt_value.float().repeat(shape)
        return x + alpha.reshape((-1,) + (1,) * (clean_value.ndim - 1)) * (c - x)

    hooks: list[tuple[str, Callable[..., torch.Tensor]]] = []
    if kind == "embed":
        leaf = interp(up_clean.resid_pre[0][:, start:], up_corrupt.resid_pre[0][:, start:],
                      copies).to(dtype).requires_grad_(True)
        resid, position = leaf, -1
    elif kind == "attn":
        z_clean, z_corrupt = up_clean.z[layer][:, start:], up_corrupt.z[layer][:, start:]
        moved = interp(z_clean, z_corrupt, copies)  # [rows, S, H, d_head], all heads moved
        if groups > 1:  # group g moves head g only
            keep = z_clean.float().repeat(copies, 1, 1, 1)
            own = torch.arange(groups, device=moved.device).repeat_interleave(
                len(chunk) * size)
            chosen = own[:, None] == torch.arange(spec.n_heads, device=moved.device)[None]
            moved = torch.where(chosen[:, None, :, None], moved, keep)
        leaf = moved.to(dtype).requires_grad_(True)
        resid = up_clean.resid_pre[layer][:, start:].repeat(copies, 1, 1)
        position = 2 * layer

        def replace(act: torch.Tensor, hook: Any = None) -> torch.Tensor:
            return leaf

        hooks.append((spec.hooks.at("z", layer), replace))
    else:  # MLP: the residual entering the next layer, resid_mid (clean) + MLP output
        row = 1 + spec.n_layers * spec.n_heads + layer
        mid = up_clean.resid_mid[layer][:, start:].float()
        leaf = interp(mid + up_clean.writes[row][:, start:],
                      mid + up_corrupt.writes[row][:, start:], copies).to(dtype)
        leaf.requires_grad_(True)
        resid, position = leaf, 2 * layer + 1
    down = _down_slices(spec)
    site_delta = delta[up_rows].double()  # [n_site, B, S, d]
    last = clean.last - start

    def reduce(grad: torch.Tensor) -> torch.Tensor:
        """[rows, ...] -> [G, B, ...] summed over the steps, float64."""
        grad = grad.detach().double()
        return grad.reshape(groups, len(chunk), size, *grad.shape[1:]).sum(1)

    def sink(key: tuple[str, int], sign: float) -> Callable[[torch.Tensor], None]:
        def hook(grad: torch.Tensor) -> None:
            if grad.ndim == 2:  # logits: the final norm ran on the read columns only
                spread = grad.new_zeros(grad.shape[0], site_delta.shape[2], grad.shape[-1])
                spread[torch.arange(grad.shape[0]), last.repeat(copies)] = grad
                grad = spread
            total = reduce(grad)  # [G, B, S, (h,) d]
            heads = total.ndim == 5
            if groups == 1:
                block = torch.einsum("ubsd,bshd->uh" if heads else "ubsd,bsd->u",
                                     site_delta, total[0])
            else:
                block = torch.einsum("ubsd,ubshd->uh" if heads else "ubsd,ubsd->u",
                                     site_delta, total)
            edges[up_rows, down[key]] += sign * weight * block.reshape(
                site_delta.shape[0], -1).cpu()
        return hook

    def watch(key: tuple[str, int], sign: float) -> Callable[..., torch.Tensor]:
        def hook(act: torch.Tensor, hook: Any = None) -> torch.Tensor:
            if act.requires_grad:
                act.register_hook(sink(key, sign))
            return act
        return hook

    for later in range(first, spec.n_layers):
        if 2 * later > position:
            hooks += [(spec.hooks.at(f"{name}_input", later), watch((name, later), 1.0))
                      for name in ("q", "k", "v")]
        if 2 * later + 1 > position:  # the MLP's own gradient: grad(mid) - grad(post)
            hooks += [(spec.hooks.at("resid_mid", later), watch(("mlp", later), 1.0)),
                      (spec.hooks.at("resid_post", later), watch(("mlp", later), -1.0))]
    hooks.append((spec.hooks.final_norm_in, watch(("logits", -1), 1.0)))
    with gradient_mode(model):
        logits = run_from_layer(model, resid, first, clean.attention_mask.repeat(copies, 1),
                                clean.position_ids.repeat(copies, 1), hooks,
                                positions=clean.last.repeat(copies),
                                layer_inputs=layer_inputs, prefix=prefix)
        logit_difference(logits, answers.repeat(copies), distractors.repeat(copies)).sum() \
            .backward()
    if kind == "attn":
        assert leaf.grad is not None
        grad = reduce(leaf.grad)  # [G, B, S, H, d_head]
        if groups > 1:  # head g's gradient from group g
            index = torch.arange(groups, device=grad.device)
            grad = grad[index, :, :, index].permute(1, 2, 0, 3)[None]  # [1, B, S, H, d_head]
        dz = (z_corrupt.double() - z_clean.double())
        scores.z[layer] += weight * (dz * grad[0]).sum((0, 1, 3)).cpu()
