"""``sahara``: a dataset-level safety head set, found greedily (Sahara; Zhou et al. 2025, "On
the Role of Attention Heads in Large Language Model Safety").

Method, as the paper's reference code computes it (github.com/ydyjya/SafetyHeadAttribution,
``lib/Sahara/``):

- For N harmful queries, stack the last-layer hidden state (after the final norm, the input of
  the unembedding) at each query's last token: ``X`` [N, d_model].
- For a head set ``S``, ``X_S`` is the same matrix with every head of ``S`` ablated
  (``uniform_attention``: queries * eps after any q norm; or ``scale_output``).
- Score of ``S``: the largest principal angle, in degrees, between the span of the top
  ``rank`` right singular vectors of ``X`` and that of ``X_S`` (``rank`` 1: the angle
  between the two dominant directions; ``scipy.linalg.subspace_angles``). The matrices are
  not centred (as the reference).
- Greedy search: start from ``S = {}``; at each of ``steps`` steps add the candidate head
  that increases the angle most.

Every step scores all candidates in one fast-scan pass: the base run with ``S`` ablated
caches the residual entering each layer; the candidates of layer ``k`` run together as
stacked copies from there (``S``'s heads at layers ``>= k`` ablated in every copy), reading
the normed hidden state of the last position only. :func:`loop_sahara_angles` is the
one-forward-per-candidate reference route the tests compare with.

Table: ``score`` = the angle of ``S ∪ {head}`` at the first step (the single-head Sahara
map); columns ``set_rank`` (``steps - i`` for the head added at step ``i``, so the set
ranks first in greedy order; 0 for the others: a recipe takes the set with ``rank_by =
"set_rank"``, ``threshold = 0``) and ``angle_after`` (the angle of the set after the head
joined it). ``attrs["head_set"]``: the ordered set with the angle after each step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from scipy.linalg import subspace_angles
from tqdm.auto import tqdm

from headprobe.arch import ModelSpec
from headprobe.errors import ScorerParamError
from headprobe.fastscan.copies import copies_hook, scaling_hooks
from headprobe.fastscan.effects import prompt_batches
from headprobe.heads.safety.request_sets import Split
from headprobe.heads.safety.ships import PROMPTS, ShipsMethod, prepare_queries
from headprobe.heads.safety.ships import REFERENCE as SHIPS_REFERENCE
from headprobe.inputs import Batch
from headprobe.models import describe_model
from headprobe.runtime.forward import forward_batch
from headprobe.runtime.hooks import attached, capture, check_fired
from headprobe.runtime.layers import build_layer_inputs, check_supported, run_from_layer
from headprobe.scorers.base import Scorer, ScorerData, ScoreResult
from headprobe.scorers.params import Params, param
from headprobe.types import Head

REFERENCE = SHIPS_REFERENCE.replace("(Ships)", "(Sahara)")

@dataclass(frozen=True)
class SaharaParams(Params):
    """Parameters of :data:`SCORER` (``sahara``)."""

    renamed: ClassVar[Mapping[str, str]] = {"ablation": "method", "steps": "greedy_steps"}

    method: ShipsMethod = param("uniform_attention", "uniform_attention (query * eps after any "
                                "q norm) or scale_output")
    eps: float = param(1e-4, "the ablation's scale, > 0", gt=0)
    greedy_steps: int = param(3, "greedy steps: heads in the returned set", ge=1)
    rank: int = param(1, "top singular vectors spanning each subspace (1: the dominant "
                      "direction)", ge=1)
    template: Literal["chat", "sahara", "plain"] = param(
        "chat", "how the default harmful requests are rendered: chat, sahara or plain")
    split: Split = param("train", "split of the shipped harmful requests: train, heldout or all")
    candidates: tuple[tuple[int, int], ...] | None = param(
        None, "heads the search may add ([[layer, head], ...]; None: every head)", ge=0)


def subspace_angle(base: torch.Tensor, other: torch.Tensor, rank: int) -> float:
    """Largest principal angle (degrees) between the spans of the top ``rank`` right singular
    vectors of ``base`` and ``other`` ([N, d] each)."""
    top = []
    for matrix in (base, other):
        _, _, vh = np.linalg.svd(matrix.double().cpu().numpy(), full_matrices=False)
        top.append(vh[:rank].T)  # [d, rank]
    return float(np.degrees(subspace_angles(top[0], top[1]).max()))


def _set_hooks(model: Any, heads: Sequence[Head], ablation: str, eps: float,
               min_layer: int = 0) -> list[Any]:
    chosen = [h for h in heads if h[0] >= min_layer]
    if not chosen:
        return []
    return scaling_hooks(model, chosen, ablation, eps)


def hidden_states(model: Any, batches: Sequence[Batch], heads: Sequence[Head], ablation: str,
                  eps: float) -> torch.Tensor:
    """[N, d_model] final-normed hidden state at each prompt's last token, ``heads``
    ablated (full forwards)."""
    rows, states = [], []
    for batch in batches:
        name = describe_model(model).hooks.unembed_in
        with attached(model, _set_hooks(model, heads, ablation, eps)), \
                capture(model, [name]) as seen:
            forward_batch(model, batch)
        check_fired(seen, [name])
        hidden = seen[name]  # [B, T, d]
        states.append(hidden[torch.arange(batch.size), batch.last.to(hidden.device)])
        rows.append(batch.indices.cpu())
    out = torch.empty(sum(len(r) for r in rows), states[0].shape[-1], dtype=torch.float64)
    for r, s in zip(rows, states, strict=True):
        out[r] = s.double().cpu()
    return out


def candidate_angles(model: Any, spec: ModelSpec, batches: Sequence[Batch],
                     chosen: Sequence[Head], candidates: Sequence[Head], base: torch.Tensor,
                     ablation: str, eps: float, rank: int) -> dict[Head, float]:
    """Angle of ``chosen + [c]`` for every candidate ``c``, through the fast-scan engine."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in candidates:
        by_layer.setdefault(layer, []).append(head)
    hidden: dict[Head, list[tuple[torch.Tensor, torch.Tensor]]] = {c: [] for c in candidates}
    for batch in batches:
        names = [spec.hooks.at("resid_pre", layer) for layer in sorted(by_layer)]
        with attached(model, _set_hooks(model, chosen, ablation, eps)), \
                capture(model, names) as seen:
            forward_batch(model, batch)
        check_fired(seen, names)
        for layer, heads in sorted(by_layer.items()):
            copies = len(heads)
            mask = batch.attention_mask.repeat(copies, 1)
            position_ids = batch.position_ids.repeat(copies, 1)
            resid = seen[spec.hooks.at("resid_pre", layer)].repeat(copies, 1, 1)
            inputs = build_layer_inputs(model, resid, mask, position_ids)
            hooks = [*_set_hooks(model, chosen, ablation, eps, min_layer=layer),
                     copies_hook(model, spec, ablation, layer, heads, copies, eps=eps)]
            with capture(model, [spec.hooks.unembed_in]) as out:
                run_from_layer(model, resid, layer, mask, position_ids, hooks,
                               positions=batch.last.repeat(copies), layer_inputs=inputs)
            states = out[spec.hooks.unembed_in].reshape(copies, batch.size, -1)
            for index, head in enumerate(heads):
                hidden[(layer, head)].append((batch.indices.cpu(), states[index]))
    angles = {}
    for head, parts in hidden.items():
        matrix = torch.empty_like(base)
        for rows, states in parts:
            matrix[rows] = states.double().cpu()
        angles[head] = subspace_angle(base, matrix, rank)
    return angles


