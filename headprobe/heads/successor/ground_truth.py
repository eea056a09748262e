"""Ground truth of the ``successor`` scorer: the planted models' successor heads
(:mod:`headprobe.planted_cases`, layers 0 and 2), whose OV circuits map each item of the
ordinal sets the character tokenizer keeps (digits, numbers 1..9, both letter cases) to the
next item's code, which the unembedding reads.

Measured (seed 0, both models): successor heads 1.00, every other head <= 0.03.
Threshold 0.4: the paper's (Gould et al. 2023, documented by the scorer).

``successor_behaviour`` on the same models, with the three kinds written for the character
tokenizer (:func:`behaviour_tasks`): ``increment`` runs of consecutive letters ("cdef" -> "g",
distractor "f"), ``repeat`` one letter repeated ("fff" -> "f", distractor "g": the induction
heads copy it, the successor heads push the distractor) and, as ``facts``, the answer head's
items (:func:`headprobe.planted_cases.answer_items`, x vs q). Zero ablation (mean ablation
ranks the same, 1.49 / 1.47 on planted-llama, but takes ~20 s instead of ~2 s). Measured
(seed 0): successor heads 1.49 to 1.57, every other head <= 0.04 (the induction and
retrieval heads about -0.85: ablating them helps the increment).
"""

from __future__ import annotations

import random
from typing import Any

from headprobe.groundtruth import GroundTruthCase
from headprobe.planted_cases import PLANTED_MODELS, answer_items, bridge_builder, describe, known
from headprobe.tasks.base import Task, TaskItem

LETTERS = "abcdefghijklmnopqrstuvw"
"""The letters of :func:`behaviour_tasks` (no ``x``: the answer head's token)."""


def behaviour_tasks(model: Any, n: int = 6, seed: int = 0) -> dict[str, Task]:
    """``{kind: Task}`` of ``successor_behaviour`` for the character tokenizer, ``n`` items
    each: ``increment`` (a run of 3-5 consecutive letters -> the next letter, distractor the
    last shown), ``repeat`` (the run's last letter 3-5 times -> that letter, distractor its
    successor) and ``facts`` (:func:`~headprobe.planted_cases.answer_items`)."""
    rng = random.Random(seed)
    increment, repeat = [], []
    for _ in range(n):
        start, length = rng.randrange(len(LETTERS) - 6), rng.randrange(3, 6)
        last, after = LETTERS[start + length - 1], LETTERS[start + length]
        increment.append(TaskItem(LETTERS[start:start + length], answer=after,
                                  distractor=last))
        repeat.append(TaskItem(last * length, answer=last, distractor=after))
    return {"increment": Task("increment", increment), "repeat": Task("repeat", repeat),
            "facts": Task("facts", answer_items(model, n, seed))}


def cases() -> list[GroundTruthCase]:
    """``successor`` and ``successor_behaviour`` on ``planted-llama`` and ``planted-gemma``."""
    return [*weights_cases(), *behaviour_cases()]


def behaviour_cases() -> list[GroundTruthCase]:
    """``successor_behaviour`` on ``planted-llama`` and ``planted-gemma``."""
    return [GroundTruthCase(
        head_type="successor", scorer="successor_behaviour", model=model_id, source="planted",
        build=bridge_builder(model_id), known=known("successor"),
        description=(f"{describe(model_id)}. Zero-ablating a successor head breaks the "
                     "increment of letter runs (drop ~1.5 of the normalized logit "
                     "difference) and helps the repeat control, whose distractor is the "
                     "successor; no other head's drop is specific to incrementing"),
        prompts=behaviour_tasks, n=6, params={"method": "zero"},
        # no documented threshold: half of the increment's clean logit difference lost
        threshold=0.5, minimum={"auroc": 1.0, "recall": 1.0, "precision": 1.0})
        for model_id in PLANTED_MODELS]


def weights_cases() -> list[GroundTruthCase]:
    """``successor`` on ``planted-llama`` and ``planted-gemma``."""
    return [GroundTruthCase(
        head_type="successor", scorer="successor", model=model_id, source="planted",
        build=bridge_builder(model_id), known=known("successor"),
        description=(f"{describe(model_id)}. Successor heads' OV maps each ordinal item's "
                     "code to the next item's (least squares over the sets' pairs)"),
        threshold=0.4, minimum={"auroc": 1.0, "recall": 1.0, "precision": 1.0})
        for model_id in PLANTED_MODELS]
