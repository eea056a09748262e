"""Prompts to padded batches: plain text, chat conversations and text with images.

The prompt items (``str``, :class:`Text`, :class:`Chat`, :class:`ImagePrompt`, token ids) and
their encoding into :class:`Encoded` prompts (ids, named spans, extra model inputs) live in
:mod:`headprobe.prompt_items` and are re-exported here, so ``from headprobe.inputs import
Chat, encode_prompts`` keeps working; image prompts are encoded by :mod:`headprobe.images`.

:func:`iter_batches` pads encoded prompts into :class:`Batch` objects with an attention mask,
the position ids that make a padded prompt compute exactly what it computes alone, the spans of
every prompt and the batched extra inputs. The streaming scorers, the judges, the ablation
experiments, the patching engine and DLA batch :class:`Encoded` prompts, so image prompts reach
them with their pixels. :func:`tokenize_prompts` is the text-only shortcut (one 1-D id tensor
per prompt) kept for the routes that run from token embeddings (the fast scans, attribution
and the decode step, which refuse image prompts with a clear error); :func:`fingerprint` hashes
a tokenized prompt set for result metadata.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from headprobe.encoding import encode, encode_prompts, render_chat, tokenize_prompts
from headprobe.errors import PromptFormatError
from headprobe.prompt_items import (
    IMAGE_PLACEHOLDER,
    Chat,
    Encoded,
    ImagePrompt,
    Mark,
    Prompt,
    PromptItem,
    Prompts,
    Text,
    chars_to_span,
    mark_chars,
    token_offsets,
    tokenizer_of,
)
from headprobe.types import Span

__all__ = [
    "IMAGE_PLACEHOLDER",
    "Batch",
    "Chat",
    "Encoded",
    "ImagePrompt",
    "Mark",
    "PaddingSide",
    "Prompt",
    "PromptFormatError",
    "PromptItem",
    "Prompts",
    "Text",
    "chars_to_span",
    "encode",
    "encode_prompts",
    "fingerprint",
    "iter_batches",
    "mark_chars",
    "render_chat",
    "token_offsets",
    "tokenize_prompts",
    "tokenizer_of",
]

PaddingSide = Literal["left", "right"]

# Extra inputs laid out per token column rather than batched along dim 0: multimodal rotary
# positions ``position_ids`` [S, T] of one prompt (S = 3 streams for Qwen2-VL's mRoPE), which
# a batch pads to [S, B, T_max] and passes instead of its 1-D ``position_ids``.
POSITION_EXTRAS = frozenset({"position_ids"})


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
        extra: extra model inputs (e.g. ``pixel_values`` [N_images, 3, H, W]) of the prompts
            of the batch, concatenated along dim 0 in row order; passed to the forward.
            Keys in :data:`POSITION_EXTRAS` (``position_ids`` [S, B, T]: multimodal rotary
            positions) are padded per column instead and replace the 1-D ``position_ids``
            in :meth:`forward_kwargs`.
        spans: one ``{name: Span}`` per row, in absolute positions within the prompt; the
            column of position ``p`` of row ``b`` is ``start[b] + p`` (:meth:`column`).
    """

    tokens: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    lengths: torch.Tensor
    start: torch.Tensor
    indices: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    spans: list[dict[str, Span]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.spans:
            self.spans = [{} for _ in range(int(self.tokens.shape[0]))]
        if len(self.spans) != self.tokens.shape[0]:
            raise ValueError(f"a batch of {self.tokens.shape[0]} rows got {len(self.spans)} "
                             "span dicts")

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

    def column(self, row: int, position: int) -> int:
        """The column of absolute position ``position`` of prompt ``row``: start + position."""
        if not 0 <= position < int(self.lengths[row]):
            raise IndexError(f"position {position} lies outside prompt {row} "
                             f"(length {int(self.lengths[row])})")
        return int(self.start[row]) + position

    def span(self, row: int, name: str) -> Span:
        """The span ``name`` of prompt ``row`` (absolute positions); KeyError naming the known
        spans when the prompt has none of that name."""
        spans = self.spans[row]
        if name not in spans:
            raise KeyError(f"prompt {row} has no span {name!r}; its spans: "
                           f"{', '.join(spans) or 'none'}")
        return spans[name]

    def span_columns(self, row: int, name: str) -> range:
        """The columns of span ``name`` of prompt ``row`` in the padded batch."""
        return self.span(row, name).shifted(int(self.start[row])).positions()

    def span_mask(self, name: str, *, required: bool = True) -> torch.Tensor:
        """[B, T] bool: True on the columns of span ``name`` in each row.

        ``required``: every row must have the span (KeyError otherwise); when False, rows
        without it are all False.
        """
        mask = torch.zeros(self.tokens.shape, dtype=torch.bool, device=self.tokens.device)
        for row, spans in enumerate(self.spans):
            if name not in spans and not required:
                continue
            columns = self.span_columns(row, name)
            mask[row, columns.start:columns.stop] = True
        return mask

    def to(self, device: torch.device | str) -> Batch:
        """The batch on ``device`` (tensors and extra inputs; spans are plain positions)."""
        return Batch(
            tokens=self.tokens.to(device),
            attention_mask=self.attention_mask.to(device),
            position_ids=self.position_ids.to(device),
            lengths=self.lengths.to(device),
            start=self.start.to(device),
            indices=self.indices.to(device),
            extra={key: value.to(device) for key, value in self.extra.items()},
            spans=[dict(spans) for spans in self.spans],
        )

    def forward_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``bridge(tokens, **kwargs)``: mask, positions, extra inputs."""
        return {"attention_mask": self.attention_mask.long(), "position_ids": self.position_ids,
                **self.extra}


# ---------------------------------------------------------------------------------------------
# Batching


def iter_batches(
    token_lists: Sequence[torch.Tensor | Encoded],
    batch_size: int,
    *,
    pad_token_id: int = 0,
    padding_side: PaddingSide = "right",
    device: torch.device | str = "cpu",
) -> Iterator[Batch]:
    """Pad consecutive prompts into batches of at most ``batch_size``.

    ``token_lists`` holds 1-D id tensors or :class:`Encoded` prompts (whose spans and extra
    inputs the batches carry; extra inputs are concatenated along dim 0 in row order, except
    :data:`POSITION_EXTRAS`, padded per column into [S, B, T_max]).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    for first in range(0, len(token_lists), batch_size):
        chunk = [item if isinstance(item, Encoded) else Encoded(item)
                 for item in token_lists[first:first + batch_size]]
        lengths = torch.tensor([len(item) for item in chunk])
        width = int(lengths.max())
        tokens = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.bool)
        start = torch.zeros(len(chunk), dtype=torch.long)
        for row, item in enumerate(chunk):
            offset = width - len(item) if padding_side == "left" else 0
            tokens[row, offset:offset + len(item)] = item.ids
            mask[row, offset:offset + len(item)] = True
            start[row] = offset
        positions = (mask.long().cumsum(-1) - 1).clamp_min(0)
        keys = list(dict.fromkeys(key for item in chunk for key in item.extra))
        extra = {key: (_batch_positions(chunk, key, start, positions) if key in POSITION_EXTRAS
                       else torch.cat([item.extra[key] for item in chunk if key in item.extra]))
                 for key in keys}
        yield Batch(
            tokens=tokens,
            attention_mask=mask,
            position_ids=positions,
            lengths=lengths,
            start=start,
            indices=torch.arange(first, first + len(chunk)),
            extra=extra,
            spans=[dict(item.spans) for item in chunk],
        ).to(device)


