"""Ground truth of the OCR head type (issue 19, ``headprobe validate``): the ``ocr`` scorer on
the tiny LLaVA with a planted reading head (:mod:`headprobe.heads.ocr.plant`).

The model reads a character drawn as a coloured patch; only the planted head L0H1 carries the
patch's colour to the output (removed, no reading is right). The OCR score credits a head
whose attention argmax lands on the text's patches while the model reads, so random heads
whose random keys happen to favour the inked patch score too (measured on 16 images: L0H2
0.94, L1H3 0.69, L1H0 and L1H1 0.63): the score finds heads that *look* at the text, not only
the ones that read it. The case therefore asks the planted head to rank first (AUROC 1,
top-k precision 1) and to pass the scorer's threshold (recall 1), not for precision at it.
"""

from __future__ import annotations

from typing import Any

from headprobe.groundtruth import GroundTruthCase
from headprobe.heads.ocr.plant import DEFAULT_HEAD, colour_items, planted_llava

MODEL_ID = "planted-llava"


def _build() -> Any:
    return planted_llava(DEFAULT_HEAD).bridge


_build.__qualname__ = f"build[{MODEL_ID}]"


def colour_prompts(model: Any) -> list[Any]:
    """The case's data: 16 coloured-patch images (seed 0)."""
    return colour_items(16, seed=0)


def cases() -> list[GroundTruthCase]:
    """``ocr`` on the planted tiny LLaVA."""
    return [GroundTruthCase(
        head_type="ocr", scorer="ocr", model=MODEL_ID, source="planted", build=_build,
        known=frozenset({DEFAULT_HEAD}),
        description=("tiny LLaVA (2 layers x 4 heads, random weights) with a reading head "
                     f"L{DEFAULT_HEAD.layer}H{DEFAULT_HEAD.head} planted: it attends to the "
                     "inked patch and copies its colour, the character, to the output; "
                     "heads that merely attend to the ink also score (see the module)"),
        prompts=colour_prompts, n=16, params={"max_new_tokens": 1},
        threshold=0.1,  # the scorer's documented threshold
        minimum={"auroc": 1.0, "recall": 1.0, "top_k_precision": 1.0})]


__all__ = ["MODEL_ID", "cases", "colour_prompts"]
