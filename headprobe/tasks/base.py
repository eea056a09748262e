"""The task protocol shared by ablation experiments, patching and DLA.

A :class:`Task` is a list of :class:`TaskItem` (a prompt, its correct answer, optionally an
incorrect answer and a corrupted prompt for patching) plus how to judge a model's output.
A prompt is plain text, a :class:`~headprobe.inputs.Text` with named spans, a
:class:`~headprobe.inputs.Chat` (rendered with the model's chat template) or an
:class:`~headprobe.inputs.ImagePrompt` (text with images, through the model's processor);
:func:`headprobe.inputs.encode_prompts` turns them into token ids, spans and extra inputs.
Judges:

- ``next_token``: the greedy next token equals the answer's first token;
- ``contains``: the greedy continuation of ``max_new_tokens`` tokens contains the answer;
- ``function``: ``judge_fn(continuation, item) -> bool`` decides.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from headprobe.answers import single_token_id, token_ids
from headprobe.errors import TaskError
from headprobe.inputs import Prompt

JudgeKind = Literal["next_token", "contains", "function"]


@dataclass(frozen=True)
class TaskItem:
    """One prompt of a task.

    Attributes:
        prompt: what the model is given: a ``str`` (BOS is added by tokenization), a
            :class:`~headprobe.inputs.Text`, :class:`~headprobe.inputs.Chat` or
            :class:`~headprobe.inputs.ImagePrompt`.
        answer: the correct continuation, with its leading space (e.g. ``" Paris"``).
        distractor: an incorrect continuation for logit differences (``" Rome"``), or None.
        corrupt_prompt: a prompt of the same kind and token length whose answer differs
            (patching).
        meta: free-form labels (e.g. the country, the template index).
    """

    prompt: Prompt
    answer: str
    distractor: str | None = None
    corrupt_prompt: Prompt | None = None
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
    def prompts(self) -> list[Prompt]:
        """The items' prompts, in order (give them to :func:`headprobe.inputs.encode_prompts`)."""
        return [item.prompt for item in self.items]

    def subset(self, n: int) -> Task:
        """The first ``n`` items (all when ``n`` is larger)."""
        return Task(self.name, list(self.items[:n]), self.judge, self.judge_fn,
                    self.max_new_tokens, self.description, dict(self.meta))


def answer_token_ids(model: Any, task: Task) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[N] correct-answer ids and [N] distractor ids (None when the task has no distractors).

    Through :func:`headprobe.answers.token_ids`; raises :class:`TaskError` naming the item
    when an answer is not a single token, or when only some items have a distractor.
    """
    answers = token_ids(model, [item.answer for item in task.items], what="answer")
    given = [item.distractor for item in task.items if item.distractor is not None]
    if not given:
        return answers, None
    if len(given) != len(task.items):
        raise TaskError(f"task {task.name!r}: some items have a distractor and some do not")
    return answers, token_ids(model, given, what="distractor")


__all__ = ["JudgeKind", "Task", "TaskItem", "answer_token_ids", "single_token_id"]
