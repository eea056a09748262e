"""Prompts to padded token batches.

A prompt set is a sequence of strings or of token-id sequences. :func:`tokenize_prompts`
turns it into one 1-D tensor per prompt (checking emptiness and context length);
:func:`iter_batches` pads them into :class:`Batch` objects with an attention mask and
the position ids that make a padded prompt compute exactly what it computes alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from headprobe.arch import ModelSpec
from headprobe.errors import ContextLengthError, EmptyPromptsError

PaddingSide = Literal["left", "right"]
Prompts = Sequence[str] | Sequence[Sequence[int]] | torch.Tensor


@dataclass
class Batch:
    """One padded batch.

    Attributes:
        tokens: [B, T] token ids (padding filled with the pad id).
        attention_mask: [B, T] bool, True on real tokens.
        position_ids: [B, T] position of each real token within its own prompt (0 on pads).
        lengths: [B] number of real tokens per prompt.
        start: [B] index of each prompt's first real token (0 with right padding).
        indices: [B] index of each prompt in the whole prompt set.
    """

    tokens: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    lengths: torch.Tensor
    start: torch.Tensor
    indices: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def last(self) -> torch.Tensor:
        """[B] index of each prompt's last real token."""
        return self.start + self.lengths - 1

    def key_query_mask(self) -> torch.Tensor:
        """[B, T_q, T_k] bool: real query, real key, key not after the query (causal)."""
        real = self.attention_mask
        causal = torch.ones(self.seq_len, self.seq_len, dtype=torch.bool,
                            device=real.device).tril()
        return real[:, :, None] & real[:, None, :] & causal

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(getattr(self, f).to(device) for f in
                            ("tokens", "attention_mask", "position_ids", "lengths", "start",
                             "indices")))

    def forward_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``bridge(tokens, **kwargs)``."""
        return {"attention_mask": self.attention_mask.long(), "position_ids": self.position_ids}


def tokenize_prompts(
    model: Any, prompts: Prompts, spec: ModelSpec, *, prepend_bos: bool = True
) -> list[torch.Tensor]:
    """Tokenize a prompt set into 1-D long tensors, one per prompt.

    Strings are tokenized with the model's tokenizer (BOS prepended when ``prepend_bos``);
    token sequences are taken as they are.

    Raises:
        EmptyPromptsError: no prompts, or a prompt that has no tokens.
        ContextLengthError: a prompt longer than the model's context (``spec.n_ctx``).
    """
    if isinstance(prompts, torch.Tensor):
        if prompts.ndim != 2:
            raise EmptyPromptsError(
                f"a token tensor must be [N, T], got shape {tuple(prompts.shape)}")
        token_lists = [row.long() for row in prompts]
    else:
        if isinstance(prompts, str):
            raise TypeError(
                "prompts must be a sequence of prompts, not one string; wrap it: [text]")
        token_lists = []
        for index, prompt in enumerate(prompts):
            if isinstance(prompt, str):
                if not prompt:
                    raise EmptyPromptsError(f"prompt {index} is an empty string")
                ids = model.to_tokens(prompt, prepend_bos=prepend_bos, truncate=False)[0]
            else:
                ids = torch.as_tensor(list(prompt), dtype=torch.long)
            token_lists.append(ids.cpu())
    if not token_lists:
        raise EmptyPromptsError("the prompt set is empty: give at least one prompt")
    for index, ids in enumerate(token_lists):
        if ids.numel() == 0:
            raise EmptyPromptsError(f"prompt {index} has no tokens")
        if ids.numel() > spec.n_ctx:
            raise ContextLengthError(
                f"prompt {index} has {ids.numel()} tokens, more than {spec.name}'s context of "
                f"{spec.n_ctx} tokens; shorten it or split it"
            )
    return token_lists


def iter_batches(
    token_lists: Sequence[torch.Tensor],
    batch_size: int,
    *,
    pad_token_id: int = 0,
    padding_side: PaddingSide = "right",
    device: torch.device | str = "cpu",
) -> Iterator[Batch]:
    """Pad consecutive prompts into batches of at most ``batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    for first in range(0, len(token_lists), batch_size):
        chunk = token_lists[first:first + batch_size]
        lengths = torch.tensor([len(ids) for ids in chunk])
        width = int(lengths.max())
        tokens = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.bool)
        start = torch.zeros(len(chunk), dtype=torch.long)
        for row, ids in enumerate(chunk):
            offset = width - len(ids) if padding_side == "left" else 0
            tokens[row, offset:offset + len(ids)] = ids
            mask[row, offset:offset + len(ids)] = True
            start[row] = offset
        positions = (mask.long().cumsum(-1) - 1).clamp_min(0)
        yield Batch(
            tokens=tokens,
            attention_mask=mask,
            position_ids=positions,
            lengths=lengths,
            start=start,
            indices=torch.arange(first, first + len(chunk)),
        ).to(device)


def fingerprint(token_lists: Sequence[torch.Tensor]) -> str:
    """sha256 (first 16 hex digits) of a tokenized prompt set, for result metadata."""
    digest = hashlib.sha256()
    for ids in token_lists:
        digest.update(ids.to(torch.int64).numpy().tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:16]
