"""Example with an exactly known answer (hand-set): the induction head retrieves the needle.

On the hand-set copy circuit (:func:`headprobe.handset.copy_circuit`) the needle is eight
distinct letters inside filler text (capitals: only ``a`` .. ``h`` have codes) and the
prompt ends with the needle's first letter. The induction head ``L1H2`` then attends to
the next needle letter and the unembedding reads
only its output, so greedy decoding copies the needle's other 7 letters; at each of the 7
steps ``L1H2``'s attention argmax is the needle letter it copies. Its ``retrieval`` score
is 7 / 8 (a hit is worth 1 / needle length) on every trial; every trial passes the gate
(ROUGE-1 recall 1); no other head scores 0.5.
"""

from __future__ import annotations

from headprobe.examples import Example
from headprobe.handset import INDUCTION_HEAD, copy_circuit
from headprobe.inputs import Text
from headprobe.tasks.base import TaskItem

NEEDLES = ("abcdefgh", "hdbfaceg")


def example() -> Example:
    """The ``retrieval`` scorer on two needle trials: ``L1H2`` first, score 7/8."""
    model, _ = copy_circuit()
    items = [TaskItem(Text(f"NOTE: THE KEY IS {needle}. KEEP IT. Q? {needle[0]}",
                           spans={"needle": needle}), answer=needle[1:])
             for needle in NEEDLES]
    return Example(
        head_type="retrieval", scorer="retrieval", model=model, kind="hand-set",
        description="tiny Llama with a hand-set induction head L1H2 that copies, on 2 "
                    "needle trials ending with the needle's first letter",
        prompts=items, params={"max_new_tokens": 7, "stop_at_newline": False},
        top=(INDUCTION_HEAD,), scores={INDUCTION_HEAD: 7 / 8}, rest_below=0.5)
