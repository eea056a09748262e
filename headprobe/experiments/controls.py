"""Head-set syntax and the random control sets an ablation is compared against.

:func:`random_head_sets` draws head sets of the target's size that share no head with it,
either in the target's layers (``same_layers``: the same number of heads per layer),
anywhere in the model (``uniform``) or matched head by head on another per-head score
(``matched``: :mod:`headprobe.experiments.matching`). Draws use the
:class:`numpy.random.Generator` passed in, never a global seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from headprobe.arch import ModelSpec
from headprobe.errors import InterventionError
from headprobe.experiments.matching import MatchedSet, MatchOn, matched_head_sets
from headprobe.types import Head

RandomFrom = Literal["same_layers", "uniform", "matched"]
RANDOM_FROM: tuple[RandomFrom, ...] = ("same_layers", "uniform", "matched")


def format_heads(heads: Sequence[Head]) -> str:
    """``[(18, 6), (17, 3)] -> "17.3,18.6"`` (the CLI's --heads syntax)."""
    return ",".join(f"{layer}.{head}" for layer, head in sorted(heads))


def parse_heads(text: str) -> list[Head]:
    """``"18.6,17.3" -> [(18, 6), (17, 3)]``; :class:`InterventionError` on bad syntax."""
    heads = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        pieces = part.split(".")
        if len(pieces) != 2 or not all(p.lstrip("-").isdigit() for p in pieces):
            raise InterventionError(
                f"cannot read head {part!r}: write heads as LAYER.HEAD, e.g. 18.6,17.3")
        heads.append(Head(int(pieces[0]), int(pieces[1])))
    if not heads:
        raise InterventionError("no heads given: write heads as LAYER.HEAD, e.g. 18.6,17.3")
    return heads


def random_head_sets(
    spec: ModelSpec,
    target: Sequence[Head],
    n_sets: int,
    *,
    random_from: RandomFrom = "same_layers",
    rng: np.random.Generator,
    match: MatchOn | None = None,
) -> list[list[Head]]:
    """``n_sets`` random head sets of ``len(target)`` heads, disjoint from ``target``.

    ``same_layers``: as many heads in each layer as the target has there, drawn from that
    layer's other heads; when a layer has too few other heads, the rest is drawn from the
    other heads of layers ``min(target layers)..max(target layers)``. ``uniform``: any
    non-target head of the model. ``matched``: for each target head a distinct non-target
    head whose score in ``match`` is within its tolerance
    (:func:`~headprobe.experiments.matching.matched_head_sets`, which also gives the pairs).
    """
    targets = set(target)
    if random_from not in RANDOM_FROM:
        raise InterventionError(
            f"random_from must be one of {', '.join(RANDOM_FROM)}, got {random_from!r}")
    check_match(random_from, match)
    if random_from == "matched":
        assert match is not None
        return [s.heads for s in matched_head_sets(spec, list(target), n_sets, match, rng=rng)]
    others = [h for h in spec.all_heads() if h not in targets]
    if n_sets > 0 and len(others) < len(targets):
        raise InterventionError(
            f"cannot draw random sets of {len(targets)} heads disjoint from the target: the "
            f"model has only {len(others)} other heads")
    layers = sorted({layer for layer, _ in targets})
    in_range = [h for h in others if layers[0] <= h[0] <= layers[-1]]
    sets: list[list[Head]] = []
    for _ in range(n_sets):
        if random_from == "uniform":
            picks = rng.choice(len(others), size=len(targets), replace=False)
            sets.append(sorted(others[i] for i in picks))
            continue
        chosen: list[Head] = []
        short = 0
        for layer in layers:
            need = sum(1 for t in targets if t[0] == layer)
            pool = [h for h in others if h[0] == layer]
            take = min(need, len(pool))
            chosen += [pool[i] for i in rng.choice(len(pool), size=take, replace=False)]
            short += need - take
        if short:
            pool = [h for h in in_range if h not in chosen]
            if len(pool) < short:
                pool = [h for h in others if h not in chosen]
            chosen += [pool[i] for i in rng.choice(len(pool), size=short, replace=False)]
        sets.append(sorted(chosen))
    return sets


def check_match(random_from: str, match: MatchOn | None) -> None:
    """:class:`InterventionError` unless ``match`` is given exactly when ``random_from`` is
    ``matched``."""
    if random_from == "matched" and match is None:
        raise InterventionError("random_from = 'matched' needs match=MatchOn(scores, "
                                "tolerance) (e.g. MatchOn.from_table(sink_table, "
                                "tolerance=0.05))")
    if random_from != "matched" and match is not None:
        raise InterventionError(f"match is given but random_from is {random_from!r}; set "
                                "random_from = 'matched' to use it")

def control_sets(spec: ModelSpec, target: Sequence[Head], n_sets: int, *,
                 random_from: RandomFrom, match: MatchOn | None, rng: np.random.Generator
                 ) -> tuple[list[list[Head]], list[MatchedSet]]:
    """The control sets of one target, as the ablation and dose harnesses draw them:
    ``(sets, matched)``, where ``matched`` holds each set's (target, control) pairs when
    ``random_from`` is ``matched`` and is empty otherwise (:func:`check_match` first)."""
    check_match(random_from, match)
    if match is not None:
        matched = matched_head_sets(spec, list(target), n_sets, match, rng=rng)
        return [s.heads for s in matched], matched
    return random_head_sets(spec, target, n_sets, random_from=random_from, rng=rng), []
