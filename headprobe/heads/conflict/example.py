"""Example with an exactly known answer (hand-set): one head is the only path to the answer.

On the hand-set copy circuit (:func:`headprobe.handset.copy_circuit`) the unembedding reads
only what the induction head ``L1H2`` writes, so the context answer (the letter after the
earlier copy of the prompt's last letter) reaches the logits through ``L1H2`` alone. Each
item's memory answer is a letter the context does not support. The ``conflict`` scorer's
DLA score (memory minus context, Jin et al. 2024) of ``L1H2`` is therefore the whole logit
difference ``logit[memory] - logit[context]``, read here from a plain forward pass of the
model, and every other head's score is 0 (to 1e-5).
"""

from __future__ import annotations

import numpy as np
import torch

from headprobe.examples import Example
from headprobe.handset import INDUCTION_HEAD, copy_circuit
from headprobe.tasks.base import Task, TaskItem

# (context, last letter, context answer, memory answer, no-conflict context)
ITEMS = (("abcdefgh", "a", "b", "h", "ahcdefgb"),
         ("hgfedcba", "e", "d", "a", "hgfeacbd"),
         ("cafebhdg", "b", "h", "c", "cafebcdg"))


def example() -> Example:
    """The ``conflict`` scorer (DLA) on 3 items: ``L1H2`` carries the whole logit difference."""
    model, spec = copy_circuit()
    items, diffs = [], []
    for context, last, context_answer, memory_answer, agreeing in ITEMS:
        prompt = f"NOTE {context}. Q? {last}"
        items.append(TaskItem(prompt=prompt, answer=context_answer, distractor=memory_answer,
                              corrupt_prompt=f"NOTE {agreeing}. Q? {last}",
                              meta={"memory_answer": memory_answer,
                                    "context_answer": context_answer}))
        with torch.no_grad():
            logits = model(model.to_tokens(prompt))[0, -1].double()
        memory, answer = (int(model.tokenizer.convert_tokens_to_ids(c))
                          for c in (memory_answer, context_answer))
        diffs.append(float(logits[memory] - logits[answer]))
    grid = np.zeros((spec.n_layers, spec.n_heads))
    grid[INDUCTION_HEAD] = float(np.mean(diffs))
    return Example(
        head_type="conflict", scorer="conflict", model=model, kind="hand-set",
        description="tiny Llama whose unembedding reads only the hand-set induction head L1H2, "
                    "on 3 items whose context answer is copied from the prompt",
        prompts=Task("knowledge_conflict", items, meta={"target": "context"}),
        params={"score_by": "dla", "path": False}, grid=grid, atol=1e-5)
