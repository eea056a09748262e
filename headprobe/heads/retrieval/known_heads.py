"""Retrieval heads found so far on the real models, kept as data (issue 19).

- SmolLM2-135M-Instruct: the ``retrieval`` scorer's top three (recipe
  ``recipes/retrieval_heads.toml``: 10 NIAH trials at 256/512 tokens, 9 counted): L17H3 0.655,
  L18H6 0.397, L18H7 0.394. Causally, making the top k attend uniformly on NIAH (20 items,
  512 tokens, baseline 0.95) gives k=2 0.45 (delta -0.50 [-0.70, -0.30]) and k=5 0.05,
  against random same-layer sets' mean 0.71 and 0.67. The check is one trial of 256 tokens
  with the needle at mid depth (measured ranks: L17H3 1, L18H6 2, L18H7 5).
- The OCR model ``ocr-reader`` (a 4-layer LLaVA trained by the project): on ``bracket_copy``
  (128 text prompts) L2H6 and L2H7 score 1.000, then L2H4 0.995, L2H5 0.985, L2H3 0.984,
  L2H2 0.940; the next head is L3H2 at 0.348 (issue 10's note).
"""

from __future__ import annotations

from typing import Any

from headprobe.groundtruth import KnownHead
from headprobe.registry import get_task

_SMOL = "smollm2-135m-instruct"
_NIAH_CHECK = {"context_lengths": (256,), "depths": (0.5,), "batch_size": 1}
_NIAH_CAUSAL = ("top-2 uniform attention on NIAH: 0.95 -> 0.45 (delta -0.50 [-0.70, -0.30]); "
                "random same-layer pairs mean 0.71")


def bracket_copy_prompts(model: Any) -> Any:
    """The check's data on the OCR model: 8 ``bracket_copy`` text prompts (seed 0); the task
    is the OCR head type's, reached through the registry."""
    return get_task("bracket_copy", n=8, seed=0)


def _smol(layer: int, head: int, score: float, rank: int, within_top: int) -> KnownHead:
    return KnownHead(
        model=_SMOL, head=(layer, head), head_type="retrieval", scorer="retrieval",
        within_top=within_top, n=1, params=_NIAH_CHECK,
        evidence=f"retrieval score {score} (rank {rank} of 270; recipe, 9 NIAH trials at "
                 f"256/512 tokens); " + _NIAH_CAUSAL)


KNOWN_HEADS: tuple[KnownHead, ...] = (
    _smol(17, 3, 0.655, 1, 1),
    _smol(18, 6, 0.397, 2, 3),
    _smol(18, 7, 0.394, 3, 6),
    *(KnownHead(model="ocr-reader", head=(2, head), head_type="retrieval", scorer="retrieval",
                within_top=2, prompts=bracket_copy_prompts,
                evidence="retrieval score 1.000 on bracket_copy (128 prompts; rank 1-2 of 32, "
                         "next head outside layer 2: L3H2 0.348; issue 10)")
      for head in (6, 7)),
)
