"""Attribution patching: node and edge scores from gradients instead of one run per patch.

Attribution patching (Nanda 2023, "Attribution Patching: Activation Patching At Industrial
Scale"; Syed, Rager & Conmy 2023, "Attribution Patching Outperforms Automated Circuit
Discovery") replaces the effect of patching activation ``a`` from the corrupt into the clean
run by its first-order estimate::

    M(clean with a <- a_corrupt) - M(clean)  ~  (a_corrupt - a_clean) . dM/da |clean

Edge attribution patching (EAP, Syed et al.) scores an edge ``u -> v`` between an upstream
component ``u`` (writes ``a_u`` into the residual stream) and a downstream component ``v`` (reads
the residual stream) as ``(a_u_corrupt - a_u_clean) . dM/dx_v``, where ``x_v`` is ``v``'s own copy
of the residual stream. EAP-IG (Hanna, Pezzelle & Belinkov 2024, "Have Faith in Faithfulness:
Going Beyond Circuit Overlap When Finding Model Mechanisms") replaces the gradient at the clean
run by its average over ``m`` points on the straight line between the corrupt and the clean
input embeddings (integrated gradients, Sundararajan et al. 2017)::

    grad_v = (1/m) sum_{k=1..m} dM/dx_v |_{e_corrupt + (k/m)(e_clean - e_corrupt)}

With ``m = 1`` this is plain EAP (the gradient at the clean run). This is Hanna et al.'s
"EAP-IG-inputs" (their code takes ``k = 0..m-1``, i.e. includes the corrupt end instead of the
clean one; on the IOI benchmark the endpoint rule changes nothing that matters).

EAP-IG over activations (``method="eap-ig-act"``; Hanna et al.'s "EAP-IG-activations", done
here one upstream *site* at a time, each site's path being a straight line in its own
activation space). The sites are the embedding, each layer's heads (their ``z``, jointly) and
each MLP's output. For site ``s`` with output ``o_s`` and every other upstream site clean::

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
``eap-ig``; ``eap-ig-act-head`` runs ``H`` times the rows at the head sites.

Why input-IG disagrees with exact noising of one head (measured on IOI, ``bench/RESULTS.md``):
along the input path every upstream activation moves from corrupt to clean *together*, so a
head's gradient is taken where the rest of the circuit is half-corrupted. There the downstream
circuit is at its most sensitive (the gradient at the top head's z is 5x its value at the
clean run halfway along the path), and heads whose single-head noising effect is small, because
the rest of the clean circuit compensates, get large scores. Input-IG apportions the *joint*
clean -> corrupt change among the heads (as the exact IG flow through each head, its
conductance, does; Dhamdhere et al. 2018), a different quantity from per-head noising (or
denoising), and no choice of endpoints or more steps changes that. Interpolating one site's own
activations with everything else clean follows the noising path itself.

:func:`compare_to_exact` reports any estimator's agreement (Pearson, Spearman, top-k overlap)
with exact noising patching (:func:`headprobe.fastscan.scan_heads`).

M is the logit difference ``logit[answer] - logit[distractor]`` at each prompt's last token
(:mod:`headprobe.metrics`); scores are summed over positions and averaged over prompts, in
logit-difference units (divide by ``LD_clean - LD_corrupt``, given in the metadata, to
normalise).

Residual decomposition (the design choice, and its approximation):

- Downstream inputs ``x_v``: the bridge's split-input hooks, switched on for the call only
  (``use_split_qkv_input``, restored afterwards): ``blocks.{l}.attn.hook_q_input``
  [B, T, H, d_model] and ``hook_k_input`` / ``hook_v_input`` [B, T, H_kv, d_model] (one per kv
  head under grouped-query attention), each a per-consumer copy of the *pre-norm* residual
  stream. The MLP's own gradient is ``grad(hook_resid_mid) - grad(hook_resid_post)`` (the
  bridge's ``hook_resid_mid`` carries the whole stream, skip connection included); the logits
  node reads ``ln_final.hook_in``. The gradient wrt the residual stream is exactly the sum of
  these (tested: the embedding's edges add up to ``LD_corrupt - LD_clean`` as IG converges).
- Upstream outputs ``a_u`` [B, T, d_model]: the embedding (``blocks.0.hook_resid_pre``); each
  head's ``z_h @ W_O[h]^T``; each MLP's ``resid_post - resid_mid``. They sum exactly to the
  residual stream. On models with a norm after attention (Gemma 3's post-attention RMSNorm)
  a head's write is taken through that norm with the scale of the run frozen
  (``a_h = s * w (.) z_h W_O[h]^T``, ``s`` per position and run), so the heads still sum to
  the attention block's true output; the dependence of ``s`` on a single head is ignored.
- Node scores: ``z`` per head (``hook_z``, [B, T, H, d_head]); q per head and k / v per kv head
  as the input nodes ``(x_corrupt - x_clean) . dM/dx_v`` with ``x`` the residual stream entering
  the layer; ``mlp`` per layer likewise.

Gradients are taken under ``torch.enable_grad`` with every model parameter's
``requires_grad`` switched off for the call and restored afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from headprobe.arch import ModelSpec
from headprobe.errors import TaskError, UsageError
from headprobe.fastscan.patching import shared_prefix_length
from headprobe.headtable import HeadTable
from headprobe.inputs import Batch, fingerprint, iter_batches
from headprobe.metrics import final_logits, logit_difference
from headprobe.models import describe_model
from headprobe.provenance import Timer, result_meta
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
from headprobe.tasks.base import Task, TaskItem
from headprobe.tasks.pairs import ScanData, prepare_scan_data
from headprobe.weights import head_output_weights, hf_module

MIN_IG_STEPS, MAX_IG_STEPS = 5, 100
METHODS = ("eap", "eap-ig", "eap-ig-act", "eap-ig-act-head")
ACT_ROWS_PER_PASS = 64  # eap-ig-act: interpolation steps stacked up to this many rows per pass
REFERENCE = ("Nanda 2023 'Attribution Patching'; Syed et al. 2023 'Attribution Patching "
             "Outperforms Automated Circuit Discovery'; Hanna et al. 2024 'Have Faith in "
             "Faithfulness'")


@dataclass
class AttributionResult:
    """Node and edge attribution scores.

    Attributes:
        nodes: ``{"z": HeadTable, "q": HeadTable, "k": HeadTable, "v": HeadTable}``; ``z`` and
            ``q`` have one row per (layer, head); ``k`` and ``v`` one row per (layer, kv head)
            (``head`` = ``kv_head`` = the kv head index; ``H_kv`` rows per layer).
        mlp: DataFrame ``layer``, ``score``: MLP input node scores.
        edges: DataFrame ``upstream``, ``downstream``, ``score`` (and ``abs_score``), one row per
            edge where the upstream component runs before the downstream one. Names:
            ``embed``, ``a{l}.h{h}``, ``m{l}`` upstream; ``a{l}.h{h}.q``, ``a{l}.kv{g}.k``,
            ``a{l}.kv{g}.v``, ``m{l}``, ``logits`` downstream.
        meta: method, steps, prompt count, mean clean / corrupt logit differences, timings.
    """

    nodes: dict[str, HeadTable]
    mlp: pd.DataFrame
    edges: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Model state: no parameter gradients, split inputs on


@contextmanager
def _gradient_mode(model: Any) -> Iterator[None]:
    """Parameters frozen and split q/k/v inputs on, all restored on exit."""
    params = [p for p in model.parameters() if p.requires_grad]
    split = bool(getattr(model.cfg, "use_split_qkv_input", False))
    try:
        for param in params:
            param.requires_grad_(False)
        model.set_use_split_qkv_input(True)
        with torch.enable_grad():
            yield
    finally:
        model.set_use_split_qkv_input(split)
        for param in params:
            param.requires_grad_(True)


# ---------------------------------------------------------------------------------------------
# Upstream activations


@dataclass
class _Upstream:
    """One run's upstream writes and node activations (all detached).

    ``writes``: [n_up, B, T, d_model] (embed, heads layer-major, MLPs); ``z`` {l: [B,T,H,dh]};
    ``resid_pre`` {l: [B,T,d]}; ``resid_mid`` {l: [B,T,d]}; ``ld``: [B].
    """

    writes: torch.Tensor
    z: dict[int, torch.Tensor]
    resid_pre: dict[int, torch.Tensor]
    resid_mid: dict[int, torch.Tensor]
    ld: torch.Tensor


def _post_norm(model: Any, layer: int, spec: ModelSpec) -> Any | None:
    """The HF post-attention norm module of ``layer`` (Gemma 3), or None."""
    name = spec.facts.post_attention_norm
    if not spec.facts.has_post_attention_norm or name is None:
        return None
    return hf_module(model, f"{spec.facts.layers_path}.{layer}.{name}")


def _head_writes(model: Any, spec: ModelSpec, layer: int, z: torch.Tensor,
                 attn_out: torch.Tensor) -> torch.Tensor:
    """[H, B, T, d_model] each head's write into the residual stream (see module docstring),
    in float32 whatever the model's dtype (``z`` [B, T, H, d_head], ``attn_out`` [B, T, d])."""
    z, attn_out = z.float(), attn_out.float()
    w_o = head_output_weights(model, spec, layer).float()  # [H, d_head, d_model]
    per_head = torch.einsum("bthd,hdm->hbtm", z, w_o)
    norm = _post_norm(model, layer, spec)
    if norm is None:
        return per_head
    # Frozen-scale post-norm: attn_out = s * w (.) sum_h c_h with w from the norm of ones
    # (up to a constant) and s solved per position by least squares (exact for an RMSNorm).
    total = per_head.sum(0)
    with torch.no_grad():
        param = next(norm.parameters(), None)
        dtype = param.dtype if param is not None else z.dtype
        w = norm(torch.ones(spec.d_model, dtype=dtype, device=z.device)).float()
    weighted = total * w
    scale = (attn_out * weighted).sum(-1, keepdim=True) / (weighted * weighted).sum(
        -1, keepdim=True).clamp_min(1e-30)
    return per_head * w * scale