def greedy_head_set(model: Any, prompts: Sequence[torch.Tensor], *,
                    ablation: str = "uniform_attention", eps: float = 1e-4, steps: int = 3,
                    rank: int = 1, candidates: Sequence[Head] | None = None,
                    batch_size: int = 8, progress: bool = True
                    ) -> tuple[list[tuple[Head, float]], dict[Head, float]]:
    """The Sahara greedy search; ``([(head, angle after adding it), ...], first-step angle of
    every candidate)``."""
    spec = check_supported(model)
    pool = ([(int(a), int(b)) for a, b in candidates] if candidates is not None else
            [(layer, head) for layer in range(spec.n_layers) for head in range(spec.n_heads)])
    batches = prompt_batches(model, spec, prompts, batch_size)
    chosen: list[tuple[Head, float]] = []
    first: dict[Head, float] = {}
    with torch.inference_mode():
        base = hidden_states(model, batches, [], ablation, eps)
        for _ in tqdm(range(steps), desc="sahara", disable=not progress, leave=False):
            heads = [h for h, _ in chosen]
            left = [c for c in pool if c not in heads]
            if not left:
                break
            angles = candidate_angles(model, spec, batches, heads, left, base, ablation, eps,
                                      rank)
            if not first:
                first = dict(angles)
            best = max(left, key=lambda c: (angles[c], -c[0], -c[1]))
            chosen.append((best, angles[best]))
    return chosen, first


