"""The one answer tokenizer: text answers to token ids, with errors that name the item.

An answer is tokenized as a continuation (no BOS), so ``" Paris"`` with its leading space
is what the model predicts after ``"... capital of France is"``. Every module that compares
logits to an answer (patching, scans, DLA, attribution, judging) goes through here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from headprobe.errors import TaskError


def answer_ids(model: Any, text: str) -> list[int]:
    """Token ids of ``text`` as a continuation (no BOS)."""
    return [int(i) for i in model.to_tokens(text, prepend_bos=False)[0].tolist()]


def single_token_id(model: Any, text: str, *, what: str = "answer") -> int:
    """The id of ``text`` when it is exactly one token; :class:`TaskError` otherwise."""
    ids = answer_ids(model, text)
    if len(ids) != 1:
        pieces = [model.tokenizer.decode([i]) for i in ids]
        raise TaskError(
            f"{what} {text!r} is {len(ids)} tokens {pieces}, but a single token is required"
        )
    return ids[0]


def first_token_id(model: Any, text: str, *, what: str = "answer") -> int:
    """The first token of ``text``; :class:`TaskError` when it has none."""
    ids = answer_ids(model, text)
    if not ids:
        raise TaskError(f"{what} {text!r} has no tokens")
    return ids[0]


def token_ids(model: Any, values: Sequence[int | str] | torch.Tensor, *, what: str = "answer",
              single: bool = True) -> torch.Tensor:
    """[N] ids from ids or texts (``single``: each text must be one token, else its first).

    Texts are checked one by one; the error names the index (``item 3 answer ' Paris'``).
    """
    if isinstance(values, torch.Tensor):
        return values.long().reshape(-1).cpu()
    convert = single_token_id if single else first_token_id
    return torch.tensor([
        convert(model, value, what=f"item {index} {what}") if isinstance(value, str)
        else int(value) for index, value in enumerate(values)], dtype=torch.long)
