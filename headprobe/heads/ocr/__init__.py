"""OCR heads: heads of a vision-language model that attend to the text being read.

Baek et al. 2025, "How Do Large Vision-Language Models See Text in Image? Unveiling the
Distinctive Role of OCR Heads". Holds the scorer, the ``ocr_read`` and ``bracket_copy`` tasks,
text rendering, the evidence figures and the project's OCR model ``ocr-reader``.
"""

from headprobe.registry import HeadType

HEAD_TYPE = HeadType(
    name="ocr",
    summary="OCR heads: while a VLM reads text in an image, the head's attention argmax "
            "lands on the patches showing it (Baek et al. 2025)",
    scorers={"ocr": "headprobe.heads.ocr.ocr"},
    tasks={
        "ocr_read": "headprobe.heads.ocr.ocr_read",
        "bracket_copy": "headprobe.heads.ocr.bracket_copy",
    },
    recipes=("recipes/ocr_heads.toml",),
    models={"ocr-reader": "headprobe.heads.ocr.model:OCR_MODEL_SOURCE"},
    notebook="notebooks/07_ocr_heads.ipynb",
    example="headprobe.heads.ocr.example:example",
    ground_truth="headprobe.heads.ocr.ground_truth:cases",
    known_heads="headprobe.heads.ocr.known_heads:KNOWN_HEADS",
)
