"""Absolute positions of the current forward pass, published for hooks.

A hook sees an activation by *column* ([B, T, ...]); an intervention addresses a token by
its *absolute position* within its prompt (BOS = 0). The two differ under left padding, and
during KV-cached decoding, where a step's activation holds one column (the newest token at
position ``t``) while the keys span every earlier position. headprobe's runners
(:func:`headprobe.runtime.stream.stream_reduce`, :func:`headprobe.runtime.decode.generate`,
...) wrap each forward pass in :func:`forward_positions`, which publishes the positions in a
:class:`contextvars.ContextVar` for the duration of the ``with`` block only (reset on exit,
also on error; nothing lasts). Hooks read them with :func:`query_positions` and
:func:`key_positions`. When nothing was published (a user calling ``model(tokens)``
directly) both fall back to ``0..T-1`` in every row, which is right for unpadded input.

Example (what a runner does around a forward)::

    with forward_positions(batch.position_ids):
        model(batch.tokens, **batch.forward_kwargs())
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ForwardPositions:
    """Positions of one forward pass.

    Attributes:
        query: [B, T_q] absolute position of every query column (the columns of ``hook_z``,
            ``hook_q`` ..., the rows of ``hook_pattern``); padding columns hold any value
            (headprobe's batches put 0 there).
        key: [B, T_k] absolute position of every key column (the last axis of
            ``hook_pattern``), or ``None`` when the keys are the query columns (no KV cache).
        rows: [B] stable identity of each row across the forward passes of one generation
            (the prompt index), or ``None``.
        session: an object identifying one generation (the same for all its steps), or
            ``None`` for an independent forward pass. Interventions that draw at random
            (resample) draw once per row and session, so that every step of a generation,
            cached or recomputed, sees the same draw.
    """

    query: torch.Tensor
    key: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    session: object | None = None


_CURRENT: ContextVar[ForwardPositions | None] = ContextVar("headprobe_positions", default=None)


@contextmanager
def forward_positions(
    query: torch.Tensor,
    *,
    key: torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
    session: object | None = None,
) -> Iterator[ForwardPositions]:
    """Publish the absolute positions of the forward pass(es) run inside the block.

    Args:
        query: [B, T_q] positions of the query columns (``Batch.position_ids`` for a full
            pass; [B, 1] during a decode step).
        key: [B, T_k] positions of the key columns (cache + current), ``None``: ``query``.
        rows, session: see :class:`ForwardPositions`.
    """
    if query.ndim != 2:
        raise ValueError(f"query positions must be [B, T], got shape {tuple(query.shape)}")
    if key is not None and (key.ndim != 2 or key.shape[0] != query.shape[0]):
        raise ValueError(f"key positions must be [B, T_k] with B={query.shape[0]}, got "
                         f"shape {tuple(key.shape)}")
    published = ForwardPositions(query.long(), None if key is None else key.long(), rows,
                                 session)
    token = _CURRENT.set(published)
    try:
        yield published
    finally:
        _CURRENT.reset(token)


def current_positions() -> ForwardPositions | None:
    """What the innermost :func:`forward_positions` block published, or ``None``."""
    return _CURRENT.get()


def _checked(positions: torch.Tensor, batch: int, width: int, what: str) -> torch.Tensor:
    if tuple(positions.shape) != (batch, width):
        raise ValueError(
            f"the published {what} positions have shape {tuple(positions.shape)} but the "
            f"activation has {batch} rows and {width} {what} columns; publish the positions "
            "of exactly the columns this forward pass runs (headprobe.runtime.positions)")
    return positions


def query_positions(batch: int, width: int, device: torch.device | str) -> torch.Tensor:
    """[B, T_q] absolute positions of the current forward's query columns.

    Falls back to ``arange(T_q)`` per row when nothing was published. Raises ``ValueError``
    when published positions do not match the activation's shape.
    """
    published = _CURRENT.get()
    if published is None:
        return torch.arange(width, device=device).expand(batch, width)
    return _checked(published.query, batch, width, "query").to(device)


def key_positions(batch: int, width: int, device: torch.device | str) -> torch.Tensor:
    """[B, T_k] absolute positions of the current forward's key columns.

    Without a KV cache the keys are the query columns; falls back to ``arange(T_k)``.
    """
    published = _CURRENT.get()
    if published is None:
        return torch.arange(width, device=device).expand(batch, width)
    positions = published.query if published.key is None else published.key
    return _checked(positions, batch, width, "key").to(device)
