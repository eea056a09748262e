"""The planted ground-truth models (one builder per model id) and the cases of the generic
scorers on them (issue 19, ``headprobe validate``).

Every head type's ``ground_truth.py`` and :func:`generic_cases` build their models through
:func:`build_planted` with one of :data:`PLANTED_MODELS`, so cases naming the same model id
build the same model: ``planted-llama`` and ``planted-gemma`` each carry every role at once
(:data:`LAYOUT`), several heads per role in varied layers, among random heads
(:func:`headprobe.planting.planted_model`). This module names roles as strings only (through
:mod:`headprobe.registry`, like the planting layer); it imports no head type.

Generic cases (:func:`generic_cases`): ``dla`` (direct logit attribution) on the ``answer``
head, which pushes the token ``x`` at every position (:func:`headprobe.planting.plant_answer`).
"""

from __future__ import annotations

import random
from typing import Any

from headprobe.groundtruth import GroundTruthCase
from headprobe.planting import PlantedModel, planted_model
from headprobe.tasks.base import TaskItem
from headprobe.types import Head

NEEDLE_ALPHABET = "0123456789"
ANSWER_TOKEN = "x"
ANSWER_DISTRACTOR = "q"

# {(layer, head): role}: two heads per role (one answer head), in every layer, one planted
# head per kv group at most (kv group = head // 2). The gemma kind's global layers are 1 and
# 3 (both sinks sit there: a sink in a sliding layer cannot see BOS past its window).
LAYOUT: dict[tuple[int, int], str] = {
    (0, 0): "previous_token", (0, 3): "duplicate_token", (0, 5): "successor",
    (1, 0): "sink", (1, 2): "previous_token", (1, 4): "retrieval", (1, 6): "induction",
    (2, 1): "induction", (2, 3): "retrieval", (2, 5): "successor", (2, 7): "duplicate_token",
    (3, 2): "sink", (3, 4): "answer",
}
ROLE_OPTIONS: dict[str, dict[str, Any]] = {"answer": {"token": ANSWER_TOKEN}}

PLANTED_MODELS: dict[str, str] = {"planted-llama": "llama", "planted-gemma": "gemma"}


def build_planted(model_id: str, seed: int = 0) -> PlantedModel:
    """The planted model ``model_id`` (:data:`PLANTED_MODELS`): :data:`LAYOUT` with the
    digits as the needle alphabet (retrieval heads copy digits, induction heads the rest)."""
    if model_id not in PLANTED_MODELS:
        raise KeyError(f"unknown planted model {model_id!r}; known: {sorted(PLANTED_MODELS)}")
    return planted_model(PLANTED_MODELS[model_id], LAYOUT, seed=seed,  # type: ignore[arg-type]
                         needle_alphabet=NEEDLE_ALPHABET, role_options=ROLE_OPTIONS)


def bridge_builder(model_id: str) -> Any:
    """``build() -> bridge`` of ``model_id`` (a :attr:`GroundTruthCase.build`)."""
    def build() -> Any:
        return build_planted(model_id).bridge

    build.__qualname__ = f"build[{model_id}]"
    return build


def known(role: str) -> frozenset[Head]:
    """The heads of :data:`LAYOUT` planted as ``role`` (the same on every planted model)."""
    return frozenset(Head(*key) for key, r in LAYOUT.items() if r == role)


def describe(model_id: str) -> str:
    """One line: what ``model_id`` contains."""
    roles: dict[str, list[str]] = {}
    for (layer, head), role in sorted(LAYOUT.items()):
        roles.setdefault(role, []).append(f"L{layer}H{head}")
    listed = "; ".join(f"{role} {' '.join(heads)}" for role, heads in roles.items())
    return (f"{model_id} ({PLANTED_MODELS[model_id]}-style, 4 layers x 8 heads, 19 random "
            f"heads): {listed}")


def answer_items(model: Any, n: int = 6, seed: int = 0) -> list[TaskItem]:
    """``n`` prompts of random lowercase text (no ``x``, no ``q``) whose answer is
    :data:`ANSWER_TOKEN` and distractor :data:`ANSWER_DISTRACTOR`."""
    rng = random.Random(seed)
    alphabet = [c for c in "abcdefghijklmnopqrstuvwxyz " if c not in (ANSWER_TOKEN,
                                                                      ANSWER_DISTRACTOR)]
    return [TaskItem("".join(rng.choice(alphabet) for _ in range(24)),
                     answer=ANSWER_TOKEN, distractor=ANSWER_DISTRACTOR) for _ in range(n)]


def generic_cases() -> list[GroundTruthCase]:
    """The generic scorers' planted cases: ``dla`` on the answer head of both models."""
    cases = []
    for model_id in PLANTED_MODELS:
        cases.append(GroundTruthCase(
            head_type="generic", scorer="dla", model=model_id, source="planted",
            build=bridge_builder(model_id), known=known("answer"),
            description=(f"{describe(model_id)}. The answer head writes x's code into the "
                         "subspace the unembedding reads at every position, so it carries "
                         "logit(x) - logit(q); every other head adds at most a copy of a "
                         "prompt letter's code (nearly orthogonal to x - q)"),
            prompts=answer_items, n=6,
            # DLA has no documented threshold: a head is called an answer head when it
            # carries at least 1 logit of the difference (the planted head carries ~5)
            threshold=1.0,
            minimum={"auroc": 1.0, "recall": 1.0, "precision": 1.0}))
    return cases


__all__ = ["ANSWER_DISTRACTOR", "ANSWER_TOKEN", "LAYOUT", "NEEDLE_ALPHABET", "PLANTED_MODELS",
           "ROLE_OPTIONS", "answer_items", "bridge_builder", "build_planted",
           "describe", "generic_cases", "known"]
