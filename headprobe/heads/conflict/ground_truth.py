"""Ground truth of the ``conflict`` scorer: the hand-set copy circuit's induction head, the only
path from the context to the logits (:mod:`headprobe.heads.conflict.example`).

The example itself gives no case: its exact grid is the signed ``score`` (positive = memory
head), on which the one known head, a *context* head, is the most negative. Here the same
model and items are ranked by ``context_score = -score``, higher = more of a context head,
with the scorer's default ranking (path patching to the logits, Jin et al. 2024).

Measured: ``L1H2`` 153.0 (path; its DLA 76.5), every other head 0. Memory heads have no
ground truth yet: the circuit memorises no fact (nothing pushes the memory answer).
"""

from __future__ import annotations

from typing import Any

from headprobe.groundtruth import GroundTruthCase
from headprobe.handset import INDUCTION_HEAD, copy_circuit
from headprobe.heads.conflict.example import ITEMS
from headprobe.tasks.base import Task, TaskItem
from headprobe.types import Head


def build() -> Any:
    """The hand-set copy circuit (:func:`headprobe.handset.copy_circuit`)."""
    return copy_circuit()[0]


def items(model: Any) -> Task:
    """The conflict example's task: its 3 items, whose context answer is copied from the
    prompt (the corrupt prompt's context agrees with the memory answer)."""
    return Task("knowledge_conflict", [
        TaskItem(prompt=f"NOTE {context}. Q? {last}", answer=context_answer,
                 distractor=memory_answer, corrupt_prompt=f"NOTE {agreeing}. Q? {last}",
                 meta={"memory_answer": memory_answer, "context_answer": context_answer})
        for context, last, context_answer, memory_answer, agreeing in ITEMS],
        meta={"target": "context"})


def cases() -> list[GroundTruthCase]:
    """``conflict`` on the copy circuit: ``L1H2`` is the context head."""
    return [GroundTruthCase(
        head_type="conflict", scorer="conflict", model="copy-circuit", source="hand-set",
        build=build, known=frozenset({Head(*INDUCTION_HEAD)}),
        description=("tiny Llama whose unembedding reads only the hand-set induction head "
                     "L1H2, which copies the context answer; ranked by context_score = "
                     "-score (the example's signed grid ranks a context head last)"),
        prompts=items, column="context_score",
        # no documented threshold: a head is called a context head when it moves the
        # logit difference by at least 1 logit toward the context answer (L1H2: 153)
        threshold=1.0, minimum={"auroc": 1.0, "recall": 1.0, "precision": 1.0})]
