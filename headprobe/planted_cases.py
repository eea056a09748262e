"""The planted ground-truth models (one builder per model id) and the cases of the generic
scorers on them (issue 19, ``headprobe validate``).

Every head type's ``ground_truth.py`` and :func:`generic_cases` build their models through
:func:`build_planted` with one of :data:`PLANTED_MODELS`, so cases naming the same model id
build the same model: ``planted-llama`` and ``planted-gemma`` each carry every role at once
(:data:`LAYOUT`), several heads per role in varied layers, among random heads
(:func:`headprobe.planting.planted_model`). This module names roles as strings only (through
:mod:`headprobe.registry`, like the planting layer); it imports no head type.

Generic cases (:func:`generic_cases`), on both models:

- ``dla`` (direct logit attribution) and ``ablation_scan`` (zero ablation) on the ``answer``
  head, which pushes the token ``x`` at every position (:func:`headprobe.planting.plant_answer`);
- ``activation_patching`` and ``attribution_patching`` on the induction heads, with prompt
  pairs whose answers differ by the token the induction heads copy (:func:`induction_pairs`).
  The answer head cannot be a patching case: its ``z`` reads only the constant dimension, so
  it is the same on every prompt and patching it between any two prompts changes nothing.

Sign: ``ablation_scan`` (``logit_diff``) and ``attribution_patching`` score the change of
``LD = logit[answer] - logit[distractor]`` when a head is removed (ablated, or noised), which
is negative for a head that supports the answer. Their tables have no magnitude column, so
these cases give the items with answer and distractor exchanged (:func:`reversed_items`):
``LD`` is then ``logit[distractor] - logit[answer]``, a head that pushes the answer lowers it,
removing the head raises it, and "more of the type" is the higher score.
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


def reversed_items(items: list[TaskItem]) -> list[TaskItem]:
    """``items`` with answer and distractor exchanged (the corrupt prompt kept): the sign of
    the logit difference flips (see the module docstring)."""
    return [TaskItem(item.prompt, answer=str(item.distractor), distractor=item.answer,
                     corrupt_prompt=item.corrupt_prompt, meta=dict(item.meta))
            for item in items]


def reversed_answer_items(model: Any, n: int = 6, seed: int = 0) -> list[TaskItem]:
    """:func:`answer_items` with answer ``q`` and distractor ``x`` (:func:`reversed_items`)."""
    return reversed_items(answer_items(model, n, seed))


INDUCTION_LETTERS = "abcdefghijklmnoprstuvwyz"
"""Letters of :func:`induction_pairs`: no digits (the induction heads do not copy the needle
alphabet, the retrieval heads do), no ``x`` (the answer head's token), no ``q``."""


def induction_pairs(model: Any, n: int = 6, seed: int = 0, length: int = 10
                    ) -> list[TaskItem]:
    """``n`` prompt pairs ``S + S[:k]`` (``S``: ``length`` distinct letters, ``2 <= k <
    length - 1``) whose answer is ``S[k]``; the corrupt prompt replaces ``S[k]`` in the first
    half by a letter ``c`` not in ``S``, the distractor. Only the induction heads read the
    replaced token at the last position (they copy the token after the earlier copy of the
    current one), so they alone carry ``LD_clean - LD_corrupt``."""
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        letters = rng.sample(INDUCTION_LETTERS, length + 1)
        seq, other = letters[:length], letters[length]
        k = rng.randrange(2, length - 1)
        corrupt = [*seq[:k], other, *seq[k + 1:]]
        items.append(TaskItem("".join(seq + seq[:k]), answer=seq[k], distractor=other,
                              corrupt_prompt="".join(corrupt + seq[:k])))
    return items


def reversed_induction_pairs(model: Any, n: int = 6, seed: int = 0) -> list[TaskItem]:
    """:func:`induction_pairs` with answer and distractor exchanged (:func:`reversed_items`)."""
    return reversed_items(induction_pairs(model, n, seed))


def generic_cases() -> list[GroundTruthCase]:
    """The generic scorers' planted cases on both models: ``dla`` and ``ablation_scan`` on
    the answer head, ``activation_patching`` and ``attribution_patching`` on the induction
    heads."""
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
        cases.append(GroundTruthCase(
            head_type="generic", scorer="ablation_scan", model=model_id, source="planted",
            build=bridge_builder(model_id), known=known("answer"),
            description=(f"{describe(model_id)}. Zero-ablating the answer head removes its "
                         "push of x; answer and distractor are exchanged (LD = logit(q) - "
                         "logit(x), see the module docstring), so its score is the rise of "
                         "LD, about +4.6; no other head moves LD by 0.4. Mean ablation "
                         "cannot find it: its z is constant, equal to its mean"),
            prompts=reversed_answer_items, n=6,
            params={"method": "zero", "metric": "logit_diff"},
            # no documented threshold: a head is called important when removing it moves
            # the logit difference by at least 1 logit (the answer head moves it by ~4.6)
            threshold=1.0,
            minimum={"auroc": 1.0, "recall": 1.0, "precision": 1.0}))
        cases.append(GroundTruthCase(
            head_type="generic", scorer="activation_patching", model=model_id,
            source="planted", build=bridge_builder(model_id), known=known("induction"),
            description=(f"{describe(model_id)}. Repeated letters, the corrupt prompt "
                         "changing the token the induction heads copy; patching either "
                         "induction head's clean z into the corrupt run restores about half "
                         "of the logit difference (0.47 each, normalized), every other head "
                         "at most 0.03. The answer head is no patching case: its z is the "
                         "same on every prompt"),
            prompts=induction_pairs, n=6,
            # no documented threshold: 0.2 of the clean-corrupt logit difference restored
            threshold=0.2,
            minimum={"auroc": 1.0, "recall": 1.0, "precision": 1.0}))
        cases.append(GroundTruthCase(
            head_type="generic", scorer="attribution_patching", model=model_id,
            source="planted", build=bridge_builder(model_id), known=known("induction"),
            description=(f"{describe(model_id)}. The activation_patching case's pairs with "
                         "answer and distractor exchanged (the score, the estimated change "
                         "of LD when a head is noised, is then positive for the heads that "
                         "carry it; see the module docstring): EAP-IG gives the induction "
                         "heads about +19 logits, every other head at most 1.3 (the "
                         "retrieval heads L1H4 and L2H3)"),
            prompts=reversed_induction_pairs, n=6,
            # no documented threshold: an estimated 5 logits of the ~41-logit clean-corrupt
            # difference (the induction heads get ~19, the next heads ~1.3)
            threshold=5.0,
            minimum={"auroc": 1.0, "recall": 1.0, "precision": 1.0}))
    return cases


__all__ = ["ANSWER_DISTRACTOR", "ANSWER_TOKEN", "INDUCTION_LETTERS", "LAYOUT",
           "NEEDLE_ALPHABET", "PLANTED_MODELS", "ROLE_OPTIONS", "answer_items", "bridge_builder",
           "build_planted", "describe", "generic_cases", "induction_pairs", "known",
           "reversed_answer_items", "reversed_induction_pairs", "reversed_items"]
