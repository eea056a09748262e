"""Ground truth of the ``sink`` scorer: the planted models' sink heads
(:mod:`headprobe.planted_cases`), in layers 1 and 3 (global layers on the gemma kind), on the
scorer's default data (2 prompts per domain).

Measured (seed 0, both models): sink heads 1.00, every other head <= 0.06 (the answer head
attends evenly, not to BOS). Threshold 0.9: the scorer's documented ``dormant_sink`` share.
"""

from __future__ import annotations

from headprobe.groundtruth import GroundTruthCase
from headprobe.planted_cases import PLANTED_MODELS, bridge_builder, describe, known


def cases() -> list[GroundTruthCase]:
    """``sink`` on ``planted-llama`` and ``planted-gemma``."""
    return [GroundTruthCase(
        head_type="sink", scorer="sink", model=model_id, source="planted",
        build=bridge_builder(model_id), known=known("sink"),
        description=(f"{describe(model_id)}. Sink heads' queries read the constant and their "
                     "keys the BOS flag, so they put all attention on the first token"),
        n=2, threshold=0.9, minimum={"auroc": 1.0, "recall": 1.0, "precision": 1.0})
        for model_id in PLANTED_MODELS]
