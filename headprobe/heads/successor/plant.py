"""Planter of successor heads (:mod:`headprobe.planting`).

``successor``: the head attends to the current token (rotary offset 0) and its OV circuit maps
the code of every item of the successor scorer's ordinal sets that the model's tokenizer keeps
(:func:`~headprobe.heads.successor.ordinal_sets.tokenize_sets`; on the character tokenizer:
digits, numbers 1..9 and both letter cases) to the code of the next item, which the
unembedding reads: ``OV = D^T pinv(S^T)`` over the [pairs, CODE_DIM] source and successor
codes ``S`` and ``D`` (exact when the sources' codes are linearly independent, as they are
for <= CODE_DIM distinct sources). So ``W_U . OV . E(t_i)`` is largest at ``t_{i+1}`` within
each set (Gould et al. 2023). ``gain`` (0.5) keeps its push on the next token below a copy
head's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from headprobe.errors import PlantingError
from headprobe.heads.successor.ordinal_sets import tokenize_sets
from headprobe.planting import PlantedModel, copy_ov, offset_qk
from headprobe.types import Head


def successor_pairs(planted: PlantedModel, sets: Sequence[str] | None = None
                    ) -> list[tuple[int, int]]:
    """Distinct ``(token, successor token)`` id pairs of the ordinal sets the tokenizer keeps."""
    tokenized, _ = tokenize_sets(planted.bridge, list(sets) if sets else None, "both")
    pairs: dict[int, int] = {}
    for tset in tokenized:
        for first, second in tset.pairs.tolist():
            source, target = int(tset.token_ids[first]), int(tset.token_ids[second])
            if pairs.setdefault(source, target) != target:
                raise PlantingError(f"token {source} has two successors in the ordinal sets; "
                                    "choose sets=[...] without the clash")
    return sorted(pairs.items())


def successor_matrix(planted: PlantedModel, pairs: Sequence[tuple[int, int]]) -> torch.Tensor:
    """[CODE_DIM, CODE_DIM] the least-squares map from each source's code to its successor's."""
    sources = planted.codes[[s for s, _ in pairs]]  # [P, CODE_DIM]
    targets = planted.codes[[t for _, t in pairs]]
    return targets.T @ torch.linalg.pinv(sources.T)


def plant_successor(planted: PlantedModel, head: Head, *, sets: Sequence[str] | None = None,
                    gain: float = 0.5) -> None:
    """Attend to the current token and write its successor's code into ``copied``."""
    offset_qk(planted, head, 0)
    matrix = successor_matrix(planted, successor_pairs(planted, sets))
    copy_ov(planted, head, "token", "copied", matrix=matrix, gain=gain)
