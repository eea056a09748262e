"""Ground truth of the ``retrieval`` scorer: the planted models' retrieval heads
(:mod:`headprobe.planted_cases`), on needle trials they can answer.

The trials (:func:`needle_trials`): random lowercase text with a needle of 8 distinct digits
at a random depth, the prompt ending with the needle's first digit (about 100 tokens, within
the gemma kind's sliding window). The planted retrieval heads copy digits (the needle
alphabet) from context, so greedy decoding continues the needle; each of the 7 steps is a hit
of both retrieval heads (score 7 / 8 per trial). The induction heads copy only non-digits and
attend evenly from a digit, so they must not score.

Measured (seed 0): both retrieval heads 0.875 on both models; the highest other head is a GQA
partner of a retrieval head (it shares the planted keys and values, its query is random):
L2H2 0.094 on llama, L1H5 0.125 on gemma (Gemma's shared q-norm gain makes random queries
sharp), above the 0.1 threshold, so gemma's precision floor is 2/3.
"""

from __future__ import annotations

import random
from typing import Any

from headprobe.groundtruth import GroundTruthCase
from headprobe.inputs import Text
from headprobe.planted_cases import PLANTED_MODELS, bridge_builder, describe, known
from headprobe.tasks.base import TaskItem

NEEDLE_LENGTH = 8
# measured: gemma's GQA partner L1H5 of retrieval head L1H4 scores 0.125 (> 0.1)
PRECISION = {"planted-llama": 1.0, "planted-gemma": 0.66}


def needle_trials(model: Any, n: int = 4, seed: int = 0) -> list[TaskItem]:
    """``n`` needle trials: ``<text> <needle> <text> <needle[0]>`` with the needle span
    marked and the answer the needle's other digits."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz "
    items = []
    for index in range(n):
        needle = "".join(rng.sample("0123456789", NEEDLE_LENGTH))
        before = "".join(rng.choice(letters) for _ in range(20 + 15 * index))
        after = "".join(rng.choice(letters) for _ in range(60 - 15 * index))
        text = f"{before} {needle} {after} {needle[0]}"
        items.append(TaskItem(Text(text, spans={"needle": needle}), answer=needle[1:],
                              meta={"depth": len(before) / len(text)}))
    return items


def cases() -> list[GroundTruthCase]:
    """``retrieval`` on ``planted-llama`` and ``planted-gemma``."""
    return [GroundTruthCase(
        head_type="retrieval", scorer="retrieval", model=model_id, source="planted",
        build=bridge_builder(model_id), known=known("retrieval"),
        description=(f"{describe(model_id)}. Retrieval heads copy the digits of a needle "
                     "during decoding (7 of 8 needle tokens hit per trial); induction heads "
                     "copy other tokens only"),
        prompts=needle_trials, n=4,
        params={"max_new_tokens": NEEDLE_LENGTH - 1, "stop_at_newline": False},
        threshold=0.1,  # the paper's (Wu et al. 2024)
        minimum={"auroc": 1.0, "recall": 1.0, "precision": PRECISION[model_id]})
        for model_id in PLANTED_MODELS]
