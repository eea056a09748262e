"""Example with an exactly known answer (hand-set): only the circuit's heads move the reply.

On the hand-set copy circuit (:func:`headprobe.handset.copy_circuit`) only the
previous-token head ``L0H0`` and the induction head ``L1H2`` write to the residual stream;
every other head's output weights are zero. Ships (Zhou et al. 2025) ablates one head at a
time (uniform attention gives the table's ``score``) and measures the KL divergence of the
first reply token's distribution: for the ten silenced heads the ablated model is the same
function, so their score is 0 (to 1e-6); ablating ``L1H2`` averages the copied letters and
ablating ``L0H0`` blurs every key of the induction head (measured: KL 69 vs 15), so those
two heads are first, ``L0H0`` above ``L1H2``.
"""

from __future__ import annotations

from headprobe.examples import Example
from headprobe.handset import INDUCTION_HEAD, PREVIOUS_HEAD, copy_circuit
from headprobe.inputs import Text

PROMPTS = ("NOTE abcdefgh. Q? a", "NOTE hgfedcba. Q? e", "NOTE cafebhdg. Q? b")


def example() -> Example:
    """The ``ships`` scorer on the copy circuit: the two wired heads first, the rest 0."""
    model, spec = copy_circuit()
    silenced = {(layer, head): 0.0 for layer in range(spec.n_layers)
                for head in range(spec.n_heads)}
    del silenced[INDUCTION_HEAD], silenced[PREVIOUS_HEAD]
    return Example(
        head_type="safety", scorer="ships", model=model, kind="hand-set",
        description="tiny Llama where only the hand-set heads L0H0 and L1H2 write, on 3 "
                    "prompts whose reply copies a letter",
        prompts=[Text(p) for p in PROMPTS], top=(PREVIOUS_HEAD, INDUCTION_HEAD), scores=silenced)
