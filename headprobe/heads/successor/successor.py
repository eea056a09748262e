"""``successor``: successor heads from the weights alone (Gould et al. 2023, "Successor Heads:
Recurring, Interpretable Attention Heads In The Wild", section 3).

Method. For an ordinal token set ``T`` (:mod:`headprobe.heads.successor.ordinal_sets`: digits,
numbers, number words, ordinals, days, months, letters, Roman numerals, each bare and with a leading
space; multi-token items dropped) the head's effective OV circuit restricted to ``T`` gives
``logits = W_U[:, T]^T . OV_h . E(T)`` ([|T|, |T|]: row = input token, column = candidate).
A pair ``t_i -> t_{i+1}`` (consecutive items that both remain; days and months wrap) succeeds
when ``t_{i+1}``'s logit is the largest of the set. Columns: ``set_<variant>`` = accuracy over
the set's pairs; ``score`` = accuracy over all pairs of all sets (pooled); ``strict`` = share
of all pairs whose successor is the largest logit over the whole vocabulary. The paper calls a
head a successor head when its score exceeds ~0.4 (``threshold``; ``meta`` holds the count of
heads above it and the chance level: the pair-weighted mean of ``1 / |T|``).

Exactly what is computed, per architecture (no prompt is run; weights read through
:func:`headprobe.weights.hf_module` and :func:`headprobe.weights.head_output_weights`, every
norm applied by calling the model's own norm module, so RMSNorm's ``w`` or Gemma's ``1 + w``
and its ``eps`` are the model's):

1. Effective embedding ``E(t)`` (``embedding`` parameter; the paper: MLP0 of the
   embeddings). ``e = embed_tokens(t)`` (Gemma 3: the module's scaling by ``sqrt(d_model)``
   included). Attention layer 0 is left out (as if its output were zero).

   - ``mlp0`` (default): the residual stream after layer 0's MLP block on ``e`` alone.
     Llama family (SmolLM2): ``E = e + MLP0(post_attention_layernorm_0(e))`` (Llama's
     ``post_attention_layernorm`` is the norm *before* the MLP). Gemma 3:
     ``E = e + post_feedforward_layernorm_0(MLP0(pre_feedforward_layernorm_0(e)))``.
   - ``mlp0_out``: the MLP block's output alone, without ``e``.
   - ``raw``: ``E = e``.

2. Head ``h`` of layer ``l`` (query head ``h`` reads kv head ``h // group``) attending fully
   to the token: ``z = W_V[kv] . input_layernorm_l(E) + b_V`` and ``o = z . W_O[h]`` (the
   output-projection bias, which belongs to no head, is left out). Gemma 3 then applies its
   post-attention norm to the head's output alone: ``o = post_attention_layernorm_l(o)``.

3. Read-out: ``logits = final_norm(o) . W_U^T`` (Gemma 3: ``W_U`` is the tied embedding
   matrix, unscaled), with the final norm applied to ``o`` alone (the logits of a residual
   stream holding only the head's write); no unembedding bias, no final soft-cap (it is
   monotone and changes no argmax). Every norm's per-token scale is a positive factor on a
   row, so it changes no argmax; its elementwise weight does.

Vectorised: one pass per layer for all heads and all tokens; the whole-vocabulary argmax
(``strict``) is computed only for the (head, token) rows whose pair succeeded within the set
(a successor that is the vocabulary's argmax is also the set's), in vocabulary chunks.

Also here: :func:`effective_embeddings`, :func:`set_logits` (for one set and layer, the
[H, |T|, |T|] logits) and :func:`mod10_view` (PCA of numeric tokens' effective embeddings
coloured by value mod 10, with a nearest-centroid probe against shuffled labels).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from headprobe.arch import ModelSpec
from headprobe.errors import ScorerNeedsError, ScorerParamError, TaskError, TokenSetError
from headprobe.heads.successor.ordinal_sets import (
    ORDINAL_SETS,
    TokenizedSet,
    WithSpace,
    split_variant,
    tokenize_set,
    tokenize_sets,
    variant_names,
)
from headprobe.runtime.hooks import model_device, onloaded
from headprobe.scorers.base import Scorer, ScorerData, ScoreResult
from headprobe.scorers.params import Params, param
from headprobe.weights import head_output_weights, hf_module, read_weight

REFERENCE = ('Gould et al. 2023, "Successor Heads: Recurring, Interpretable Attention Heads '
             'In The Wild"')
Embedding = Literal["mlp0", "mlp0_out", "raw"]
EMBEDDINGS: tuple[Embedding, ...] = ("mlp0", "mlp0_out", "raw")
VOCAB_CHUNK = 32768


@dataclass(frozen=True)
class BlockNames:
    """Module names inside a decoder layer that the effective OV circuit reads.

    ``input_norm``: the norm before attention; ``pre_mlp_norm`` / ``mlp`` /
    ``post_mlp_norm``: the MLP block (``post_mlp_norm`` None: no sandwich norm).
    """

    input_norm: str
    pre_mlp_norm: str
    mlp: str
    post_mlp_norm: str | None = None


# Keyed by ArchitectureFacts.family (data, not code paths).
BLOCKS: dict[str, BlockNames] = {
    "llama": BlockNames("input_layernorm", "post_attention_layernorm", "mlp"),
    "llava": BlockNames("input_layernorm", "post_attention_layernorm", "mlp"),
    "gemma3": BlockNames("input_layernorm", "pre_feedforward_layernorm", "mlp",
                         "post_feedforward_layernorm"),
}

@dataclass(frozen=True)
class SuccessorParams(Params):
    """Parameters of :data:`SCORER` (``successor``)."""

    sets: str | tuple[str, ...] | None = param(
        None, "ordinal sets (headprobe.heads.successor.ordinal_sets): base names (variants by "
        "with_space) or variant names like 'days_space'; None: all, unusable variants skipped")
    with_space: WithSpace = param("both", "'both', 'with' or 'without' the leading-space "
                                  "variants of base names")
    embedding: Embedding = param("mlp0", "effective embedding: 'mlp0' (e + MLP0 block on e, "
                                 "attention 0 left out), 'mlp0_out' (the MLP0 block's output "
                                 "alone) or 'raw' (W_E)")
    threshold: float = param(0.4, "successor-head threshold on score, reported in meta (the "
                             "paper: ~0.4)")
    strict: bool = param(True, "also score 'strict': the successor is the argmax over the "
                         "whole vocabulary")


def block_names(spec: ModelSpec) -> BlockNames:
    """The :class:`BlockNames` of ``spec``'s family; :class:`ScorerNeedsError` otherwise."""
    if spec.facts.family not in BLOCKS:
        raise ScorerNeedsError(
            f"successor: the effective OV circuit is written for the families "
            f"{', '.join(BLOCKS)}; {spec.name} is {spec.model_type} ({spec.facts.family})")
    return BLOCKS[spec.facts.family]


