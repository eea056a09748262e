"""The shard plan of a Ray scan: which prompts and layers each unit of work covers.

An all-head scan's additive sums split over prompts (runs of whole batches, so every batch is
the single-process scan's) or over layers (contiguous groups balanced by cost: a scan of layer
``k`` reruns layers ``k..L-1``, so it costs about ``L - k`` layer passes).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from headprobe.errors import UsageError

ShardBy = Literal["prompts", "layers"]
SHARD_BY = ("prompts", "layers")


@dataclass(frozen=True)
class Shard:
    """One unit of work: the prompts ``rows`` (indices into the whole set, contiguous) at the
    layers ``layers``."""

    index: int
    rows: tuple[int, ...]
    layers: tuple[int, ...]

    def describe(self) -> str:
        return (f"shard {self.index}: prompts {self.rows[0]}..{self.rows[-1]}, layers "
                f"{self.layers[0]}..{self.layers[-1]}")


def _split_even(count: int, parts: int) -> list[int]:
    """Sizes of ``parts`` contiguous groups of ``count`` items, differing by at most one."""
    return [count // parts + (1 if index < count % parts else 0) for index in range(parts)]


def _split_layers(layers: Sequence[int], n_layers: int, parts: int) -> list[list[int]]:
    """``parts`` contiguous non-empty groups of ``layers`` (``parts <= len(layers)``) of about
    equal cost ``sum(n_layers - k)``: a scan of layer ``k`` reruns layers ``k..n_layers-1``.
    Cut ``j`` falls where the running cost is nearest ``j / parts`` of the total."""
    cumulative, total = [], 0
    for layer in layers:
        total += n_layers - layer
        cumulative.append(total)
    cuts, last = [], -1  # cut after position i: a group ends at layers[i]
    for j in range(1, parts):
        target = total * j / parts
        choices = range(last + 1, len(layers) - (parts - j))
        last = min(choices, key=lambda i: abs(cumulative[i] - target))
        cuts.append(last)
    bounds = [-1, *cuts, len(layers) - 1]
    return [list(layers[a + 1:b + 1]) for a, b in itertools.pairwise(bounds)]


def plan_shards(n_prompts: int, layers: Sequence[int], *, shard_by: ShardBy, batch_size: int,
                n_layers: int, shards: int | None = None,
                num_workers: int = 1) -> list[Shard]:
    """The shards of a scan of ``n_prompts`` prompts at ``layers``.

    Args:
        shard_by: ``prompts`` (runs of whole batches of ``batch_size`` prompts: every batch is
            the single-process scan's) or ``layers`` (cost-balanced contiguous layer groups,
            every prompt).
        shards: number of shards (capped at the number of batches / layers); default: one
            per batch for ``prompts`` (the checkpoint grain, independent of the worker
            count), two per worker for ``layers`` (each layer shard reruns the base passes).
        n_layers: the model's layer count (the layer costs).
    """
    if shard_by not in SHARD_BY:
        raise UsageError(f"shard_by must be 'prompts' or 'layers', got {shard_by!r}")
    if shards is not None and shards < 1:
        raise UsageError(f"shards must be >= 1, got {shards}")
    layers = sorted(set(int(layer) for layer in layers))
    if shard_by == "prompts":
        n_batches = -(-n_prompts // batch_size)
        parts = min(shards or n_batches, n_batches)
        out, first_batch = [], 0
        for index, size in enumerate(_split_even(n_batches, parts)):
            start = first_batch * batch_size
            stop = min((first_batch + size) * batch_size, n_prompts)
            out.append(Shard(index, tuple(range(start, stop)), tuple(layers)))
            first_batch += size
        return out
    parts = min(shards or 2 * num_workers, len(layers))
    rows = tuple(range(n_prompts))
    return [Shard(index, rows, tuple(group))
            for index, group in enumerate(_split_layers(layers, n_layers, parts))]