def loop_sahara_angles(model: Any, prompts: Sequence[torch.Tensor], chosen: Sequence[Head],
                       candidates: Sequence[Head], *, ablation: str = "uniform_attention",
                       eps: float = 1e-4, rank: int = 1, batch_size: int = 8
                       ) -> dict[Head, float]:
    """Reference route: one full forward per candidate with ``chosen + [candidate]``
    ablated through the registered interventions."""
    spec = check_supported(model)
    batches = prompt_batches(model, spec, prompts, batch_size)
    with torch.inference_mode():
        base = hidden_states(model, batches, [], ablation, eps)
        return {c: subspace_angle(base, hidden_states(model, batches, [*chosen, c], ablation,
                                                      eps), rank)
                for c in candidates}


def _prepare(model: Any, spec: ModelSpec, prompts: Any, n: int, seed: int,
             params: dict[str, Any]) -> ScorerData:
    data = prepare_queries(model, spec, prompts, n, seed,
                           {**params, "method": (params["method"],), "engine": "auto",
                            "heads_per_pass": None})
    if int(params["rank"]) > data.n_prompts:
        raise ScorerParamError(f"rank {params['rank']} exceeds the {data.n_prompts} queries")
    return data


def _compute(model: Any, spec: ModelSpec, data: ScorerData, params: dict[str, Any],
             batch_size: int, progress: bool) -> ScoreResult:
    chosen, first = greedy_head_set(
        model, data.payload, ablation=params["method"], eps=float(params["eps"]),
        steps=int(params["greedy_steps"]), rank=int(params["rank"]),
        candidates=params["candidates"], batch_size=batch_size, progress=progress)
    nan = float("nan")
    score = torch.full((spec.n_layers, spec.n_heads), nan)
    for (layer, head), angle in first.items():
        score[layer, head] = angle
    rank = torch.zeros_like(score)
    after = torch.full_like(score, nan)
    for index, ((layer, head), angle) in enumerate(chosen):
        rank[layer, head] = len(chosen) - index
        after[layer, head] = angle
    meta = {"head_set": [{"layer": h[0], "head": h[1], "angle_after": a} for h, a in chosen],
            "method": params["method"], "eps": float(params["eps"]),
            "rank": int(params["rank"])}
    return ScoreResult(score=score, columns={"set_rank": rank, "angle_after": after}, meta=meta)


SCORER = Scorer(
    name="sahara",
    description="safety head set: greedy heads whose joint ablation turns the dominant "
                "direction of harmful-query hidden states the most",
    reference=REFERENCE,
    prepare=_prepare,
    compute=_compute,
    prompts=PROMPTS,
    params=SaharaParams,
    default_n=32,
    cheap=False,
)
