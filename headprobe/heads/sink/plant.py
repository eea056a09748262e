"""Planter of attention-sink heads (:mod:`headprobe.planting`).

``sink``: the query reads the constant dimension and the key the BOS flag, so every query
puts its attention on the first token (Xiao et al. 2023); the value of BOS is zero (its code
is zero), so like a dormant head (Guo et al. 2024) it writes nothing.
"""

from __future__ import annotations

from headprobe.planting import PlantedModel, bos_qk
from headprobe.types import Head


def plant_sink(planted: PlantedModel, head: Head) -> None:
    """Attend to the first token and write nothing."""
    bos_qk(planted, head)
