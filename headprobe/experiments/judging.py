"""Judging a task: is the model's output right, prompt by prompt?

Judges (see :mod:`headprobe.tasks.base`):

- ``next_token``: greedy next token at the prompt's last position == the answer's first
  token (:func:`headprobe.answers.first_token_id`). Prompts are right-padded into batches
  with an attention mask and position ids (:mod:`headprobe.inputs`), so a padded prompt
  computes what it computes alone.
- ``contains`` / ``function``: a greedy continuation of ``task.max_new_tokens`` tokens
  (:func:`greedy_continuations`), then ``answer.strip() in continuation`` or
  ``judge_fn(continuation, item)``.

The model is judged as it is: hooks attached around the call (an ablation) act on every
forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from headprobe.answers import first_token_id
from headprobe.arch import ModelSpec
from headprobe.errors import TaskError
from headprobe.inputs import Encoded, encode_prompts, iter_batches
from headprobe.metrics import final_logits
from headprobe.models import describe_model
from headprobe.runtime.decode import generate
from headprobe.runtime.forward import forward_batch
from headprobe.runtime.hooks import model_device
from headprobe.tasks.base import Task


def check_task(task: Task) -> None:
    """:class:`TaskError` unless ``task`` is a :class:`Task` with at least one prompt."""
    if not isinstance(task, Task):
        raise TaskError(f"expected a headprobe Task, got {type(task).__name__}")
    if len(task.items) == 0:
        raise TaskError(f"task {task.name!r} has no prompts")


def judge_task(
    model: Any,
    task: Task,
    *,
    batch_size: int = 8,
    progress: bool = False,
    desc: str = "judging",
) -> np.ndarray:
    """Judge every prompt of ``task`` with the model as it is (hooks attached stay attached).

    Prompts may be of any kind; the pixel values of image prompts reach the forward pass (the
    generation judges, ``contains`` / ``function``, generate from them on LLaVA-style models
    and raise :class:`~headprobe.errors.ImageGenerationError` on the others).

    Returns:
        [N] bool array, True where the model's output is correct.
    """
    check_task(task)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    spec = describe_model(model)
    token_lists = encode_prompts(model, task.prompts, spec)  # any prompt kind
    if task.judge == "next_token":
        return _judge_next_token(model, spec, task, token_lists, batch_size, progress, desc)
    texts = greedy_continuations(model, token_lists, task.max_new_tokens, spec=spec,
                                 batch_size=batch_size, progress=progress, desc=desc)
    if task.judge == "contains":
        return np.array([item.answer.strip() in text
                         for item, text in zip(task.items, texts, strict=True)], dtype=bool)
    if task.judge_fn is None:
        raise TaskError(f"task {task.name!r} uses the 'function' judge but has no judge_fn")
    return np.array([bool(task.judge_fn(text, item))
                     for item, text in zip(task.items, texts, strict=True)], dtype=bool)


def answer_first_tokens(model: Any, task: Task) -> torch.Tensor:
    """[N] the first token id of each item's answer (as a continuation, no BOS)."""
    return torch.tensor([
        first_token_id(model, item.answer, what=f"task {task.name!r}: item {index} answer")
        for index, item in enumerate(task.items)], dtype=torch.long)


def _judge_next_token(model: Any, spec: ModelSpec, task: Task,
                      token_lists: list[Encoded], batch_size: int, progress: bool,
                      desc: str) -> np.ndarray:
    answers = answer_first_tokens(model, task)
    pad = spec.pad_token_id if spec.pad_token_id is not None else 0
    device = model_device(model)
    correct = np.zeros(len(token_lists), dtype=bool)
    batches = iter_batches(token_lists, batch_size, pad_token_id=pad, padding_side="right",
                           device=device)
    total = -(-len(token_lists) // batch_size)
    for batch in tqdm(batches, total=total, desc=desc, disable=not progress, leave=False):
        with torch.inference_mode():
            logits = forward_batch(model, batch)
        predicted = final_logits(logits, batch.last).argmax(-1).cpu()
        rows = batch.indices.cpu()
        correct[rows.numpy()] = (predicted == answers[rows]).numpy()
    return correct


def greedy_continuations(
    model: Any,
    token_lists: Sequence[torch.Tensor | Encoded],
    max_new_tokens: int,
    *,
    spec: ModelSpec | None = None,
    batch_size: int = 8,
    progress: bool = False,
    desc: str = "generating",
) -> list[str]:
    """Greedy continuations (decoded text of the new tokens only), one per prompt.

    A continuation ends at the tokenizer's EOS (a chat model's end of turn: what follows it
    is not part of the reply) or after ``max_new_tokens`` tokens.

    Runs the KV-cached decode step (:func:`headprobe.runtime.decode.generate`): the prompt is
    prefilled once and each new token costs one single-position forward. Hooks attached
    around the call (an intervention) act on the prefill and on every step, and address
    absolute positions, so the continuation equals the uncached recomputation
    (``generate(..., use_cache=False)``; tested for every intervention method).

    Args:
        token_lists: one 1-D tensor of token ids (or a text-only
            :class:`~headprobe.inputs.Encoded`) per prompt (BOS included if wanted).

    Raises:
        ImageGenerationError: an image prompt the decode step cannot run (see
            :func:`headprobe.runtime.decode.generate`).
        max_new_tokens: tokens generated per prompt (>= 1).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    eos = getattr(getattr(model, "tokenizer", None), "eos_token_id", None)
    generation = generate(model, list(token_lists), max_new_tokens=max_new_tokens,
                          batch_size=batch_size, padding_side="right", progress=progress,
                          desc=desc, stop_at_eos=eos is not None, eos_token_id=eos)
    return generation.texts