def _collect_upstream(model: Any, spec: ModelSpec, batch: Batch, answers: torch.Tensor,
                      distractors: torch.Tensor) -> _Upstream:
    """One run's activations through :func:`headprobe.runtime.hooks.capture` (nothing edited)."""
    kinds = ("z", "resid_pre", "resid_mid", "resid_post")
    names = {(kind, layer): spec.hooks.at(kind, layer) for kind in kinds
             for layer in range(spec.n_layers)}
    with torch.no_grad(), capture(model, list(names.values())) as seen:
        logits = forward_batch(model, batch)
    check_fired(seen, list(names.values()))
    store: dict[str, dict[int, torch.Tensor]] = {kind: {} for kind in kinds}
    for (kind, layer), name in names.items():
        store[kind][layer] = seen[name]
    ld = logit_difference(final_logits(logits, batch.last), answers, distractors)
    writes = [store["resid_pre"][0][None]]
    for layer in range(spec.n_layers):
        attn_out = store["resid_mid"][layer].float() - store["resid_pre"][layer].float()
        writes.append(_head_writes(model, spec, layer, store["z"][layer], attn_out))
    for layer in range(spec.n_layers):
        writes.append((store["resid_post"][layer].float()
                       - store["resid_mid"][layer].float())[None])
    writes[0] = writes[0].float()
    return _Upstream(torch.cat(writes), store["z"], store["resid_pre"], store["resid_mid"], ld)


