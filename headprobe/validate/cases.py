"""The ground-truth cases ``headprobe validate`` runs, collected through the registry.

Three sources, none named here by head type:

- each head type's ``HeadType.ground_truth`` function (planted, compiled or trained models,
  :mod:`headprobe.groundtruth`);
- the generic scorers' cases, ``headprobe.planted_cases:generic_cases``, when that module is
  installed;
- each head type's hand-set tiny example (``HeadType.example``, :mod:`headprobe.examples`),
  turned into a case by :func:`example_case`: its ``top`` heads are the known heads (or, for
  an example that gives only an exact grid, the heads whose grid value reaches the threshold),
  the threshold is its ``rest_below`` (else 0.5). Examples of kind ``computed`` name no heads
  of known function and give no case.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from headprobe import registry
from headprobe.errors import UnknownScorerError, UsageError
from headprobe.examples import Example
from headprobe.groundtruth import GroundTruthCase
from headprobe.types import Head

GENERIC_CASES = "headprobe.planted_cases:generic_cases"
"""The generic scorers' (``dla``, ``activation_patching``, ...) cases, when installed."""

DEFAULT_THRESHOLD = 0.5
"""An example's threshold when it gives no ``rest_below``."""

EXACT = 1.0
"""The floor of an exactly known answer: the example's check already guarantees it."""


def _as_cases(found: Any, where: str) -> list[GroundTruthCase]:
    cases = list(found)
    wrong = [type(case).__name__ for case in cases if not isinstance(case, GroundTruthCase)]
    if wrong:
        raise TypeError(f"{where} returned {', '.join(sorted(set(wrong)))}, not "
                        "GroundTruthCase records")
    return cases


def head_type_cases() -> list[GroundTruthCase]:
    """Every case the head types' ``ground_truth`` functions declare, in registry order."""
    cases: list[GroundTruthCase] = []
    for head_type in registry.head_types().values():
        if head_type.ground_truth:
            cases += _as_cases(registry.resolve(head_type.ground_truth)(),
                               head_type.ground_truth)
    return cases


def generic_cases() -> list[GroundTruthCase]:
    """The generic scorers' cases from :data:`GENERIC_CASES` (none when it is not there)."""
    module, _, function = GENERIC_CASES.partition(":")
    if importlib.util.find_spec(module) is None:
        return []
    return _as_cases(getattr(importlib.import_module(module), function)(), GENERIC_CASES)


def example_case(example: Example) -> GroundTruthCase:
    """The hand-set ``example`` as a case (see the module docstring).

    Floors: AUROC and top-k precision 1 (the example's check guarantees its top heads rank
    first); precision and recall 1 too when the threshold is the example's ``rest_below`` or
    the known heads come from its exact grid (every other head is then below it).

    Raises:
        ValueError: a ``computed`` example, or one that names no head of known function.
    """
    if example.kind != "hand-set":
        raise ValueError(f"a {example.kind} example (expected scores computed independently) "
                         "names no heads of known function")
    threshold = DEFAULT_THRESHOLD if example.rest_below is None else float(example.rest_below)
    minimum = {"auroc": EXACT, "top_k_precision": EXACT}
    if example.top:
        known = frozenset(Head(*h) for h in example.top)
        if example.rest_below is not None:
            minimum.update(precision=EXACT, recall=EXACT)
    elif example.grid is not None:
        grid = np.asarray(example.grid, dtype=float)
        known = frozenset(Head(int(layer), int(head))
                          for layer, head in np.argwhere(grid >= threshold))
        minimum.update(precision=EXACT, recall=EXACT)
        if not known:
            raise ValueError(f"no top heads, and no head of its exact {example.column} grid "
                             f"reaches {threshold:g} (a signed score whose known head is the "
                             "most negative is not a ranking by 'higher is more of the type')")
    else:
        raise ValueError("it names no top heads and no exact grid")
    prompts = example.prompts
    model = example.model
    return GroundTruthCase(
        head_type=example.head_type, scorer=example.scorer, model=f"{example.head_type}-example",
        source="hand-set", build=lambda: model, known=known,
        description=example.description,
        prompts=None if prompts is None else (lambda _model: prompts),
        params=dict(example.params), threshold=threshold, column=example.column,
        minimum=minimum, fast=True)


def example_cases(skipped: dict[str, str] | None = None) -> list[GroundTruthCase]:
    """Each head type's hand-set example as a case (:func:`example_case`), in registry order.

    ``skipped``: when given, receives ``{head type: why its example gives no case}``."""
    cases = []
    for name, head_type in registry.head_types().items():
        if not head_type.example:
            continue
        try:
            cases.append(example_case(registry.resolve(head_type.example)()))
        except ValueError as error:
            if skipped is not None:
                skipped[name] = str(error)
    return cases


def case_id(case: GroundTruthCase) -> str:
    """``head_type/scorer@model``: how messages name a case."""
    return f"{case.head_type}/{case.scorer}@{case.model}"


def collect_cases(fast: bool, *, examples: bool = True,
                  skipped: dict[str, str] | None = None) -> list[GroundTruthCase]:
    """Every ground-truth case: the head types' (:func:`head_type_cases`), the generic
    scorers' (:func:`generic_cases`) and, with ``examples``, the hand-set examples'
    (:func:`example_cases`; ``skipped`` receives the examples that give none). ``fast``:
    only the cases marked ``fast``. A case declared twice (same head type, scorer, model and
    known heads) is kept once."""
    cases = head_type_cases() + generic_cases()
    if examples:
        cases += example_cases(skipped)
    if fast:
        cases = [case for case in cases if case.fast]
    seen: set[tuple[Any, ...]] = set()
    unique = []
    for case in cases:
        key = (case.head_type, case.scorer, case.model, tuple(sorted(case.known)))
        if key not in seen:
            seen.add(key)
            unique.append(case)
    return unique


def parse_scorers(text: str | None) -> list[str] | None:
    """``"induction, sink" -> ["induction", "sink"]``; ``None``/empty -> ``None`` (all).

    Raises:
        UnknownScorerError: names that are not registered scorers, listed in one line.
    """
    if not text or not text.strip():
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    known = registry.list_scorers()
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UnknownScorerError(f"unknown scorer(s) {', '.join(map(repr, unknown))} in "
                                 f"--scorers; registered scorers: {', '.join(known)}")
    return names


def select_cases(cases: Iterable[GroundTruthCase],
                 scorers: Sequence[str] | None) -> list[GroundTruthCase]:
    """The ``cases`` of the ``scorers`` (all when ``None``).

    Raises:
        UsageError: no case is left (names the scorers that have cases).
    """
    cases = list(cases)
    if scorers is None:
        return cases
    chosen = [case for case in cases if case.scorer in scorers]
    if not chosen:
        have = sorted({case.scorer for case in cases})
        raise UsageError(f"no ground-truth case for scorer(s) {', '.join(scorers)}; scorers "
                         f"with cases: {', '.join(have) or 'none'}")
    return chosen


__all__ = ["GENERIC_CASES", "case_id", "collect_cases", "example_case", "example_cases",
           "generic_cases", "head_type_cases", "parse_scorers", "select_cases"]
