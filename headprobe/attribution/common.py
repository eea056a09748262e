"""Shared plumbing of attribution patching: the residual decomposition, gradient mode, names.

Edge attribution patching (EAP, Syed, Rager & Conmy 2023, "Attribution Patching Outperforms
Automated Circuit Discovery") scores an edge ``u -> v`` between an upstream component ``u``
(writes ``a_u`` into the residual stream) and a downstream component ``v`` (reads the residual
stream) as ``(a_u_corrupt - a_u_clean) . dM/dx_v``, where ``x_v`` is ``v``'s own copy of the
residual stream. Every estimator of the package (:mod:`headprobe.attribution.inputs_ig`,
:mod:`headprobe.attribution.activation_ig`) uses the decomposition, the names and the score
accumulators defined here.

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

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from headprobe.arch import ModelSpec
from headprobe.errors import UsageError
from headprobe.headtable import HeadTable
from headprobe.inputs import Batch
from headprobe.metrics import final_logits, logit_difference
from headprobe.runtime.forward import forward_batch
from headprobe.runtime.hooks import capture, check_fired
from headprobe.weights import head_output_weights, hf_module

MIN_IG_STEPS, MAX_IG_STEPS = 5, 100
METHODS = ("eap", "eap-ig", "eap-ig-act", "eap-ig-act-head")
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
def gradient_mode(model: Any) -> Iterator[None]:
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
class Upstream:
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


def collect_upstream(model: Any, spec: ModelSpec, batch: Batch, answers: torch.Tensor,
                     distractors: torch.Tensor) -> Upstream:
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
    return Upstream(torch.cat(writes), store["z"], store["resid_pre"], store["resid_mid"], ld)


# ---------------------------------------------------------------------------------------------
# Downstream gradients


@dataclass
class Grads:
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


# ---------------------------------------------------------------------------------------------
# Names, interpolation points and score sums


def node_names(spec: ModelSpec) -> tuple[list[str], list[str], list[int], list[int]]:
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


def downstream_grads(grads: Grads, spec: ModelSpec) -> torch.Tensor:
    """[n_down, B, T, d_model] in the order of :func:`node_names`."""
    parts = []
    for layer in range(spec.n_layers):
        parts += [grads.q[layer].permute(2, 0, 1, 3), grads.k[layer].permute(2, 0, 1, 3),
                  grads.v[layer].permute(2, 0, 1, 3)]
    parts += [grads.mlp(layer)[None] for layer in range(spec.n_layers)]
    assert grads.logits is not None
    parts.append(grads.logits[None])
    return torch.cat(parts)


def check_method(method: str, steps: int) -> list[float]:
    """The interpolation points ``alphas`` of ``method`` with ``steps`` (see
    :mod:`headprobe.attribution.inputs_ig` and :mod:`headprobe.attribution.activation_ig`)."""
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


@dataclass
class Scores:
    """Score sums over prompts (float64, on the CPU): ``z`` / ``q`` [L, H], ``k`` / ``v``
    [L, H_kv], ``mlp`` [L], ``edges`` [n_up, n_down]."""

    z: torch.Tensor
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    mlp: torch.Tensor
    edges: torch.Tensor

    @classmethod
    def zeros(cls, spec: ModelSpec, n_up: int, n_down: int) -> Scores:
        heads = torch.zeros(spec.n_layers, spec.n_heads, dtype=torch.float64)
        kv = torch.zeros(spec.n_layers, spec.n_kv_heads, dtype=torch.float64)
        return cls(heads, heads.clone(), kv, kv.clone(),
                   torch.zeros(spec.n_layers, dtype=torch.float64),
                   torch.zeros(n_up, n_down, dtype=torch.float64))


def edge_table(scores: torch.Tensor, up: list[str], down: list[str], up_pos: list[int],
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
