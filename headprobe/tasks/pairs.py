"""A task's clean / corrupt prompt pairs and answers, tokenized once for the causal engines.

The fast scans (:mod:`headprobe.fastscan`), attribution patching (:mod:`headprobe.attribution`)
and the patching engine (:meth:`headprobe.patching.PatchingEngine.from_task`) all start from
the same thing: the task's prompts and corrupt prompts as token ids, each pair of equal token
length (:func:`check_pairs`, the one place that checks it), and the single-token answers and
distractors (tokenized through :mod:`headprobe.answers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from headprobe.answers import single_token_id
from headprobe.errors import PromptPairError, TaskError
from headprobe.inputs import Encoded, tokenize_prompts
from headprobe.models import describe_model
from headprobe.tasks.base import Task, TaskItem


@dataclass
class ScanData:
    """A tokenized task for scans and patching.

    Attributes:
        clean: N 1-D token tensors (the task's prompts, BOS first).
        corrupt: N 1-D token tensors of the same lengths, or None (an item has none).
        answers: [N] answer token ids.
        distractors: [N] distractor token ids, or None when ``need_distractor=False`` and the
            items have none.
        name: task name for metadata.
        prompts: the N clean prompt texts (for error messages).
    """

    clean: list[torch.Tensor]
    corrupt: list[torch.Tensor] | None
    answers: torch.Tensor
    distractors: torch.Tensor
    name: str
    prompts: list[str] | None = None

    def __len__(self) -> int:
        return len(self.clean)

    def subset(self, rows: Sequence[int]) -> ScanData:
        """The items at ``rows`` (in that order), e.g. one shard of a sharded scan."""
        rows = [int(row) for row in rows]
        if any(not 0 <= row < len(self.clean) for row in rows):
            raise IndexError(f"rows must lie in 0..{len(self.clean) - 1}, got {rows}")
        index = torch.as_tensor(rows, dtype=torch.long)
        return ScanData(
            [self.clean[row] for row in rows],
            None if self.corrupt is None else [self.corrupt[row] for row in rows],
            self.answers[index], self.distractors[index] if self.distractors is not None
            else self.distractors, self.name,
            None if self.prompts is None else [self.prompts[row] for row in rows])


def check_pairs(clean: Sequence[torch.Tensor | Encoded], corrupt: Sequence[torch.Tensor | Encoded],
                prompts: Sequence[str] | None = None) -> None:
    """Raise :class:`PromptPairError` unless each clean/corrupt pair has equal token length.

    Args:
        clean, corrupt: N prompts each, 1-D token tensors [T_i] or :class:`Encoded`.
        prompts: the clean texts, quoted in the error when given.
    """
    if len(clean) != len(corrupt):
        raise PromptPairError(
            f"{len(clean)} clean prompts but {len(corrupt)} corrupt prompts; give one corrupt "
            "prompt per clean prompt")
    for index, (a, b) in enumerate(zip(clean, corrupt, strict=True)):
        if len(a) != len(b):
            shown = f" ({prompts[index]!r})" if prompts is not None else ""
            raise PromptPairError(
                f"prompt pair {index}{shown}: clean has {len(a)} tokens, corrupt has "
                f"{len(b)}; patching needs pairs of equal token length (change the corrupt "
                "prompt so that it tokenizes to the same length)")


def task_items(task: Task | Sequence[TaskItem]) -> tuple[list[TaskItem], str]:
    """``(items, name)`` of a task or a plain list of items; :class:`TaskError` when empty or
    when an entry is not a :class:`TaskItem`."""
    if isinstance(task, Task):
        items, name = list(task.items), task.name
    elif isinstance(task, str | bytes) or not isinstance(task, Sequence):
        raise TaskError("need a Task or a list of TaskItem (prompt, answer, distractor)")
    else:
        items, name = list(task), "items"
    if not items:
        raise TaskError("the task has no items")
    bad = [i for i, item in enumerate(items) if not isinstance(item, TaskItem)]
    if bad:
        raise TaskError(f"item {bad[0]} is a {type(items[bad[0]]).__name__}, not a TaskItem")
    return items, name


def item_answer_ids(model: Any, items: Sequence[TaskItem], *, need_distractor: bool = True,
                    why: str = "logit differences need one") -> tuple[torch.Tensor,
                                                                      torch.Tensor | None]:
    """[N] answer ids and [N] distractor ids (None when no item has one and none is needed).

    Raises:
        TaskError: naming the item (index and prompt) when an answer or distractor is not a
            single token, or a distractor is missing (when needed or when only some have one).
    """
    missing = [index for index, item in enumerate(items) if item.distractor is None]
    if missing and (need_distractor or len(missing) < len(items)):
        index = missing[0]
        raise TaskError(f"item {index} ({items[index].prompt!r}) has no distractor; {why} "
                        "(an incorrect answer, e.g. another item's answer)")
    answers = torch.tensor([single_token_id(model, item.answer,
                                            what=f"item {i} ({item.prompt!r}) answer")
                            for i, item in enumerate(items)], dtype=torch.long)
    if missing:
        return answers, None
    distractors = torch.tensor([single_token_id(model, str(item.distractor),
                                                what=f"item {i} ({item.prompt!r}) distractor")
                                for i, item in enumerate(items)], dtype=torch.long)
    return answers, distractors


def prepare_scan_data(model: Any, task: Task | Sequence[TaskItem], *, need_corrupt: bool,
                      need_distractor: bool = True) -> ScanData:
    """Tokenize a task's prompts (and corrupt prompts) and its single-token answers.

    Args:
        model: a bridge.
        task: a :class:`Task` or its items.
        need_corrupt: every item must have a ``corrupt_prompt`` (patching).
        need_distractor: every item must have a distractor (logit differences).

    Raises:
        TaskError: an item lacks a distractor (or a corrupt prompt when ``need_corrupt``),
            or an answer is not one token.
        PromptPairError: a clean and corrupt prompt differ in token length.
    """
    spec = describe_model(model)
    items, name = task_items(task)
    if need_corrupt:
        for index, item in enumerate(items):
            if item.corrupt_prompt is None:
                raise TaskError(f"item {index} has no corrupt_prompt; patching needs one for "
                                "every item (or use method='zero' / 'mean')")
    answers, distractors = item_answer_ids(model, items, need_distractor=need_distractor)
    prompts = [item.prompt for item in items]
    clean = tokenize_prompts(model, prompts, spec)
    corrupt = None
    if all(item.corrupt_prompt is not None for item in items):
        corrupt = tokenize_prompts(model, [str(item.corrupt_prompt) for item in items], spec)
        check_pairs(clean, corrupt, prompts)
    return ScanData(clean, corrupt, answers, distractors, name, prompts)  # type: ignore[arg-type]
