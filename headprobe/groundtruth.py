"""Heads of known function: the records ``headprobe validate`` measures the scorers against.

Two records, both declared by head-type folders (never by the generic layers):

- :class:`GroundTruthCase`: one scorer run on one ground-truth model whose heads of the
  scorer's type are known before anything runs, because they were planted by hand
  (:mod:`headprobe.planting`), compiled, or trained and then identified by a causal test that
  shares no code with the scorer. A head type lists its cases in the function its
  :class:`~headprobe.registry.HeadType` names as ``ground_truth``.
- :class:`KnownHead`: a head of a *real* model found so far (e.g. SmolLM2-135M's induction
  heads, Gemma-3-270M's successor head L12H0), with the evidence it rests on, kept as data
  (``HeadType.known_heads``) so that a slow test shows a regression in a scorer as a named
  head that moved.

Nothing here runs a model: the records hold builders and names; :mod:`headprobe.validate`
runs them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from headprobe.types import Head

GroundTruthSource = Literal["hand-set", "planted", "compiled", "trained"]
"""How the known heads of a ground-truth model are known:

- ``hand-set``: weights written by hand for one circuit (:mod:`headprobe.handset`);
- ``planted``: heads of chosen types written at chosen (layer, head) into a model whose
  other heads are random (:func:`headprobe.planting.planted_model`);
- ``compiled``: a program compiled to weights, each head's role known exactly;
- ``trained``: a model trained by the project until the head type appeared, the heads then
  identified by a causal test independent of every scorer.
"""

GROUND_TRUTH_SOURCES: tuple[str, ...] = ("hand-set", "planted", "compiled", "trained")


@dataclass(frozen=True)
class GroundTruthCase:
    """One scorer measured on one model whose heads of the scorer's type are known.

    Attributes:
        head_type: the head type that declares the case.
        scorer: the registered scorer run (:func:`headprobe.registry.get_scorer`).
        model: a short id of the ground-truth model (e.g. ``"planted-llama"``); cases that
            name the same id share one built model within a validation run.
        source: how its heads are known (:data:`GroundTruthSource`).
        build: builds the model: ``build() -> bridge``. Deterministic (seeded).
        known: the heads that do the job (the positives); every other head is a negative.
        description: one line: what the model contains and why ``known`` are the positives.
        prompts: ``prompts(model) -> prompts`` for the scorer, or ``None`` for its default
            data.
        params: the scorer's parameters (``progress=False`` is always added).
        n: the scorer's ``n`` (``None``: its default).
        threshold: the scorer's documented threshold: a head is called of the type when its
            score (column ``column``) is ``>= threshold``.
        column: the table column ranked (default ``score``); higher means more of the type.
        minimum: floors the fast validation asserts, ``{"auroc": 0.9, "recall": 1.0,
            "precision": 0.5}`` (any subset); a case that falls below one fails.
        causal_task: a registered task on which ablating ``known`` must hurt more than
            random head sets (``None``: no causal check for this case).
        causal_options: the task's options (e.g. ``{"n": 16}``).
        fast: whether the case runs in the fast setting (the test suite).
    """

    head_type: str
    scorer: str
    model: str
    source: GroundTruthSource
    build: Callable[[], Any]
    known: frozenset[Head]
    description: str
    prompts: Callable[[Any], Any] | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    n: int | None = None
    threshold: float = 0.5
    column: str = "score"
    minimum: Mapping[str, float] = field(default_factory=dict)
    causal_task: str | None = None
    causal_options: Mapping[str, Any] = field(default_factory=dict)
    fast: bool = True

    def __post_init__(self) -> None:
        if self.source not in GROUND_TRUTH_SOURCES:
            raise ValueError(f"ground-truth source must be one of {GROUND_TRUTH_SOURCES}, "
                             f"got {self.source!r}")
        if not self.known:
            raise ValueError(f"{self.head_type}/{self.scorer} on {self.model}: a ground-truth "
                             "case needs at least one known head")
        unknown = set(self.minimum) - {"auroc", "recall", "precision", "top_k_precision"}
        if unknown:
            raise ValueError(f"unknown minimum(s) {sorted(unknown)}: use auroc, recall, "
                             "precision or top_k_precision")


@dataclass(frozen=True)
class KnownHead:
    """A head of a real model whose function rests on evidence found so far.

    Attributes:
        model: the catalogue name of the real model (e.g. ``"smollm2-135m-instruct"``).
        head: the head.
        head_type: the head type that declares it.
        scorer: the scorer whose ranking must keep finding it.
        within_top: the head must rank within this many heads of the scorer's table
            (by ``column``) on the check's data.
        evidence: one line: the numbers it rests on (score, ablation delta vs random, ...).
        column: the column ranked (default ``score``).
        params: the scorer's parameters for the check.
        n: the scorer's ``n`` for the check (the smallest that still finds the head).
        prompts: ``prompts(model) -> prompts`` for the check, or ``None`` (default data).
        ascending: rank ``column`` lowest first (e.g. an ablation scan's normalized logit
            difference, where the head that matters most scores lowest, or a context head's
            negative conflict score).
        slow_check: the check is too slow for the test suite (why: in ``evidence``); the slow
            test skips it unless ``HEADPROBE_KNOWN_HEADS=all`` is set.
    """

    model: str
    head: Head
    head_type: str
    scorer: str
    within_top: int
    evidence: str
    column: str = "score"
    params: Mapping[str, Any] = field(default_factory=dict)
    n: int | None = None
    prompts: Callable[[Any], Any] | None = None
    ascending: bool = False
    slow_check: bool = False


__all__ = ["GROUND_TRUTH_SOURCES", "GroundTruthCase", "GroundTruthSource", "KnownHead"]
