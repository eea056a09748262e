"""Induction heads of SmolLM2-135M-Instruct found so far, kept as data (issue 19).

Evidence: the ``induction`` scorer's top five at its defaults (n=32; ``bench/RESULTS.md``,
re-measured identically before and after the issue-18 restructuring) and the causal check of
``recipes/induction.toml``: zero-ablating the top six induction heads on ``induction_copy``
(64 prompts) takes accuracy from 0.9375 to 0.0625 (delta -0.875; 5 random sets: mean -0.034).
The check is the same scorer at n=4 (the smallest n at which all five stay in the top 5; at
n=2 L17H5 falls to 6th behind L18H8), one scan shared by the five heads.
"""

from __future__ import annotations

from headprobe.groundtruth import KnownHead

_MODEL = "smollm2-135m-instruct"
_CAUSAL = ("top-6 zero ablation on induction_copy: 0.9375 -> 0.0625 (delta -0.875; random "
           "sets mean -0.034)")


def _induction(layer: int, head: int, score: float, rank: int, within_top: int) -> KnownHead:
    return KnownHead(
        model=_MODEL, head=(layer, head), head_type="induction", scorer="induction",
        within_top=within_top, n=4,
        evidence=f"induction score {score} (rank {rank} of 270, n=32, bench/RESULTS.md); "
                 + _CAUSAL)


KNOWN_HEADS: tuple[KnownHead, ...] = (
    _induction(18, 6, 0.922878, 1, 3),
    _induction(18, 7, 0.915122, 2, 3),
    _induction(17, 3, 0.901323, 3, 3),
    _induction(17, 4, 0.802284, 4, 5),
    _induction(17, 5, 0.733232, 5, 5),
)
"""The five induction heads (rank within 3 or 5 at n=4; measured ranks at n=4: L18H7 1,
L18H6 2, L17H3 3, L17H4 4, L17H5 5)."""
