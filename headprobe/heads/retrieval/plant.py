"""Planter of retrieval heads (:mod:`headprobe.planting`).

``retrieval``: a copy head (the induction mechanism, :func:`headprobe.planting.copy_head`)
restricted to the planted model's needle alphabet (``needle_alphabet``, e.g. the digits):
while the model decodes a needle written in that alphabet, the head attends to the needle
token after the earlier copy of the current one and copies it, so greedy decoding continues
the needle and the head's attention argmax is the token generated (Wu et al. 2024's
copy-paste criterion). Queries outside the alphabet read zero and attend evenly, so the head
is not an induction head on text of other tokens (induction heads copy only those).
It needs a previous-token head in an earlier layer.
"""

from __future__ import annotations

from headprobe.planting import PlantedModel, copy_head
from headprobe.types import Head


def plant_retrieval(planted: PlantedModel, head: Head, *, gain: float = 1.0) -> None:
    """Copy the next needle token (needle-alphabet tokens only)."""
    copy_head(planted, head, block="needle", gain=gain)
