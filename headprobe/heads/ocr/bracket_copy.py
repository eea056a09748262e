"""``bracket_copy``: copy the bracketed string out of a line of filler (text only).

The text-only half of the OCR model's training data (:mod:`headprobe.heads.ocr.ocr_reader`):
random lower-case filler holding a string of the OCR alphabet in brackets, then
``\\nRead the text:``; the answer is the string. The string is marked as the ``needle`` span,
so the ``retrieval`` scorer (Wu et al. 2024, "Retrieval Head Mechanistically Explains
Long-Context Factuality") scores copy-paste heads on the very model whose OCR heads the ``ocr``
scorer finds (Baek et al. 2025 compare the two kinds of heads on the same model).

Judge: ``function``, exact match of the stripped continuation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from headprobe.errors import TaskError
from headprobe.heads.ocr.ocr_read import exact_reading
from headprobe.heads.ocr.ocr_reader import text_prompt
from headprobe.heads.ocr.text_images import random_string
from headprobe.inputs import Text
from headprobe.tasks.base import Task, TaskItem


def make_task(n: int = 32, seed: int = 0, lengths: tuple[int, int] = (3, 5),
              max_new_tokens: int = 8, **_: Any) -> Task:
    """``n`` bracket-copy prompts from ``seed`` (strings of ``lengths`` characters).

    Raises:
        TaskError: ``n`` below 1.
    """
    if n < 1:
        raise TaskError(f"bracket_copy needs n >= 1, got {n}")
    rng = np.random.default_rng(seed)
    items = []
    for _index in range(n):
        needle = random_string(rng, tuple(lengths))
        text, chars = text_prompt(needle, rng)
        items.append(TaskItem(prompt=Text(text, spans={"needle": chars}), answer=needle,
                              meta={"needle": needle}))
    return Task(name="bracket_copy", items=items, judge="function", judge_fn=exact_reading,
                max_new_tokens=max_new_tokens,
                description=f"copy {n} bracketed strings out of filler (seed {seed})",
                meta={"seed": seed})