def _batch_positions(chunk: Sequence[Encoded], key: str, start: torch.Tensor,
                     positions: torch.Tensor) -> torch.Tensor:
    """[S, B, T_max] per-column positions of a padded batch: each prompt's own [S, T] at its
    columns (from ``start``); a prompt without them (a text prompt beside image prompts) gets
    its 1-D positions in every stream (what the model would compute for text); pads 0."""
    streams = next(int(item.extra[key].shape[0]) for item in chunk if key in item.extra)
    out = positions[None].repeat(streams, 1, 1)  # [S, B, T_max], 1-D positions, pads 0
    for row, item in enumerate(chunk):
        if key not in item.extra:
            continue
        value = item.extra[key]
        if value.ndim != 2 or value.shape != (streams, len(item)):
            raise PromptFormatError(
                f"extra input {key!r} of a prompt of {len(item)} tokens has shape "
                f"{tuple(value.shape)}; expected ({streams}, {len(item)})")
        offset = int(start[row])
        out[:, row, offset:offset + len(item)] = value.to(out.dtype)
    return out


def fingerprint(token_lists: Sequence[torch.Tensor | Encoded]) -> str:
    """sha256 (first 16 hex digits) of a tokenized prompt set, for result metadata.

    Extra inputs (pixels) of :class:`Encoded` prompts are included; a text-only set hashes as
    its token ids alone, as before.
    """
    digest = hashlib.sha256()
    for item in token_lists:
        ids = item.ids if isinstance(item, Encoded) else item
        digest.update(ids.to(torch.int64).numpy().tobytes())
        if isinstance(item, Encoded):
            for key in sorted(item.extra):
                digest.update(key.encode())
                digest.update(item.extra[key].detach().float().cpu().numpy().tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:16]
