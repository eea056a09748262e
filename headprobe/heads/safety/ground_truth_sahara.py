"""Ground truth of the ``sahara`` scorer: the hand-set copy circuit, where only the
previous-token head ``L0H0`` and the induction head ``L1H2`` write to the residual stream
(:mod:`headprobe.heads.safety.example`, the ``ships`` example's model and prompts).

Sahara (Zhou et al. 2025) scores a head by the angle its ablation turns the dominant direction
of the last-position final hidden states of a prompt set; ablating any of the ten silenced
heads leaves the model the same function, so their angle is 0, and the two wired heads turn
it (measured: ``L0H0`` 58.2 degrees, ``L1H2`` 50.5). The case ranks the single-head map (the
table's ``score``, the greedy search's first step; ``greedy_steps=1``). It checks the scorer's
geometry, not safety: the circuit does not refuse, and no model with known refusal heads
exists yet. The greedy set past the first step is not checked (on this circuit the later
steps add heads that tie at no change).
"""

from __future__ import annotations

from typing import Any

from headprobe.groundtruth import GroundTruthCase
from headprobe.handset import INDUCTION_HEAD, PREVIOUS_HEAD, copy_circuit
from headprobe.heads.safety.example import PROMPTS
from headprobe.inputs import Text
from headprobe.types import Head


def build() -> Any:
    """The hand-set copy circuit (:func:`headprobe.handset.copy_circuit`)."""
    return copy_circuit()[0]


def prompts(model: Any) -> list[Text]:
    """The ``ships`` example's 3 prompts, whose reply copies a letter."""
    return [Text(prompt) for prompt in PROMPTS]


def sahara_cases() -> list[GroundTruthCase]:
    """``sahara`` on the copy circuit: ``L0H0`` and ``L1H2`` are the only heads that write."""
    return [GroundTruthCase(
        head_type="safety", scorer="sahara", model="copy-circuit", source="hand-set",
        build=build, known=frozenset({Head(*PREVIOUS_HEAD), Head(*INDUCTION_HEAD)}),
        description=("tiny Llama where only the hand-set heads L0H0 and L1H2 write; ablating "
                     "either turns the dominant direction of the final hidden states (58 and "
                     "51 degrees), every other head 0 (the single-head Sahara map)"),
        prompts=prompts, params={"greedy_steps": 1},
        # no documented threshold: 10 degrees (the wired heads turn it 50 or more)
        threshold=10.0, minimum={"auroc": 1.0, "recall": 1.0, "precision": 1.0})]


__all__ = ["build", "prompts", "sahara_cases"]
