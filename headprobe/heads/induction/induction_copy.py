"""``induction_copy``: continue a repeated list of random words (answer needs induction).

Each prompt is a line ``List:`` + ``n_words`` distinct common words in random order, followed
by a second ``List:`` line that repeats the list; the prompt stops after ``k`` words of the
second copy (``1 <= k < n_words``) and the answer is the next word, ``" " + word``.
Because the order is random, the next word can only be found by looking back at the first
copy: find the previous occurrence of the current word and copy the word after it, which is
what induction heads do (Olsson et al. 2022, "In-context Learning and Induction Heads").

Example (``n_words=5``)::

    prompt: "List: river chair apple stone light\nList: river chair apple"   answer: " stone"

The ``List:`` lines matter for a small instruct model: without them SmolLM2-135M often
predicts punctuation after a bare run of words (about 40% accuracy on 8-word lists, against
about 100% with them).

Judged by ``next_token``. Every word is a single token (with its leading space) in the
SmolLM2 tokenizer; other tokenizers may split some words, which
:func:`headprobe.tasks.base.answer_token_ids` reports.
"""

from __future__ import annotations

import random

from headprobe.errors import TaskError
from headprobe.tasks.base import Task, TaskItem

_WORD_TEXT = """apple river chair house green table water paper stone light music glass bread horse
    cloud field money night phone plant queen radio sheep smile snake sound spoon storm sugar
    teeth tiger tower train watch whale wheel white woman world yellow dog cat bird fish tree
    book door road star moon king ship fire wind rain snow hill lake park bank shop farm milk
    salt rice corn egg leaf rose gold iron coat shoe hat bed box cup pen car bus boat key ring
    bell drum lamp map rock sand wall window garden doctor teacher friend family summer winter
    morning evening island forest bridge castle market camera pencil rabbit monkey lion bear
    wolf duck"""

WORDS: tuple[str, ...] = tuple(_WORD_TEXT.split())


def make_task(n: int = 64, seed: int = 0, n_words: int = 8,
              words: tuple[str, ...] | list[str] | None = None) -> Task:
    """Build ``n`` induction-copy prompts.

    Args:
        n: number of prompts.
        seed: seed of a local ``random.Random`` (word choice, order and cut point).
        n_words: words per list (at least 2; at most the vocabulary size).
        words: the vocabulary (default :data:`WORDS`, distinct words without spaces).
    """
    vocab = list(WORDS if words is None else words)
    if n < 1:
        raise TaskError(f"induction_copy: n must be >= 1, got {n}")
    if len(set(vocab)) != len(vocab) or any(not w or " " in w for w in vocab):
        raise TaskError("induction_copy: words must be distinct, non-empty and space-free")
    if not 2 <= n_words <= len(vocab):
        raise TaskError(
            f"induction_copy: n_words must lie in 2..{len(vocab)}, got {n_words}")
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        chosen = rng.sample(vocab, n_words)
        cut = rng.randrange(1, n_words)
        prompt = "List: " + " ".join(chosen) + "\nList: " + " ".join(chosen[:cut])
        items.append(TaskItem(prompt=prompt, answer=" " + chosen[cut],
                              meta={"words": chosen, "cut": cut}))
    return Task(
        name="induction_copy",
        items=items,
        judge="next_token",
        max_new_tokens=1,
        description=f"continue a repeated list of {n_words} random words (induction)",
        meta={"n": n, "seed": seed, "n_words": n_words, "vocabulary": len(vocab)},
    )
