"""Temporal heads: heads that recur in the circuits of time-conditioned facts but not in those
of time-invariant facts.

Definition (Park et al. 2025, "Does Time Have Its Place? Temporal Heads: Where Language Models
Recall Time-specific Information"):

1. Circuits. For every *set* of facts (temporal: ``president``, ``head_of_government``,
   ``ceo``, ``sports_team``; invariant: ``capital``, ``superclass``, ``opposite``, ...; see
   :mod:`headprobe.heads.temporal.temporal_facts`) edge attribution patching with integrated
   gradients (EAP-IG, Hanna et al. 2024; :func:`headprobe.attribution.attribution_patching`
   with ``edges=True``) scores every edge ``u -> v`` on the set's clean/corrupt pairs
   (temporal: same subject, another year with another answer; invariant: another subject),
   logit-difference loss, averaged over the set's pairs.
2. Kept edges (the paper keeps the top edges with threshold 0.1). Here, with
   ``threshold_mode="relative"`` (default), edge ``e`` is kept when
   ``|s_e| >= edge_threshold * max_e' |s_e'|`` over the set's edges (``edge_threshold = 0.1``);
   with ``"absolute"`` when ``|s_e| >= edge_threshold`` (logit-difference units); ``top_edges``
   (optional) then keeps at most that many of the largest.
3. Membership. Head ``(l, h)`` is *in* a circuit when it has a kept edge: as upstream
   (``a{l}.h{h}``, its write) or as downstream through its query input (``a{l}.h{h}.q``);
   with ``kv_edges=True`` also through its kv group's key / value inputs (shared by the
   ``H / H_kv`` query heads of the group).
4. ``score`` = the fraction of temporal circuits containing the head;
   ``invariant_fraction`` = the same over invariant circuits; ``is_temporal`` (1.0 / 0.0) =
   ``score >= temporal_share`` (0.9) and ``invariant_fraction <= max_invariant_share``.

Columns: ``score``, ``invariant_fraction``, ``is_temporal``, ``node_score`` (the EAP-IG
estimate of noising the head's ``z``, mean over the temporal pairs, logit-difference units),
``exact_patching`` (the exact noising effect from :func:`headprobe.fastscan.scan_heads` on the
same temporal pairs, when ``compare_exact``). The metadata hold the circuits (set, kind, pairs,
kept edges, heads), the known-fact counts and the agreement of the estimate with exact
patching (Pearson, Spearman, top-20 overlap by ``|score|``).

The attribution ``method`` is a parameter: ``eap-ig-act`` by default (integrated gradients over
the activations, one layer at a time, 5 steps), the variant that agrees best with exact
patching (``bench/RESULTS.md``: on the SmolLM2 temporal pairs Pearson 0.99 and 19-20 of the
exact top-20 heads, where the paper's input-embedding ``eap-ig`` reaches 0.97 and 16-18), or
any other method :func:`~headprobe.attribution.attribution_patching` accepts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch

from headprobe.arch import ModelSpec
from headprobe.attribution import agreement, attribution_patching
from headprobe.errors import TaskError
from headprobe.heads.temporal.temporal_facts import REFERENCE, known_facts, make_task
from headprobe.inputs import fingerprint
from headprobe.scorers.attribution_patching import AttributionMethod
from headprobe.scorers.base import Scorer, ScorerData, ScoreResult, ScorerParamError
from headprobe.scorers.params import Params, param
from headprobe.tasks.base import Task, TaskItem
from headprobe.tasks.pairs import prepare_scan_data
from headprobe.types import Head

_UP = re.compile(r"^a(\d+)\.h(\d+)$")
_Q = re.compile(r"^a(\d+)\.h(\d+)\.q$")
_KV = re.compile(r"^a(\d+)\.kv(\d+)\.[kv]$")
MODES = ("relative", "absolute")


# ---------------------------------------------------------------------------------------------
# Circuits from an edge frame


def kept_edges(edges: pd.DataFrame, *, threshold: float = 0.1, mode: str = "relative",
               top_edges: int | None = None) -> pd.DataFrame:
    """The edges of a circuit (see the module docstring, step 2).

    Args:
        edges: ``upstream``, ``downstream``, ``score`` rows (an
            :class:`~headprobe.attribution.AttributionResult`'s ``edges``).
        threshold: relative (share of the largest ``|score|``) or absolute cut.
        mode: ``relative`` or ``absolute``.
        top_edges: keep at most this many (largest ``|score|`` first).
    """
    if mode not in MODES:
        raise ScorerParamError(f"threshold_mode must be one of {MODES}, got {mode!r}")
    if threshold < 0:
        raise ScorerParamError(f"edge_threshold must be >= 0, got {threshold}")
    if top_edges is not None and top_edges < 1:
        raise ScorerParamError(f"top_edges must be >= 1 or None, got {top_edges}")
    size = edges["score"].abs()
    if len(edges) == 0 or float(size.max()) == 0.0:
        return edges.iloc[:0]
    cut = threshold * float(size.max()) if mode == "relative" else threshold
    kept = edges[size >= cut]
    if top_edges is not None:
        kept = kept.loc[kept["score"].abs().sort_values(ascending=False, kind="stable")
                        .index[:top_edges]]
    return kept


def circuit_heads(edges: pd.DataFrame, spec: ModelSpec, *, kv_edges: bool = False) -> set[Head]:
    """The heads with a kept edge in ``edges`` (module docstring, step 3)."""
    group = spec.n_heads // spec.n_kv_heads
    heads: set[Head] = set()
    for name in (*edges["upstream"], *edges["downstream"]):
        match = _UP.match(name) or _Q.match(name)
        if match:
            heads.add((int(match[1]), int(match[2])))
        elif kv_edges and (kv := _KV.match(name)):
            layer, g = int(kv[1]), int(kv[2])
            heads.update((layer, h) for h in range(g * group, (g + 1) * group))
    return heads


def membership_fractions(circuits: Sequence[set[Head]], spec: ModelSpec) -> np.ndarray:
    """[L, H] share of ``circuits`` containing each head (NaN when there is no circuit)."""
    grid = np.zeros((spec.n_layers, spec.n_heads), dtype=np.float64)
    if not circuits:
        return grid * np.nan
    for heads in circuits:
        for layer, head in heads:
            grid[layer, head] += 1
    return grid / len(circuits)


def temporal_mask(temporal: np.ndarray, invariant: np.ndarray, *, temporal_share: float = 0.9,
                  max_invariant_share: float = 0.25) -> np.ndarray:
    """[L, H] bool: in ``>= temporal_share`` of the temporal circuits and in
    ``<= max_invariant_share`` of the invariant ones (no invariant circuit: no bound)."""
    inv = np.nan_to_num(invariant, nan=0.0)
    return (np.nan_to_num(temporal, nan=0.0) >= temporal_share) & (inv <= max_invariant_share)


# ---------------------------------------------------------------------------------------------
# Scorer


def _sets(task: Task) -> dict[str, list[TaskItem]]:
    out: dict[str, list[TaskItem]] = {}
    for item in task.items:
        out.setdefault(str(item.meta.get("set", "all")), []).append(item)
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class TemporalParams(Params):
    """Parameters of :data:`SCORER` (``temporal``)."""

    renamed: ClassVar[Mapping[str, str]] = {"steps": "ig_steps"}

    method: AttributionMethod = param(
        "eap-ig-act", "attribution method of headprobe.attribution.attribution_patching "
        "('eap-ig', 'eap', or a variant such as 'eap-ig-act')")
    ig_steps: int = param(5, "integrated-gradient steps (paper: 100, over the input "
                          "embeddings; eap-ig-act agrees with exact patching from 2-5 steps)",
                          ge=1, le=100)
    edge_threshold: float = param(0.1, "edge kept when |score| >= this x the set's largest "
                                  "|score| (relative) or >= this (absolute)", ge=0)
    threshold_mode: Literal["relative", "absolute"] = param("relative", "'relative' or "
                                                            "'absolute'")
    top_edges: int | None = param(None, "keep at most this many edges per circuit (None: no "
                                  "cap)", ge=1)
    kv_edges: bool = param(False, "also count key/value-input edges for every query head of "
                           "the kv group")
    temporal_share: float = param(0.9, "is_temporal needs membership in >= this share of "
                                  "temporal circuits", ge=0, le=1)
    max_invariant_share: float = param(0.25, "... and in <= this share of invariant circuits",
                                       ge=0, le=1)
    min_set_size: int = param(1, "sets with fewer pairs get no circuit", ge=0)
    known_only: bool = param(True, "keep only the facts the model gets right unablated")
    alias: bool = param(False, "use the alias templates ('In the year {year}, ...')")
    compare_exact: bool = param(True, "also run exact noising patching on the temporal pairs "
                                "and compare")
    top_k: int = param(20, "heads compared in the top-k overlap", ge=1)
    temporal_sets: tuple[str, ...] | None = param(
        None, "temporal sets to use (None: all: president, head_of_government, ceo, "
        "sports_team)")
    invariant_sets: tuple[str, ...] | None = param(
        None, "invariant sets to use (None: all: capital, superclass, colour, opposite, shape)")


def _prepare(model: Any, spec: ModelSpec, prompts: Any, n: int, seed: int,
             params: dict[str, Any]) -> ScorerData:
    """Payload ``{"temporal": Task, "invariant": Task, "known": {...}}``.

    ``prompts``: None (the shipped data, filtered to known facts when ``known_only``) or a
    mapping ``{"temporal": Task, "invariant": Task}`` of ready tasks (used as given).
    """
    tasks: dict[str, Task] = {}
    known: dict[str, Any] = {}
    if prompts is None:
        for kind in ("temporal", "invariant"):
            sets = params[f"{kind}_sets"]
            task = make_task(kind, alias=bool(params["alias"]), seed=seed, model=model,
                             sets=list(sets) if sets is not None else None)
            if params["known_only"]:
                facts = known_facts(model, task, strict=False)
                known[kind] = {"known": facts.n_known, "total": facts.n_total,
                               "per_set": {s: list(v) for s, v in facts.per_set.items()}}
                if facts.task is None:
                    raise TaskError(f"the model knows none of the {facts.n_total} {kind} facts; "
                                    "no circuit can be found (known_only=False scores them "
                                    "anyway)")
                task = facts.task
            tasks[kind] = task.subset(n)
    elif isinstance(prompts, Mapping) and set(prompts) == {"temporal", "invariant"}:
        tasks = {kind: prompts[kind] for kind in ("temporal", "invariant")}
    else:
        raise TaskError("the temporal scorer takes prompts=None (the shipped facts) or "
                        "{'temporal': Task, 'invariant': Task}")
    tokens: list[Any] = []
    for task in tasks.values():
        data = prepare_scan_data(model, task, need_corrupt=True)
        tokens += [*data.clean, *(data.corrupt or []), data.answers, data.distractors]
    count = sum(len(t) for t in tasks.values())
    description = ", ".join(f"{len(t)} {k} pairs" for k, t in tasks.items())
    return ScorerData({**tasks, "known": known}, fingerprint(tokens), count, description)


def _attribute(model: Any, items: Sequence[TaskItem], params: Mapping[str, Any],
               batch_size: int, progress: bool) -> Any:
    try:
        return attribution_patching(model, list(items), method=params["method"],
                                    steps=int(params["ig_steps"]), edges=True,
                                    batch_size=batch_size, progress=progress)
    except ValueError as error:
        if isinstance(error, TaskError):
            raise
        raise ScorerParamError(str(error)) from error


def _compute(model: Any, spec: ModelSpec, data: ScorerData, params: dict[str, Any],
             batch_size: int, progress: bool) -> ScoreResult:
    circuits: dict[str, list[set[Head]]] = {"temporal": [], "invariant": []}
    records: list[dict[str, Any]] = []
    node_sum = np.zeros((spec.n_layers, spec.n_heads))
    n_temporal = 0
    for kind in ("temporal", "invariant"):
        for name, items in _sets(data.payload[kind]).items():
            if len(items) < int(params["min_set_size"]):
                records.append({"kind": kind, "set": name, "pairs": len(items),
                                "skipped": f"fewer than {params['min_set_size']} pairs"})
                continue
            result = _attribute(model, items, params, batch_size, progress)
            kept = kept_edges(result.edges, threshold=float(params["edge_threshold"]),
                              mode=str(params["threshold_mode"]), top_edges=params["top_edges"])
            heads = circuit_heads(kept, spec, kv_edges=bool(params["kv_edges"]))
            circuits[kind].append(heads)
            if kind == "temporal":
                node_sum += result.nodes["z"].pivot().to_numpy() * len(items)
                n_temporal += len(items)
            records.append({
                "kind": kind, "set": name, "pairs": len(items), "edges_kept": len(kept),
                "max_abs_edge": float(result.edges["score"].abs().max()),
                "heads": sorted(f"L{layer}H{head}" for layer, head in heads),
                "mean_ld_clean": result.meta.get("mean_ld_clean"),
                "mean_ld_corrupt": result.meta.get("mean_ld_corrupt"),
                "timings_s": result.meta.get("timings_s", {})})
    if not circuits["temporal"]:
        raise TaskError("no temporal set has enough pairs for a circuit (lower min_set_size)")
    score = membership_fractions(circuits["temporal"], spec)
    invariant = membership_fractions(circuits["invariant"], spec)
    mask = temporal_mask(score, invariant, temporal_share=float(params["temporal_share"]),
                         max_invariant_share=float(params["max_invariant_share"]))
    node = node_sum / max(n_temporal, 1)
    columns: dict[str, Any] = {"invariant_fraction": invariant, "is_temporal": mask.astype(float),
                               "node_score": node}
    meta: dict[str, Any] = {
        "circuits": records, "n_temporal_circuits": len(circuits["temporal"]),
        "n_invariant_circuits": len(circuits["invariant"]),
        "temporal_heads": [f"L{layer}H{head}" for layer, head in np.argwhere(mask).tolist()],
        "known_facts": data.payload.get("known", {}),
        "n_temporal_pairs": len(data.payload["temporal"]),
        "n_invariant_pairs": len(data.payload["invariant"]), "reference": REFERENCE}
    if params["compare_exact"]:
        from headprobe.fastscan import scan_heads

        exact = scan_heads(model, data.payload["temporal"], method="patch", direction="noising",
                           metric="logit_diff", batch_size=batch_size, progress=progress)
        grid = exact.pivot().to_numpy()
        columns["exact_patching"] = grid
        meta["agreement"] = {**agreement(node, grid, top_k=int(params["top_k"])),
                             "method": params["method"], "ig_steps": int(params["ig_steps"]),
                             "on": f"{n_temporal} temporal pairs"}
    return ScoreResult(score=torch.as_tensor(score), columns=columns, meta=meta)


def temporal_heads(table: Any) -> list[Head]:
    """The ``(layer, head)`` pairs a ``temporal`` table marks ``is_temporal``, best first
    (by ``score``, then by the most negative ``node_score``)."""
    frame = table.data[table.data["is_temporal"] > 0.5]
    frame = frame.sort_values(["score", "node_score"], ascending=[False, True], kind="stable")
    return [(int(r.layer), int(r.head)) for r in frame.itertuples()]


def format_heads(heads: Iterable[Head]) -> str:
    return ",".join(f"{layer}.{head}" for layer, head in heads)


SCORER = Scorer(
    name="temporal",
    description="temporal heads: share of temporal-fact EAP-IG circuits containing the head "
                "(and of invariant-fact circuits)",
    reference=REFERENCE + "; EAP-IG: Hanna et al. 2024, Have Faith in Faithfulness",
    prepare=_prepare,
    compute=_compute,
    prompts="None (the shipped temporal and invariant facts, filtered to known facts with "
            "known_only) or {'temporal': Task, 'invariant': Task} of ready tasks with corrupt "
            "prompts",
    params=TemporalParams,
    default_n=64,
    cheap=False,
    needs=frozenset({"pairs"}),
)
