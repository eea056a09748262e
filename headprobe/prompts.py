"""Prompt sets that scorers build themselves (no download needed)."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import torch

from headprobe.arch import ModelSpec
from headprobe.errors import TaskError


def usable_token_ids(model: Any, spec: ModelSpec) -> torch.Tensor:
    """Token ids that are not special tokens (BOS, EOS, pad, chat markers...)."""
    tokenizer = model.tokenizer
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    vocab_size = min(spec.d_vocab, len(tokenizer)) if tokenizer is not None else spec.d_vocab
    keep = torch.ones(vocab_size, dtype=torch.bool)
    for token_id in special:
        if 0 <= token_id < vocab_size:
            keep[token_id] = False
    return torch.nonzero(keep).squeeze(1)


def repeated_random_tokens(
    model: Any,
    spec: ModelSpec,
    n: int,
    *,
    seq_len: int = 50,
    repeats: int = 2,
    seed: int = 0,
    prepend_bos: bool = True,
) -> list[torch.Tensor]:
    """``n`` prompts of ``seq_len`` random tokens repeated ``repeats`` times, BOS first.

    Tokens are drawn without replacement within a prompt (when the vocabulary allows), so the
    only repeats are the deliberate ones and the induction target of each position is unique.
    The draw uses its own ``torch.Generator``: the global RNG is left untouched.

    Returns:
        ``n`` 1-D long tensors of ``seq_len * repeats`` tokens (+1 with BOS).

    Raises:
        TaskError: ``seq_len`` or ``repeats`` below 2 (nothing would repeat); a
            ``ValueError`` too.
    """
    if seq_len < 2 or repeats < 2:
        raise TaskError(
            f"repeated random tokens need seq_len >= 2 and repeats >= 2, got seq_len={seq_len}, "
            f"repeats={repeats}: pass e.g. seq_len=50 (--param seq_len=50)")
    pool = usable_token_ids(model, spec)
    generator = torch.Generator().manual_seed(seed)
    prompts = []
    for _ in range(n):
        if seq_len <= len(pool):
            chunk = pool[torch.randperm(len(pool), generator=generator)[:seq_len]]
        else:
            chunk = pool[torch.randint(len(pool), (seq_len,), generator=generator)]
        body = chunk.repeat(repeats)
        if prepend_bos and spec.bos_token_id is not None:
            body = torch.cat([torch.tensor([spec.bos_token_id]), body])
        prompts.append(body)
    return prompts


def load_resource(name: str) -> Any:
    """A JSON file shipped in ``headprobe/resources``."""
    text = resources.files("headprobe.resources").joinpath(name).read_text(encoding="utf-8")
    return json.loads(text)
