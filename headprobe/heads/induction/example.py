"""Example with an exactly known answer (hand-set): the two-head induction circuit.

:func:`headprobe.handset.copy_circuit` wires the tiny Llama by hand: ``L0H0`` attends to the
previous token (40 logits above any other key) and copies its letter; ``L1H2`` matches the
current letter against that copy, so it attends to the token after the earlier occurrence.
On ``<s>`` + eight distinct letters repeated twice, ``L1H2`` puts all but < 1e-12 of its
attention on the induction targets: its ``induction`` score is 1 (to 1e-6) and every other
head scores below 0.5 (their attention is random or on the previous token).
"""

from __future__ import annotations

from headprobe.examples import Example
from headprobe.handset import INDUCTION_HEAD, copy_circuit

PROMPTS = ("abcdefgh" * 2, "hgfedcba" * 2, "cafebhdg" * 2)


def example() -> Example:
    """The ``induction`` scorer on the hand-set copy circuit: ``L1H2`` first, score 1."""
    model, _ = copy_circuit()
    ids = [model.to_tokens(text)[0] for text in PROMPTS]
    return Example(
        head_type="induction", scorer="induction", model=model, kind="hand-set",
        description="tiny Llama with a hand-set previous-token head L0H0 and induction head "
                    "L1H2, on 3 repeated 8-letter sequences",
        prompts=ids, top=(INDUCTION_HEAD,), scores={INDUCTION_HEAD: 1.0}, rest_below=0.5)
