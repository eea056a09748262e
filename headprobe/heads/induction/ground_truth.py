"""Ground truth of the ``previous_token``, ``duplicate_token`` and ``induction`` scorers: the
planted models' heads of those roles (:mod:`headprobe.planted_cases`), two per role in
different layers, on the scorers' default data (repeated random tokens; 8 prompts of
BOS + 20 tokens x 2, so each run takes about a second).

Measured (seed 0, both models): previous-token heads 1.00 (next: 0.20), duplicate-token
heads 1.00 (next: 0.07), induction heads 0.90 (next: 0.13, a retrieval head): the induction
heads copy every token but the needle alphabet (digits), from which they attend evenly, so
about a tenth of their rows score near zero. No scorer documents a threshold for these
attention fractions; 0.5 (half of a row's attention on the predicted key) is chosen here.
"""

from __future__ import annotations

from headprobe.groundtruth import GroundTruthCase
from headprobe.planted_cases import PLANTED_MODELS, bridge_builder, describe, known

WHY = {
    "previous_token": "previous-token heads attend from i to i - 1 by rotary position alone",
    "duplicate_token": "duplicate-token heads match the current token's code against every "
                       "earlier token's code",
    "induction": "induction heads match the current token's code against the previous-token "
                 "code written by the previous-token heads (needle digits excepted)",
}


def cases() -> list[GroundTruthCase]:
    """Each of the three scorers on ``planted-llama`` and ``planted-gemma``."""
    return [GroundTruthCase(
        head_type="induction", scorer=scorer, model=model_id, source="planted",
        build=bridge_builder(model_id), known=known(scorer),
        description=f"{describe(model_id)}. {WHY[scorer]}",
        params={"seq_len": 20}, n=8,
        threshold=0.5,  # chosen: no documented threshold (see the module docstring)
        minimum={"auroc": 1.0, "recall": 1.0, "precision": 1.0})
        for scorer in WHY for model_id in PLANTED_MODELS]
