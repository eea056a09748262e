"""Planters of the induction circuit's heads (:mod:`headprobe.planting`): previous-token,
duplicate-token and induction heads written by hand into a planted model.

- ``previous_token``: attends from ``i`` to ``i - 1`` by rotary position alone
  (:func:`headprobe.planting.offset_qk`); its OV copies the attended token's code into the
  ``previous`` subspace (where induction heads' keys read it).
- ``duplicate_token``: query and key both read the token code, so the head attends to every
  earlier copy of the current token (and to itself, which the scorer's denominator leaves
  out); its OV writes nothing.
- ``induction``: the copy head of Olsson et al. 2022 (:func:`headprobe.planting.copy_head`):
  the query reads the current token's code, the key the previous-token code, the OV copies the
  attended token into ``copied`` (the unembedding reads it). With a needle alphabet it copies
  only the other tokens (retrieval heads copy the alphabet).
"""

from __future__ import annotations

from headprobe.planting import PlantedModel, copy_head, copy_ov, match_qk, offset_qk
from headprobe.types import Head


def plant_previous_token(planted: PlantedModel, head: Head, *, gain: float = 1.0) -> None:
    """Attend to the previous token and write its code into ``previous``."""
    offset_qk(planted, head, 1)
    copy_ov(planted, head, "token", "previous", gain=gain)


def plant_duplicate_token(planted: PlantedModel, head: Head) -> None:
    """Attend to earlier copies of the current token (query and key read the token code)."""
    match_qk(planted, head, lambda m: m, "token", "token")


def plant_induction(planted: PlantedModel, head: Head, *, gain: float = 1.0) -> None:
    """Attend to the token after an earlier copy of the current token and copy it."""
    copy_head(planted, head, block="rest", gain=gain)