def _layer(spec: ModelSpec, layer: int) -> str:
    return f"{spec.facts.layers_path}.{layer}"


def _apply(module: Any, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` in the module's dtype and device, returned as float32."""
    param = next(module.parameters())
    with torch.inference_mode():
        return module(x.to(device=param.device, dtype=param.dtype)).float()


def effective_embeddings(model: Any, spec: ModelSpec, token_ids: torch.Tensor,
                         embedding: str = "mlp0") -> torch.Tensor:
    """[N, d_model] float32 effective embeddings ``E(t)`` of ``token_ids`` [N] (module
    docstring, step 1)."""
    if embedding not in EMBEDDINGS:
        raise ScorerParamError(f"embedding must be one of {', '.join(EMBEDDINGS)}, got "
                               f"{embedding!r}")
    names = block_names(spec)
    embed = hf_module(model, spec.facts.embed or f"{spec.facts.decoder}.embed_tokens")
    device = model_device(model)
    with torch.inference_mode():
        e = embed(token_ids.to(device)).float()  # Gemma's sqrt(d_model) scale is inside
    if embedding == "raw":
        return e
    layer0 = _layer(spec, 0)
    with onloaded(hf_module(model, layer0)):  # weights a device map offloaded, loaded
        out = _apply(hf_module(model, f"{layer0}.{names.mlp}"),
                     _apply(hf_module(model, f"{layer0}.{names.pre_mlp_norm}"), e))
        if names.post_mlp_norm is not None:
            out = _apply(hf_module(model, f"{layer0}.{names.post_mlp_norm}"), out)
    return out if embedding == "mlp0_out" else e + out


def head_readouts(model: Any, spec: ModelSpec, layer: int, resid: torch.Tensor) -> torch.Tensor:
    """[H, N, d_model] float32: every head of ``layer`` reading each row of ``resid``
    [N, d_model] with full attention on it, through the final norm (module docstring, steps
    2-3); multiply by ``W_U^T`` for logits."""
    names = block_names(spec)
    facts = spec.facts
    prefix = _layer(spec, layer)
    w_o = head_output_weights(model, spec, layer).float()  # [H, d_head, d]
    with onloaded(hf_module(model, prefix)):  # weights a device map offloaded, loaded
        normed = _apply(hf_module(model, f"{prefix}.{names.input_norm}"), resid)  # [N, d]
        v_proj = hf_module(model, f"{prefix}.{facts.attention_module}.{facts.v_proj}")
        w_v = v_proj.weight.detach().float().reshape(spec.n_kv_heads, spec.d_head,
                                                     spec.d_model)
        kv_of_head = torch.arange(spec.n_heads, device=w_v.device) // spec.group_size
        z = torch.einsum("nd,hed->hne", normed.to(w_v.device), w_v[kv_of_head])  # [H, N, e]
        if getattr(v_proj, "bias", None) is not None:
            bias = v_proj.bias.detach().float().reshape(spec.n_kv_heads, spec.d_head)
            z = z + bias[kv_of_head][:, None, :]
        out = torch.einsum("hne,hed->hnd", z, w_o.to(z.device))
        if facts.has_post_attention_norm:
            out = _apply(hf_module(model, f"{prefix}.{facts.post_attention_norm}"), out)
    final_norm = hf_module(model, facts.final_norm)
    with onloaded(final_norm):
        return _apply(final_norm, out)


def unembedding(model: Any, spec: ModelSpec) -> torch.Tensor:
    """[V, d_model] ``W_U`` rows (the ``lm_head`` weight; tied to the embedding for Gemma)."""
    return read_weight(model, hf_module(model, spec.facts.unembed))


def set_logits(model: Any, spec: ModelSpec, tset: TokenizedSet, layer: int,
               embedding: str = "mlp0") -> torch.Tensor:
    """[H, |T|, |T|] effective-OV logits of ``layer``'s heads restricted to ``tset``: row =
    input item, column = candidate item."""
    ids = tset.token_ids
    readout = head_readouts(model, spec, layer, effective_embeddings(model, spec, ids,
                                                                     embedding))
    w_u = unembedding(model, spec)[ids.to(model_device(model))].float()
    return readout @ w_u.T


@dataclass
class _Prepared:
    sets: list[TokenizedSet]
    skipped: dict[str, str]
    vocab_ids: torch.Tensor  # [N] unique token ids of every set
    index: list[torch.Tensor]  # per set: [|T|] rows of vocab_ids


def _prepare(model: Any, spec: ModelSpec, prompts: Any, n: int, seed: int,
             params: dict[str, Any]) -> ScorerData:
    if prompts is not None:
        raise TaskError("successor is a weights-only scorer: it takes no prompts (choose "
                        "ordinal sets with sets=[...])")
    block_names(spec)
    sets_param = params["sets"]
    if isinstance(sets_param, str):
        sets_param = [sets_param]
    sets, skipped = tokenize_sets(model, sets_param, params["with_space"])
    all_ids = torch.cat([s.token_ids for s in sets])
    vocab_ids, inverse = torch.unique(all_ids, return_inverse=True)
    index = list(torch.split(inverse, [len(s.token_ids) for s in sets]))
    payload = _Prepared(sets, skipped, vocab_ids, index)
    digest = hashlib.sha256(json.dumps(
        [[s.name, s.token_ids.tolist(), s.pairs.tolist()] for s in sets]).encode()
    ).hexdigest()[:16]
    n_pairs = sum(len(s.pairs) for s in sets)
    description = (f"{len(sets)} ordinal sets, {len(vocab_ids)} tokens, {n_pairs} successor "
                   f"pairs (weights only)")
    return ScorerData(payload, digest, n_pairs, description)


def _vocab_argmax(readout: torch.Tensor, w_u: torch.Tensor) -> torch.Tensor:
    """[R] argmax over the vocabulary of ``readout`` [R, d] @ ``w_u``^T, in chunks."""
    best_value = torch.full((readout.shape[0],), -torch.inf, device=readout.device)
    best_index = torch.zeros(readout.shape[0], dtype=torch.long, device=readout.device)
    for start in range(0, w_u.shape[0], VOCAB_CHUNK):
        chunk = w_u[start:start + VOCAB_CHUNK].to(readout.device).float()
        value, index = (readout @ chunk.T).max(dim=1)
        better = value > best_value
        best_value = torch.where(better, value, best_value)
        best_index = torch.where(better, index + start, best_index)
    return best_index


def _compute(model: Any, spec: ModelSpec, data: ScorerData, params: dict[str, Any],
             batch_size: int, progress: bool) -> ScoreResult:
    from tqdm.auto import tqdm

    prep: _Prepared = data.payload
    device = model_device(model)
    vocab_ids = prep.vocab_ids.to(device)
    resid = effective_embeddings(model, spec, vocab_ids, params["embedding"])  # [N, d]
    w_u_all = unembedding(model, spec)
    w_u = w_u_all[vocab_ids].float()  # [N, d]
    n_layers, n_heads = spec.n_layers, spec.n_heads
    hits = {s.name: torch.zeros(n_layers, n_heads) for s in prep.sets}
    strict_hits = torch.zeros(n_layers, n_heads)
    for layer in tqdm(range(n_layers), desc="successor", disable=not progress, leave=False):
        readout = head_readouts(model, spec, layer, resid)  # [H, N, d]
        logits = readout @ w_u.T  # [H, N, N]
        need = torch.zeros(n_heads, len(vocab_ids), dtype=torch.bool, device=logits.device)
        outcomes = []
        for tset, rows in zip(prep.sets, prep.index, strict=True):
            rows = rows.to(logits.device)
            src, dst = rows[tset.pairs[:, 0]], rows[tset.pairs[:, 1]]  # [P]
            sub = logits[:, src][:, :, rows]  # [H, P, |T|]
            ok = sub.argmax(-1) == tset.pairs[:, 1].to(logits.device)  # [H, P]
            hits[tset.name][layer] = ok.float().mean(1).cpu()
            need[:, src] |= ok
            outcomes.append((ok, src, dst))
        if params["strict"]:
            heads, tokens = need.nonzero(as_tuple=True)
            top = torch.full((n_heads, len(vocab_ids)), -1, dtype=torch.long,
                             device=logits.device)
            if len(heads):
                top[heads, tokens] = _vocab_argmax(readout[heads, tokens], w_u_all)
            total = 0.0
            for ok, src, dst in outcomes:
                total = total + (ok & (top[:, src] == vocab_ids[dst])).float().sum(1).cpu()
            strict_hits[layer] = total
    n_pairs = {s.name: len(s.pairs) for s in prep.sets}
    total_pairs = sum(n_pairs.values())
    score = sum(hits[name] * count for name, count in n_pairs.items()) / total_pairs
    columns: dict[str, Any] = {f"set_{name}": grid for name, grid in hits.items()}
    if params["strict"]:
        columns["strict"] = strict_hits / total_pairs
    chance = sum(s.chance * n_pairs[s.name] for s in prep.sets) / total_pairs
    threshold = float(params["threshold"])
    flat = score.flatten()
    best = int(flat.argmax())
    meta = {
        "definition": "weights",
        "columns": {"score": "weights: share of all ordinal pairs whose successor has the "
                             "largest logit of its set (effective OV circuit)",
                    **{f"set_{name}": f"weights: that share on set {name!r}" for name in hits},
                    **({"strict": "weights: share of all pairs whose successor is the "
                                  "argmax over the whole vocabulary"}
                       if params["strict"] else {})},
        "threshold": threshold,
        "n_above_threshold": int((score > threshold).sum()),
        "chance": chance,
        "max_score": float(flat.max()),
        "best_head": [best // n_heads, best % n_heads],
        "n_pairs": total_pairs,
        "n_tokens": len(vocab_ids),
        "embedding": params["embedding"],
        "sets": {s.name: {"items": list(s.items), "n_items": len(s.items),
                          "n_pairs": n_pairs[s.name], "n_dropped": s.n_dropped,
                          "chance": s.chance, "cyclic": s.cyclic} for s in prep.sets},
        "skipped_sets": dict(prep.skipped),
    }
    return ScoreResult(score=score, columns=columns, meta=meta)


SCORER = Scorer(
    name="successor",
    description="successor heads from the weights: the effective OV circuit on ordinal token "
                "sets maps each item to its successor",
    reference=REFERENCE,
    prepare=_prepare,
    compute=_compute,
    prompts="none: a weights-only scorer (choose ordinal sets with the sets parameter)",
    params=SuccessorParams,
    default_n=1,
    cheap=True,
)


# ---------------------------------------------------------------------------------------------
# The mod-10 view

NUMERIC_SETS = ("digits", "numbers", "number_words", "ordinals", "roman")
_ROMAN_VALUES = {name: i + 1 for i, name in enumerate(ORDINAL_SETS["roman"].items)}


def item_value(base: str, item: str) -> int:
    """The number an item of a numeric set stands for (``" seventh"`` -> 7)."""
    text = item.strip()
    if base in ("digits", "numbers"):
        return int(text)
    if base == "roman":
        return _ROMAN_VALUES[text]
    if base in ("number_words", "ordinals"):
        return ORDINAL_SETS[base].items.index(text) + 1
    raise ScorerParamError(f"set {base!r} is not numeric; numeric sets: "
                           f"{', '.join(NUMERIC_SETS)}")


@dataclass
class Mod10View:
    """The result of :func:`mod10_view`.

    Attributes:
        figure: plotly scatter of the first two principal components, coloured by value
            mod 10 (never shown).
        accuracy: leave-one-out nearest-centroid accuracy of ``value mod 10`` in the top
            ``k`` PCs.
        shuffled_mean: mean accuracy of the same probe with shuffled labels.
        p_value: share of shuffles at least as accurate as the real labels (with +1
            smoothing).
        k: principal components used; n_points: tokens; explained: variance share of the
            top ``k`` PCs.
        points: one row per token (``item``, ``set``, ``value``, ``mod10``, ``pc1``, ``pc2``).
    """

    figure: Any
    accuracy: float
    shuffled_mean: float
    p_value: float
    k: int
    n_points: int
    explained: float
    points: Any


def _loo_centroid_accuracy(x: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out nearest-centroid accuracy (points alone in their class never count as
    right: their class has no centroid without them)."""
    classes = np.unique(labels)
    onehot = (labels[:, None] == classes[None, :]).astype(float)  # [N, C]
    sums = onehot.T @ x  # [C, k]
    counts = onehot.sum(0)  # [C]
    # centroid of each class without point i: (sum - x_i [if own class]) / (count - [own])
    own = onehot.astype(bool)
    sums_loo = sums[None, :, :] - own[:, :, None] * x[:, None, :]  # [N, C, k]
    counts_loo = counts[None, :] - own
    with np.errstate(invalid="ignore", divide="ignore"):
        centroids = sums_loo / counts_loo[:, :, None]
    dist = np.where(counts_loo > 0, ((centroids - x[:, None, :]) ** 2).sum(-1), np.inf)
    predicted = classes[dist.argmin(1)]
    return float((predicted == labels).mean())


def mod10_view(model: Any, spec: ModelSpec, sets: Sequence[str] | None = None,
               with_space: str | bool = "both", k: int = 4, embedding: str = "mlp0",
               center_sets: bool = True, n_shuffles: int = 200, seed: int = 0) -> Mod10View:
    """Project numeric tokens' effective embeddings on their top principal directions.

    The paper (Gould et al. 2023, section 4) finds "mod-10 features": numbers that share
    their last digit share a direction. Here the single-token items of the numeric ``sets``
    (default :data:`NUMERIC_SETS`: digits, numbers, number words, ordinals, Roman numerals,
    variants by ``with_space``) are embedded (:func:`effective_embeddings`), optionally
    centred per set variant (``center_sets``: removes "which format" so the PCs can show
    "which number"), and projected on the top ``k`` principal directions (numpy SVD). The
    check: leave-one-out nearest-centroid accuracy of ``value mod 10`` in those ``k``
    dimensions vs ``n_shuffles`` shuffled labelings (seeded).

    Raises:
        TokenSetError: unknown or unusable sets; ScorerParamError: a non-numeric set, bad k.
    """
    import pandas as pd
    import plotly.express as px

    if sets is None:  # every numeric variant that is usable for this model
        tsets = []
        for variant in variant_names(with_space, NUMERIC_SETS):
            try:
                tsets.append(tokenize_set(model, variant))
            except TokenSetError:
                continue
        if not tsets:
            raise TokenSetError("mod10_view: no numeric set is usable for this model")
    else:
        for name in sets:
            base, _ = split_variant(name)
            if base not in NUMERIC_SETS:
                item_value(base, "")  # raises ScorerParamError naming the set
        tsets, _ = tokenize_sets(model, list(sets), with_space)
    rows = []
    for tset in tsets:
        for item, token in zip(tset.items, tset.token_ids.tolist(), strict=True):
            value = item_value(tset.base, item)
            rows.append({"item": item, "set": tset.name, "token_id": token, "value": value,
                         "mod10": value % 10})
    points = pd.DataFrame(rows)
    if not isinstance(k, int) or not 1 <= k <= min(len(points) - 1, spec.d_model):
        raise ScorerParamError(f"k must be an integer in 1..{min(len(points) - 1, spec.d_model)}"
                               f", got {k!r}")
    ids = torch.tensor(points["token_id"].to_numpy())
    x = effective_embeddings(model, spec, ids, embedding).double().cpu().numpy()
    if center_sets:
        for name in points["set"].unique():
            mask = (points["set"] == name).to_numpy()
            x[mask] -= x[mask].mean(0)
    x = x - x.mean(0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    pcs = u[:, :k] * s[:k]
    explained = float((s[:k] ** 2).sum() / (s ** 2).sum())
    labels = points["mod10"].to_numpy()
    accuracy = _loo_centroid_accuracy(pcs, labels)
    rng = np.random.default_rng(seed)
    shuffled = np.array([_loo_centroid_accuracy(pcs, rng.permutation(labels))
                         for _ in range(n_shuffles)])
    p_value = float(((shuffled >= accuracy).sum() + 1) / (n_shuffles + 1))
    points["pc1"], points["pc2"] = pcs[:, 0], pcs[:, 1] if k > 1 else 0.0
    figure = px.scatter(points, x="pc1", y="pc2", color=points["mod10"].astype(str),
                        symbol="set", hover_data=["item", "value"],
                        title=(f"{spec.name}: effective embeddings ({embedding}) of numeric "
                               f"tokens, PC1/PC2, coloured by value mod 10 — probe acc "
                               f"{accuracy:.2f} vs shuffled {shuffled.mean():.2f}"),
                        labels={"color": "value mod 10"})
    return Mod10View(figure, accuracy, float(shuffled.mean()), p_value, k, len(points),
                     explained, points)