# ---------------------------------------------------------------------------------------------
# Downstream gradients


@dataclass
class _Grads:
    """Gradients of sum-over-prompts M, averaged over IG steps (accumulated in float32).

    ``q`` {l: [B,T,H,d]}, ``k``/``v`` {l: [B,T,H_kv,d]}, ``mid`` / ``post`` {l: [B,T,d]} (total
    gradients at resid_mid / resid_post), ``logits`` [B,T,d], ``z`` {l: [B,T,H,d_head]}.
    """

    def mlp(self, layer: int) -> torch.Tensor:
        """[B, T, d] gradient wrt MLP ``layer``'s own copy of the residual stream."""
        return self.mid[layer] - self.post[layer]

    q: dict[int, torch.Tensor] = field(default_factory=dict)
    k: dict[int, torch.Tensor] = field(default_factory=dict)
    v: dict[int, torch.Tensor] = field(default_factory=dict)
    mid: dict[int, torch.Tensor] = field(default_factory=dict)
    post: dict[int, torch.Tensor] = field(default_factory=dict)
    z: dict[int, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None

    def add(self, kind: str, layer: int, grad: torch.Tensor, weight: float) -> None:
        if kind == "logits":
            self.logits = grad * weight if self.logits is None else self.logits + grad * weight
            return
        table = getattr(self, kind)
        table[layer] = grad * weight if layer not in table else table[layer] + grad * weight


# gradient kind -> HookNames field. The bridge's hook_resid_mid (ln2.hook_in) carries the
# whole residual stream after attention (the skip connection reads the hooked value), so its
# gradient is the total one; the MLP branch's own gradient is that minus the gradient at
# hook_resid_post.
_GRAD_HOOKS = {"q": "q_input", "k": "k_input", "v": "v_input", "mid": "resid_mid",
               "post": "resid_post", "z": "z"}


def _integrated_grads(model: Any, spec: ModelSpec, batch: Batch, clean_embed: torch.Tensor,
                      corrupt_embed: torch.Tensor, answers: torch.Tensor,
                      distractors: torch.Tensor, alphas: Sequence[float]) -> _Grads:
    """Average gradients of sum_b LD_b over the inputs ``e_corrupt + alpha (e_clean - e_corrupt)``.
    """
    grads = _Grads()
    weight = 1.0 / len(alphas)

    def grab(kind: str, layer: int) -> Callable[..., torch.Tensor]:
        # The hook returns the tensor it got: for hooks whose shape the bridge converts
        # (hook_z is o.hook_in reshaped to [B, T, H, d_head]) only a returned tensor stays
        # on the graph, so only then does its gradient hook fire.
        def hook(act: torch.Tensor, hook: Any = None) -> torch.Tensor:
            if act.requires_grad:
                act.register_hook(lambda g: grads.add(kind, layer, g.detach().float(),
                                                      weight))
            return act
        return hook

    grab_hooks = [(spec.hooks.at(field_name, layer), grab(kind, layer))
                  for kind, field_name in _GRAD_HOOKS.items() for layer in range(spec.n_layers)]
    grab_hooks.append((spec.hooks.final_norm_in, grab("logits", -1)))
    for alpha in alphas:
        embed = (corrupt_embed + alpha * (clean_embed - corrupt_embed)).requires_grad_(True)

        def replace(act: torch.Tensor, hook: Any = None, embed: torch.Tensor = embed
                    ) -> torch.Tensor:
            return embed

        hooks = [(spec.hooks.at("resid_pre", 0), replace), *grab_hooks]
        with attached(model, hooks):
            logits = forward_batch(model, batch)
            metric = logit_difference(final_logits(logits, batch.last), answers,
                                      distractors).sum()
            metric.backward()
    return grads


# ---------------------------------------------------------------------------------------------
# Public API


def _names(spec: ModelSpec) -> tuple[list[str], list[str], list[int], list[int]]:
    """Upstream / downstream names and the layer at which each is written / read.

    Upstream layer: -1 for embed, l for heads and MLP l. Downstream read layer: l for the
    attention inputs of layer l, l + 0.5 (as 2l+1 in doubled units) for MLP l, 2L for logits.
    Doubled units: upstream head at 2l, MLP at 2l+1, embed -1; downstream attention input at
    2l, MLP input at 2l+1, logits 2L. An edge exists when upstream < downstream.
    """
    up, up_pos = ["embed"], [-1]
    for layer in range(spec.n_layers):
        for head in range(spec.n_heads):
            up.append(f"a{layer}.h{head}")
            up_pos.append(2 * layer)
    for layer in range(spec.n_layers):
        up.append(f"m{layer}")
        up_pos.append(2 * layer + 1)
    down, down_pos = [], []
    for layer in range(spec.n_layers):
        down += [f"a{layer}.h{h}.q" for h in range(spec.n_heads)]
        down += [f"a{layer}.kv{g}.k" for g in range(spec.n_kv_heads)]
        down += [f"a{layer}.kv{g}.v" for g in range(spec.n_kv_heads)]
        down_pos += [2 * layer] * (spec.n_heads + 2 * spec.n_kv_heads)
    for layer in range(spec.n_layers):
        down.append(f"m{layer}")
        down_pos.append(2 * layer + 1)
    down.append("logits")
    down_pos.append(2 * spec.n_layers)
    return up, down, up_pos, down_pos


def _downstream_grads(grads: _Grads, spec: ModelSpec) -> torch.Tensor:
    """[n_down, B, T, d_model] in the order of :func:`_names`."""
    parts = []
    for layer in range(spec.n_layers):
        parts += [grads.q[layer].permute(2, 0, 1, 3), grads.k[layer].permute(2, 0, 1, 3),
                  grads.v[layer].permute(2, 0, 1, 3)]
    parts += [grads.mlp(layer)[None] for layer in range(spec.n_layers)]
    assert grads.logits is not None
    parts.append(grads.logits[None])
    return torch.cat(parts)


def _check_method(method: str, steps: int) -> list[float]:
    """The interpolation points ``alphas`` of ``method`` with ``steps`` (see module docstring)."""
    if method not in METHODS:
        raise UsageError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    if method == "eap":
        return [1.0]
    if method == "eap-ig":
        if not MIN_IG_STEPS <= steps <= MAX_IG_STEPS:
            raise UsageError(
                f"EAP-IG steps must be in {MIN_IG_STEPS}..{MAX_IG_STEPS}, got {steps}")
        return [k / steps for k in range(1, steps + 1)]
    if not 1 <= steps <= MAX_IG_STEPS:
        raise UsageError(f"{method} steps must be in 1..{MAX_IG_STEPS}, got {steps}")
    return [(k - 0.5) / steps for k in range(1, steps + 1)]  # midpoint rule


def attribution_patching(
    model: Any,
    task: Task | Sequence[TaskItem],
    *,
    method: str = "eap-ig",
    steps: int = 5,
    edges: bool = True,
    batch_size: int = 8,
    progress: bool = True,
) -> AttributionResult:
    """Node (z, q, k, v, mlp) and edge attribution scores for a task's clean / corrupt pairs.

    Args:
        model: a TransformerLens bridge (rotary pre-norm decoders: llama family, Gemma 3).
        task: a :class:`Task` or items with prompts, single-token answers and distractors and
            corrupt prompts of equal token length.
        method: ``eap`` (gradient at the clean run: Nanda 2023 / Syed et al. 2023),
            ``eap-ig`` (gradients averaged over ``steps`` points between the corrupt and clean
            input embeddings: Hanna et al. 2024's EAP-IG-inputs) or ``eap-ig-act`` (integrated
            gradients over each upstream layer's own activations, one layer at a time, every
            other upstream activation clean: estimates per-component noising; module
            docstring) or ``eap-ig-act-head`` (the same with each head its own site: tends to
            exact per-head noising). ``eap-ig-act`` costs ``2L + 1`` forward + backward
            passes (over ``steps x batch`` rows, from the interpolated layer on, shared prefix
            skipped) per batch instead of ``steps``; ``eap-ig-act-head`` ``H`` times the rows
            at the head sites.
        steps: integrated-gradient steps: 5..100 for ``eap-ig`` (right Riemann sum, points
            ``k/m``), 1..100 for ``eap-ig-act(-head)`` (midpoint rule, points
            ``(k - 1/2)/m``);
            ignored for ``eap``.
        edges: also return the edge table (costs an [n_up x n_down] product per batch;
            ``eap-ig-act`` computes the edges in any case, its input nodes are their sums).
        batch_size: prompts per forward / backward pass.
        progress: tqdm bar over batches x steps (``eap-ig-act(-head)``: batches x sites).

    Returns:
        An :class:`AttributionResult`. Every score estimates ``M(clean with the component's
        input / output from the corrupt run) - M(clean)`` in logit-difference units, averaged
        over prompts.

    Raises:
        UsageError: unknown method or steps out of range.
        TaskError: an item has no corrupt prompt.
        NotImplementedError: ``eap-ig-act`` on an architecture
            :func:`headprobe.runtime.layers.run_from_layer` does not support.
    """
    alphas = _check_method(method, steps)
    return _attribute(model, task, alphas=alphas, edges=edges, batch_size=batch_size,
                      progress=progress, method=method)


@dataclass
class _Scores:
    """Score sums over prompts (float64, on the CPU): ``z`` / ``q`` [L, H], ``k`` / ``v``
    [L, H_kv], ``mlp`` [L], ``edges`` [n_up, n_down]."""

    z: torch.Tensor
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    mlp: torch.Tensor
    edges: torch.Tensor

    @classmethod
    def zeros(cls, spec: ModelSpec, n_up: int, n_down: int) -> _Scores:
        heads = torch.zeros(spec.n_layers, spec.n_heads, dtype=torch.float64)
        kv = torch.zeros(spec.n_layers, spec.n_kv_heads, dtype=torch.float64)
        return cls(heads, heads.clone(), kv, kv.clone(),
                   torch.zeros(spec.n_layers, dtype=torch.float64),
                   torch.zeros(n_up, n_down, dtype=torch.float64))


def _input_ig_batch(model: Any, spec: ModelSpec, clean: Batch, up_clean: _Upstream,
                    up_corrupt: _Upstream, answers: torch.Tensor, distractors: torch.Tensor,
                    alphas: Sequence[float], edges: bool, scores: _Scores, bar: Any) -> None:
    """EAP / EAP-IG (input interpolation) scores of one batch, added to ``scores``."""
    with _gradient_mode(model):
        grads = _Grads()
        for alpha in alphas:  # one point at a time keeps the bar honest
            step = _integrated_grads(model, spec, clean, up_clean.resid_pre[0],
                                     up_corrupt.resid_pre[0], answers, distractors, [alpha])
            for kind in ("q", "k", "v", "mid", "post", "z"):
                for layer, grad in getattr(step, kind).items():
                    grads.add(kind, layer, grad, 1.0 / len(alphas))
            assert step.logits is not None
            grads.add("logits", -1, step.logits, 1.0 / len(alphas))
            bar.update(1)
    real = clean.attention_mask[:, :, None].to(torch.float64)
    with torch.no_grad():
        for layer in range(spec.n_layers):
            dz = up_corrupt.z[layer].double() - up_clean.z[layer].double()
            scores.z[layer] += (dz * grads.z[layer].double()).sum((0, 1, 3)).cpu()
            dx = ((up_corrupt.resid_pre[layer].double()
                   - up_clean.resid_pre[layer].double()) * real)
            scores.q[layer] += torch.einsum("btd,bthd->h", dx, grads.q[layer].double()).cpu()
            scores.k[layer] += torch.einsum("btd,bthd->h", dx, grads.k[layer].double()).cpu()
            scores.v[layer] += torch.einsum("btd,bthd->h", dx, grads.v[layer].double()).cpu()
            dm = ((up_corrupt.resid_mid[layer].double()
                   - up_clean.resid_mid[layer].double()) * real)
            scores.mlp[layer] += (dm * grads.mlp(layer).double()).sum().cpu()
        if edges:
            delta = (up_corrupt.writes - up_clean.writes) * real.float()[None]
            down_grads = _downstream_grads(grads, spec).float()
            scores.edges += torch.einsum("und,vnd->uv", delta.flatten(1, 2),
                                         down_grads.flatten(1, 2)).double().cpu()


def _attribute(model: Any, task: Task | Sequence[TaskItem], *, alphas: Sequence[float],
               edges: bool, batch_size: int, progress: bool, method: str) -> AttributionResult:
    """The engine behind :func:`attribution_patching` (any list of IG points ``alphas``)."""
    spec = describe_model(model)
    activations = method in ("eap-ig-act", "eap-ig-act-head")
    if activations:
        check_supported(model)
    timer = Timer()
    data: ScanData = prepare_scan_data(model, task, need_corrupt=True)
    if data.corrupt is None:
        raise TaskError("attribution patching needs a corrupt_prompt for every item")
    device = model_device(model)
    pad = spec.pad_token_id if spec.pad_token_id is not None else 0
    clean_batches = list(iter_batches(data.clean, batch_size, pad_token_id=pad, device=device))
    corrupt_batches = list(iter_batches(data.corrupt, batch_size, pad_token_id=pad,
                                        device=device))
    up, down, up_pos, down_pos = _names(spec)
    scores = _Scores.zeros(spec, len(up), len(down))
    ld_clean = ld_corrupt = 0.0
    passes = 0
    if activations:
        total = len(clean_batches) * (2 * spec.n_layers + 1)
    else:
        total = len(clean_batches) * len(alphas)
    bar = tqdm(total=total, desc=method, disable=not progress, leave=False)
    try:
        for clean, corrupt in zip(clean_batches, corrupt_batches, strict=True):
            rows = clean.indices.cpu()
            answers, distractors = data.answers[rows], data.distractors[rows]
            up_clean = _collect_upstream(model, spec, clean, answers, distractors)
            up_corrupt = _collect_upstream(model, spec, corrupt, answers, distractors)
            ld_clean += float(up_clean.ld.sum())
            ld_corrupt += float(up_corrupt.ld.sum())
            if activations:
                passes += _activation_ig_batch(model, spec, clean, corrupt, up_clean,
                                               up_corrupt, answers, distractors, alphas,
                                               scores, bar, method == "eap-ig-act-head")
            else:
                _input_ig_batch(model, spec, clean, up_clean, up_corrupt, answers,
                                distractors, alphas, edges, scores, bar)
                passes += len(alphas)
    finally:
        bar.close()
    n = len(data.clean)
    meta = result_meta(
        kind="attribution", name=method, spec=spec,
        params={"method": method, "steps": len(alphas), "edges": edges,
                "batch_size": batch_size},
        fingerprint=fingerprint(data.clean + data.corrupt), n_prompts=n, timer=timer,
        description=f"{method} node and edge attribution scores (logit difference)",
        reference=REFERENCE, method=method, steps=len(alphas), alphas=list(alphas),
        task=data.name, batch_size=batch_size, mean_ld_clean=ld_clean / n,
        mean_ld_corrupt=ld_corrupt / n, backward_passes=passes,
        metric="logit_diff (sum over positions, mean over prompts)")
    nodes = {
        "z": HeadTable.from_grid((scores.z / n).float(), spec,
                                 meta={**meta, "scorer": f"{method}_z"}),
        "q": HeadTable.from_grid((scores.q / n).float(), spec,
                                 meta={**meta, "scorer": f"{method}_q"}),
        "k": HeadTable.from_kv_grid((scores.k / n).float(), spec,
                                    meta={**meta, "scorer": f"{method}_k"}),
        "v": HeadTable.from_kv_grid((scores.v / n).float(), spec,
                                    meta={**meta, "scorer": f"{method}_v"}),
    }
    mlp = pd.DataFrame({"layer": range(spec.n_layers), "score": (scores.mlp / n).numpy()})
    edge_frame = _edge_frame(scores.edges / n, up, down, up_pos, down_pos) if edges else \
        pd.DataFrame(columns=["upstream", "downstream", "score", "abs_score"])
    edge_frame.attrs = dict(meta)
    return AttributionResult(nodes, mlp, edge_frame, meta)


# ---------------------------------------------------------------------------------------------
# EAP-IG over activations, one upstream layer at a time


def _shared_prefix(model: Any, clean: Batch, corrupt: Batch,
                   up_clean: _Upstream) -> PrefixKV | None:
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
    """Columns of the downstream axis of :func:`_names` per (kind, layer): ``q`` / ``k`` /
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


def _activation_ig_batch(model: Any, spec: ModelSpec, clean: Batch, corrupt: Batch,
                         up_clean: _Upstream, up_corrupt: _Upstream, answers: torch.Tensor,
                         distractors: torch.Tensor, alphas: Sequence[float], scores: _Scores,
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
               chunk: Sequence[float], weight: float, up_clean: _Upstream,
               up_corrupt: _Upstream, start: int, delta: torch.Tensor, clean: Batch,
               answers: torch.Tensor, distractors: torch.Tensor, prefix: PrefixKV | None,
               layer_inputs: LayerInputs, scores: _Scores, edges: torch.Tensor) -> None:
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
    with _gradient_mode(model):
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


def _edge_frame(scores: torch.Tensor, up: list[str], down: list[str], up_pos: list[int],
                down_pos: list[int]) -> pd.DataFrame:
    valid = torch.tensor(up_pos)[:, None] < torch.tensor(down_pos)[None, :]
    u_index, v_index = torch.nonzero(valid, as_tuple=True)
    values = scores[u_index, v_index].float().numpy()
    frame = pd.DataFrame({
        "upstream": [up[i] for i in u_index.tolist()],
        "downstream": [down[i] for i in v_index.tolist()],
        "score": values,
    })
    frame["abs_score"] = frame["score"].abs()
    return frame


# ---------------------------------------------------------------------------------------------
# Agreement with exact activation patching


@dataclass
class Agreement:
    """How well an estimator's z-node scores match exact noising patching of each head's z.

    Attributes:
        method, steps: the estimator (:func:`attribution_patching`'s arguments).
        pearson, spearman: correlations over all ``n_heads`` (layer, head) scores.
        top_k_overlap: heads in both top-``top_k`` sets by ``|score|``.
        top_k, n_heads: the ``k`` used and the number of heads compared.
        seconds_estimate, seconds_exact: run times (``None`` when passed in without timings).
        estimate: the z-node :class:`HeadTable`; exact: the exact scan's :class:`HeadTable`
            (:func:`headprobe.fastscan.scan_heads`, noising, logit difference).
    """

    method: str
    steps: int
    pearson: float
    spearman: float
    top_k_overlap: int
    top_k: int
    n_heads: int
    seconds_estimate: float | None
    seconds_exact: float | None
    estimate: HeadTable
    exact: HeadTable

    def as_dict(self) -> dict[str, Any]:
        """The scalar fields (JSON-ready)."""
        return {name: getattr(self, name) for name in (
            "method", "steps", "pearson", "spearman", "top_k_overlap", "top_k", "n_heads",
            "seconds_estimate", "seconds_exact")}


def agreement(estimate: Any, exact: Any, top_k: int = 20) -> dict[str, float | int]:
    """Pearson, Spearman and top-``k`` overlap (by ``|score|``) of two score vectors.

    Args:
        estimate, exact: equal-length arrays (any shape, flattened), finite.
        top_k: size of the two top sets (clipped to the length).

    Raises:
        UsageError: different lengths, fewer than 2 entries, or non-finite values.
    """
    from scipy.stats import pearsonr, spearmanr

    a = np.asarray(estimate, dtype=np.float64).ravel()
    b = np.asarray(exact, dtype=np.float64).ravel()
    if a.shape != b.shape or a.size < 2:
        raise UsageError(f"need two score vectors of equal length >= 2, got {a.size} and "
                         f"{b.size}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise UsageError("scores must be finite (scan every layer)")
    k = max(1, min(top_k, a.size))
    top_a = set(np.argsort(-np.abs(a), kind="stable")[:k].tolist())
    top_b = set(np.argsort(-np.abs(b), kind="stable")[:k].tolist())
    return {"pearson": float(pearsonr(a, b)[0]), "spearman": float(spearmanr(a, b)[0]),
            "top_k_overlap": len(top_a & top_b), "top_k": k, "n_heads": int(a.size)}


def compare_to_exact(
    model: Any,
    task: Task | Sequence[TaskItem],
    *,
    method: str = "eap-ig-act",
    steps: int = 5,
    top_k: int = 20,
    batch_size: int = 8,
    result: AttributionResult | None = None,
    exact: HeadTable | None = None,
    progress: bool = False,
) -> Agreement:
    """Agreement of an estimator's z-node scores with exact noising patching on ``task``.

    Exact: :func:`headprobe.fastscan.scan_heads` with ``method="patch"``,
    ``direction="noising"``, ``metric="logit_diff"`` (corrupt z of one head into the clean
    run, all positions), the quantity every estimator here approximates.

    Args:
        model, task: as for :func:`attribution_patching`.
        method, steps: the estimator (ignored when ``result`` is given).
        top_k: size of the top sets compared.
        batch_size: prompts per pass of both runs.
        result: an :class:`AttributionResult` already computed on ``task`` (not rerun).
        exact: the exact scan's :class:`HeadTable` already computed on ``task`` (not rerun).
        progress: tqdm bars.

    Returns:
        An :class:`Agreement`.
    """
    from headprobe.fastscan import scan_heads

    if result is None:
        result = attribution_patching(model, task, method=method, steps=steps, edges=False,
                                      batch_size=batch_size, progress=progress)
    if exact is None:
        exact = scan_heads(model, task, method="patch", direction="noising",
                           metric="logit_diff", batch_size=batch_size, progress=progress)
    estimate = result.nodes["z"]
    keys = ["layer", "head"]
    merged = estimate.data[[*keys, "score"]].merge(exact.data[[*keys, "score"]], on=keys,
                                                   suffixes=("_estimate", "_exact"))
    scores = agreement(merged["score_estimate"].to_numpy(), merged["score_exact"].to_numpy(),
                       top_k)

    def seconds(meta: dict[str, Any]) -> float | None:
        value = meta.get("timings_s", {}).get("total")
        return float(value) if value is not None else None

    return Agreement(method=str(result.meta.get("method", method)),
                     steps=int(result.meta.get("steps", steps)),
                     pearson=float(scores["pearson"]), spearman=float(scores["spearman"]),
                     top_k_overlap=int(scores["top_k_overlap"]), top_k=int(scores["top_k"]),
                     n_heads=int(scores["n_heads"]), seconds_estimate=seconds(result.meta),
                     seconds_exact=seconds(exact.meta),
                     estimate=estimate, exact=exact)
