"""Example with an exactly known answer (hand-set): heads in the time-dependent circuit only.

On the hand-set copy circuit (:func:`headprobe.handset.copy_circuit`) only the
previous-token head ``L0H0`` and the induction head ``L1H2`` write. Temporal items: the
answer is the letter copied from the context and the corrupt prompt swaps it (another
"year", another answer), so the induction head's write to the logits carries the whole
logit difference and is the kept edge of each temporal set's circuit (EAP, Hanna et al.
2024). The previous-token head's effect reaches the logits only through the induction
head's keys, whose softmax is saturated (logit gaps > 40), so its attribution is 0 (to
1e-40): it is in no circuit. Invariant items: the corrupt prompt changes only the digits of
a year, which are filler tokens with identical embeddings, so clean and corrupt runs are
the same and every edge score is exactly 0 (an empty circuit). Silenced heads have zero
output and zero gradient, so they are in no circuit. Hence ``L1H2`` alone has ``score`` 1
and ``is_temporal`` 1; every other head has 0.
"""

from __future__ import annotations

import numpy as np

from headprobe.examples import Example
from headprobe.handset import INDUCTION_HEAD, copy_circuit
from headprobe.tasks.base import Task, TaskItem


def _item(context: str, corrupt: str, last: str, answer: str, distractor: str,
          name: str) -> TaskItem:
    return TaskItem(prompt=f"NOTE {context}. Q? {last}", answer=answer, distractor=distractor,
                    corrupt_prompt=f"NOTE {corrupt}. Q? {last}", meta={"set": name})


def example() -> Example:
    """The ``temporal`` scorer (EAP) on 2 temporal sets and 1 invariant set of copy items."""
    model, spec = copy_circuit()
    temporal = Task("temporal_facts", [
        _item("abcdefgh", "acbdefgh", "a", "b", "c", "first"),
        _item("cafebhdg", "cafehbdg", "e", "b", "h", "second"),
    ], meta={"kind": "temporal"})
    invariant = Task("temporal_facts", [
        _item("1990 abcdefgh", "2010 abcdefgh", "a", "b", "c", "still"),
    ], meta={"kind": "invariant"})
    grid = np.zeros((spec.n_layers, spec.n_heads))
    grid[INDUCTION_HEAD] = 1.0
    return Example(
        head_type="temporal", scorer="temporal", model=model, kind="hand-set",
        description="tiny Llama where only the hand-set heads L0H0 and L1H2 write; temporal "
                    "pairs change the copied letter, invariant pairs only a year's digits",
        prompts={"temporal": temporal, "invariant": invariant},
        params={"method": "eap", "compare_exact": False}, grid=grid, column="is_temporal")
