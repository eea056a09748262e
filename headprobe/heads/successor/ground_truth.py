"""Ground truth of the ``successor`` scorer: the planted models' successor heads
(:mod:`headprobe.planted_cases`, layers 0 and 2), whose OV circuits map each item of the
ordinal sets the character tokenizer keeps (digits, numbers 1..9, both letter cases) to the
next item's code, which the unembedding reads.

Measured (seed 0, both models): successor heads 1.00, every other head <= 0.03.
Threshold 0.4: the paper's (Gould et al. 2023, documented by the scorer).
"""

from __future__ import annotations

from headprobe.groundtruth import GroundTruthCase
from headprobe.planted_cases import PLANTED_MODELS, bridge_builder, describe, known


def cases() -> list[GroundTruthCase]:
    """``successor`` on ``planted-llama`` and ``planted-gemma``."""
    return [GroundTruthCase(
        head_type="successor", scorer="successor", model=model_id, source="planted",
        build=bridge_builder(model_id), known=known("successor"),
        description=(f"{describe(model_id)}. Successor heads' OV maps each ordinal item's "
                     "code to the next item's (least squares over the sets' pairs)"),
        threshold=0.4, minimum={"auroc": 1.0, "recall": 1.0, "precision": 1.0})
        for model_id in PLANTED_MODELS]
