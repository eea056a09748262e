"""The task protocol shared by ablation experiments, patching and DLA.

A :class:`Task` is a list of :class:`TaskItem` (a prompt, its correct answer, optionally an
incorrect answer and a corrupted prompt for patching) plus how to judge a model's output:

- ``next_token``: the greedy next token equals the answer's first token;
- ``contains``: the greedy continuation of ``max_new_tokens`` tokens contains the answer;
- ``function``: ``judge_fn(continuation, item) -> bool`` decides.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from headprobe.errors import TaskError

JudgeKind = Literal["next_token", "contains", "function"]


@dataclass(frozen=True)
class TaskItem:
    """One prompt of a task.

    Attributes:
        prompt: the text given to the model (BOS is added by tokenization).
        answer: the correct continuation, with its leading space (e.g. ``" Paris"``).
        distractor: an incorrect continuation for logit differences (``" Rome"``), or None.
        corrupt_prompt: a prompt of the same token length whose answer differs (patching).
        meta: free-form labels (e.g. the country, the template index).
    """

    prompt: str
    answer: str
    distractor: str | None = None
    corrupt_prompt: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """A named prompt set with its judging rule.

    Attributes:
        name: registry name.
        items: the prompts.
        judge: ``next_token``, ``contains`` or ``function``.
        judge_fn: for ``function``: ``judge_fn(continuation_text, item) -> bool``.
        max_new_tokens: greedy continuation length for ``contains`` / ``function``.
        description: one line for reports.
        meta: free-form (data source, template count, seed...).
    """

    name: str
    items: Sequence[TaskItem]
    judge: JudgeKind = "next_token"
    judge_fn: Callable[[str, TaskItem], bool] | None = None
    max_new_tokens: int = 8
    description: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.items:
            raise TaskError(f"task {self.name!r} has no prompts")
        if self.judge not in ("next_token", "contains", "function"):
            raise TaskError(f"task {self.name!r}: unknown judge {self.judge!r}")
        if self.judge == "function" and self.judge_fn is None:
            raise TaskError(f"task {self.name!r}: judge 'function' needs judge_fn")

    def __len__(self) -> int:
        return len(self.items)

    @property
    def prompts(self) -> list[str]:
        return [item.prompt for item in self.items]

    def subset(self, n: int) -> Task:
        """The first ``n`` items (all when ``n`` is larger)."""
        return Task(self.name, list(self.items[:n]), self.judge, self.judge_fn,
                    self.max_new_tokens, self.description, dict(self.meta))


def single_token_id(model: Any, text: str, *, what: str = "answer") -> int:
    """The id of ``text`` when it is exactly one token; :class:`TaskError` otherwise."""
    ids = model.to_tokens(text, prepend_bos=False)[0].tolist()
    if len(ids) != 1:
        pieces = [model.tokenizer.decode([i]) for i in ids]
        raise TaskError(
            f"{what} {text!r} is {len(ids)} tokens {pieces}, but a single token is required"
        )
    return int(ids[0])


def answer_token_ids(model: Any, task: Task) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[N] correct-answer ids and [N] distractor ids (None when the task has no distractors).

    Raises :class:`TaskError` naming the item when an answer is not a single token.
    """
    answers, distractors = [], []
    for index, item in enumerate(task.items):
        answers.append(single_token_id(model, item.answer, what=f"item {index} answer"))
        if item.distractor is not None:
            distractors.append(single_token_id(model, item.distractor,
                                               what=f"item {index} distractor"))
    if distractors and len(distractors) != len(answers):
        raise TaskError(f"task {task.name!r}: some items have a distractor and some do not")
    return torch.tensor(answers), (torch.tensor(distractors) if distractors else None)
