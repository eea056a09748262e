"""Trained ground truth for the induction scorers: heads a causal test found in a trained model.

The model (:mod:`headprobe.trained`, id ``trained-induction``) is a 2-layer attention-only
Llama trained on the CPU on repeated random sequences until induction heads formed (Olsson
et al. 2022). Its known heads come from zero- and path-specific ablations of the plain Hugging
Face model, which share no code with the scorers:

- ``induction``: L1H1, L1H2, L1H3, whose joint ablation removes 100.1% of the in-context loss
  drop; L1H0 also attends along the induction pattern but removes 1.1%, so it is a negative
  (the scorer calls it an induction head: precision 0.75 at 0.5);
- ``previous_token``: L0H0 and L0H3, which removed from the layer-1 keys only remove 102.5%
  of the drop; L0H2 (a current-token head read by the layer-1 queries and values) is a
  negative.

Both scorers run at ``seq_len = 30`` (inside the training lengths 8..50, and the length of
the causal test): at the default 50 the weaker previous-token head L0H3 scores 0.4998, just
under the 0.5 threshold.
"""

from __future__ import annotations

from typing import Any

from headprobe.groundtruth import GroundTruthCase
from headprobe.trained import INDUCTION_HEADS, PREVIOUS_TOKEN_HEADS, TRAINED_MODEL_ID

SEQ_LEN = 30
"""Random tokens per copy in the scorers' prompts: the causal test's length."""


def build_trained() -> Any:
    """The shipped trained model's bridge (offline, no training)."""
    from headprobe.trained import trained_induction_model

    return trained_induction_model()[0]


def trained_cases() -> list[GroundTruthCase]:
    """The ``induction`` and ``previous_token`` scorers on ``trained-induction``.

    Measured (n = 8, seq_len 30): induction scores L1H3 0.978, L1H1 0.953, L1H2 0.869 (known)
    and L1H0 0.756, layer 0 <= 0.005: AUROC 1.0, recall 1.0, precision 0.75 at 0.5;
    previous_token scores L0H0 0.773, L0H3 0.682 (known), every other head <= 0.107:
    AUROC 1.0, recall 1.0, precision 1.0 at 0.5.
    """
    return [
        GroundTruthCase(
            head_type="induction", scorer="induction", model=TRAINED_MODEL_ID,
            source="trained", build=build_trained, known=INDUCTION_HEADS,
            description="2-layer attention-only Llama trained on repeated random sequences; "
                        "L1H1-3 are the heads whose ablation removes the in-context loss drop",
            params={"seq_len": SEQ_LEN}, n=8, threshold=0.5,
            minimum={"auroc": 0.99, "recall": 1.0, "precision": 0.75}),
        GroundTruthCase(
            head_type="induction", scorer="previous_token", model=TRAINED_MODEL_ID,
            source="trained", build=build_trained, known=PREVIOUS_TOKEN_HEADS,
            description="2-layer attention-only Llama trained on repeated random sequences; "
                        "L0H0 and L0H3 are the heads the induction heads read through their "
                        "keys (removing them from the layer-1 keys removes the loss drop)",
            params={"seq_len": SEQ_LEN}, n=8, threshold=0.5,
            minimum={"auroc": 0.99, "recall": 1.0, "precision": 1.0}),
    ]
