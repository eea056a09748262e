"""Random control head sets matched to the target on another per-head score.

A control set for target heads ``t_1..t_k`` holds, for each ``t_i``, one non-target head ``c_i``
whose score ``s`` (e.g. the ``sink`` score, the ``induction`` score) is within ``tolerance``
of the target's: ``|s(c_i) - s(t_i)| <= tolerance``, optionally also in the same layer as
``t_i`` (``within = "layer"``) or in the same kv group (``within = "kv_group"``: same layer
and same kv head). No head appears twice in a set. Each ``c_i`` is drawn uniformly from the
heads that qualify, target heads with the fewest candidates first (so a scarce candidate is
not taken by a head that had others). When a target head has no candidate the draw stops
with an :class:`~headprobe.errors.InterventionError` naming the closest head and the
tolerance that would admit it: the tolerance is never widened behind the user's back.
Draws use the :class:`numpy.random.Generator` passed in, never a global seed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from headprobe.arch import ModelSpec
from headprobe.errors import InterventionError
from headprobe.types import Head

MatchWithin = Literal["model", "layer", "kv_group"]
MATCH_WITHIN: tuple[MatchWithin, ...] = ("model", "layer", "kv_group")


@dataclass(frozen=True)
class MatchOn:
    """What matched controls are matched on.

    Attributes:
        scores: [n_layers, n_heads] per-head score (NaN: a head never drawn).
        tolerance: the largest ``|s(control) - s(target)|`` allowed (>= 0).
        within: ``model`` (any head), ``layer`` (the target head's layer) or ``kv_group``
            (its layer and kv head).
        label: what the score is, for reports (e.g. ``"sink:score"``).
    """

    scores: np.ndarray
    tolerance: float
    within: MatchWithin = "model"
    label: str = "score"

    def __post_init__(self) -> None:
        scores = np.asarray(self.scores, dtype=np.float64)
        if scores.ndim != 2:
            raise InterventionError(f"match scores must be an [n_layers, n_heads] grid, got "
                                    f"shape {scores.shape}")
        object.__setattr__(self, "scores", scores)
        if not np.isfinite(self.tolerance) or self.tolerance < 0:
            raise InterventionError(f"match tolerance must be a number >= 0, got "
                                    f"{self.tolerance!r}")
        if self.within not in MATCH_WITHIN:
            raise InterventionError(f"match within must be one of {', '.join(MATCH_WITHIN)}, "
                                    f"got {self.within!r}")

    @classmethod
    def from_table(cls, table: Any, column: str = "score", *, tolerance: float,
                   within: MatchWithin = "model", label: str | None = None) -> MatchOn:
        """Match on ``column`` of a :class:`~headprobe.headtable.HeadTable` (query heads)."""
        if getattr(table, "is_kv", False):
            raise InterventionError("match scores must be per query head; this table is per "
                                    "kv head")
        if column not in table.data.columns:
            raise InterventionError(f"no column {column!r} in the {table.scorer} table to "
                                    f"match on; its columns: {', '.join(map(str, table.data))}")
        grid = table.pivot(column).sort_index().sort_index(axis=1).to_numpy(dtype=np.float64)
        return cls(grid, float(tolerance), within,
                   label if label is not None else f"{table.scorer}:{column}")

    def check(self, spec: ModelSpec) -> None:
        """:class:`InterventionError` unless the grid is ``spec``'s shape."""
        if self.scores.shape != (spec.n_layers, spec.n_heads):
            raise InterventionError(
                f"match scores are {self.scores.shape[0]} x {self.scores.shape[1]} but "
                f"{spec.name} has {spec.n_layers} layers x {spec.n_heads} heads")

    def score(self, head: Head) -> float:
        """The score of ``head``."""
        return float(self.scores[head[0], head[1]])

    def digest(self) -> str:
        """sha256 prefix of the grid (rounded to 1e-9), the tolerance and ``within``: what a
        run key keeps of the match."""
        payload = np.round(np.nan_to_num(self.scores, nan=-1e300), 9).tobytes()
        text = f"{self.tolerance!r}|{self.within}|{self.label}".encode()
        return hashlib.sha256(payload + text).hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        """JSON-able description (label, tolerance, within, digest) for metadata."""
        return {"label": self.label, "tolerance": self.tolerance, "within": self.within,
                "digest": self.digest()}


@dataclass(frozen=True)
class MatchedSet:
    """One matched control set.

    Attributes:
        pairs: ``(target head, control head)`` in the target's order.
    """

    pairs: tuple[tuple[Head, Head], ...]

    @property
    def heads(self) -> list[Head]:
        """The control heads, sorted."""
        return sorted(control for _, control in self.pairs)


def _pool(spec: ModelSpec, match: MatchOn, target: Head, others: Sequence[Head]) -> list[Head]:
    """The non-target heads that may stand in for ``target`` by ``within`` (before the
    tolerance)."""
    if match.within == "model":
        return list(others)
    if match.within == "layer":
        return [h for h in others if h[0] == target[0]]
    kv = spec.kv_head(target[1])
    return [h for h in others if h[0] == target[0] and spec.kv_head(h[1]) == kv]


def _where(match: MatchOn) -> str:
    return {"model": "", "layer": " in its layer",
            "kv_group": " in its kv group"}[match.within]


def _fmt(head: Head) -> str:
    return f"L{head[0]}H{head[1]}"


def candidates(spec: ModelSpec, target: Sequence[Head], match: MatchOn
               ) -> dict[Head, list[Head]]:
    """``{target head: [non-target heads within tolerance]}``.

    Raises:
        InterventionError: a target head has no candidate (the message names the closest
            head and the tolerance it would need), or the target's own score is NaN.
    """
    match.check(spec)
    targets = list(dict.fromkeys(Head(*t) for t in target))
    others = [h for h in spec.all_heads() if h not in set(targets)]
    out: dict[Head, list[Head]] = {}
    for head in targets:
        value = match.score(head)
        if not np.isfinite(value):
            raise InterventionError(f"{_fmt(head)} has no {match.label} (NaN) to match "
                                    "on; score every head, or leave it out of the target")
        pool = [h for h in _pool(spec, match, head, others) if np.isfinite(match.score(h))]
        if not pool:
            raise InterventionError(f"no other head{_where(match)} has {match.label} "
                                    f"to stand in for {_fmt(head)}; match within a larger "
                                    "group (within = model)")
        gaps = np.array([abs(match.score(h) - value) for h in pool])
        chosen = [h for h, gap in zip(pool, gaps, strict=True)
                  if gap <= match.tolerance + 1e-12]
        if not chosen:
            closest = pool[int(gaps.argmin())]
            raise InterventionError(
                f"no non-target head{_where(match)} has {match.label} within "
                f"{match.tolerance:g} of {_fmt(head)}'s {value:.4f}; the closest is "
                f"{_fmt(closest)} at {match.score(closest):.4f} (difference "
                f"{gaps.min():.4f}): widen the tolerance to at least {gaps.min():.4g}")
        out[head] = chosen
    return out


def matched_head_sets(spec: ModelSpec, target: Sequence[Head], n_sets: int, match: MatchOn, *,
                      rng: np.random.Generator) -> list[MatchedSet]:
    """``n_sets`` control sets, each pairing every target head with a distinct non-target head
    whose score is within ``match.tolerance`` (see the module docstring).

    Raises:
        InterventionError: no candidate for a target head (see :func:`candidates`), or
            fewer distinct candidates than target heads that share them.
    """
    if n_sets <= 0:
        return []
    pools = candidates(spec, target, match)
    order = sorted(pools, key=lambda h: len(pools[h]))  # scarcest first
    union = {h for pool in pools.values() for h in pool}
    if len(union) < len(pools):
        raise InterventionError(
            f"only {len(union)} distinct heads are within {match.tolerance:g} of the "
            f"{len(pools)} target heads' {match.label} values; widen the tolerance or "
            "ablate fewer heads")
    sets: list[MatchedSet] = []
    for _ in range(n_sets):
        used: set[Head] = set()
        picked: dict[Head, Head] = {}
        for head in order:
            pool = [h for h in pools[head] if h not in used]
            if not pool:
                raise InterventionError(
                    f"the {len(pools[head])} heads within {match.tolerance:g} of "
                    f"{_fmt(head)}'s {match.label} are all taken by other target heads "
                    "in this set; widen the tolerance or ablate fewer heads")
            choice = pool[int(rng.integers(len(pool)))]
            used.add(choice)
            picked[head] = choice
        sets.append(MatchedSet(tuple((head, picked[head]) for head in pools)))
    return sets


def match_columns(match: MatchOn, heads: Sequence[Head]) -> dict[str, Any]:
    """``match_scores`` (the heads' scores in sorted head order, ``"0.930,0.951"``) and
    ``match_score_mean`` for one table row; empty values for no heads."""
    ordered = sorted(Head(*h) for h in heads)
    values = [match.score(h) for h in ordered]
    return {"match_scores": ",".join(f"{v:.4f}" for v in values),
            "match_score_mean": float(np.mean(values)) if values else float("nan")}


def match_gaps(match: MatchOn, sets: Sequence[MatchedSet]) -> list[float]:
    """Per set, the largest ``|s(control) - s(target)|`` over its pairs."""
    return [max(abs(match.score(c) - match.score(t)) for t, c in s.pairs) for s in sets]


def with_match_columns(table: Any, match: MatchOn, heads: Sequence[Sequence[Head] | None],
                       gaps: Sequence[float | None]) -> Any:
    """``table`` (one row per condition, in the order of ``heads``) with ``match_scores``,
    ``match_score_mean`` (:func:`match_columns`; empty for a row without heads) and
    ``match_gap`` (the set's largest score difference to its target head; NaN for rows that
    are not matched sets)."""
    out = table.copy()
    rows = [match_columns(match, h or []) for h in heads]
    out["match_scores"] = [r["match_scores"] for r in rows]
    out["match_score_mean"] = [r["match_score_mean"] for r in rows]
    out["match_gap"] = [float("nan") if g is None else float(g) for g in gaps]
    return out


def match_summary(match: MatchOn, sets: Sequence[MatchedSet]) -> dict[str, Any]:
    """The match's headline for an experiment summary: what it matched on, the tolerance,
    each target head's score, how many of the sets differ (a narrow match may draw the same
    set twice) and the largest and mean score difference over all sets."""
    targets = [t for t, _ in sets[0].pairs] if sets else []
    gaps = match_gaps(match, sets)
    return {**match.describe(),
            "target_scores": {_fmt(t): round(match.score(t), 6) for t in targets},
            "n_distinct_sets": len({tuple(s.heads) for s in sets}),
            "max_gap": max(gaps) if gaps else None,
            "mean_gap": float(np.mean(gaps)) if gaps else None}
