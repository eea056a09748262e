"""OCR heads of the project's OCR model ``ocr-reader`` found so far (issue 10's note).

The ``ocr`` scorer on 128 training-like images (seed 0; reading accuracy 0.953) puts four
layer-2 heads on top at 0.974: L2H2, L2H3, L2H6, L2H7 (evidence share 1.000; ground-truth
agreement, the share of answer tokens whose argmax lands on the character being emitted:
0.963, 0.984, 1.000, 1.000), then L2H5 0.885. Causally, zeroing the top 4 on 200 held-out
images takes reading from 0.930 to 0.005 (delta -0.925 [-0.96, -0.885]) against -0.295 for
the same-layer random set; at k=1 and 2 the top heads are no more harmful than random
same-layer heads (the reading heads are redundant). The check is the scorer on 8 images.
"""

from __future__ import annotations

from headprobe.groundtruth import KnownHead

_AGREEMENT = {2: 0.963, 3: 0.984, 6: 1.000, 7: 1.000}

KNOWN_HEADS: tuple[KnownHead, ...] = tuple(
    KnownHead(
        model="ocr-reader", head=(2, head), head_type="ocr", scorer="ocr", within_top=4, n=8,
        evidence=f"ocr score 0.974 (tied rank 1-4 of 32, 128 images), ground-truth agreement "
                 f"{agreement:.3f}; top-4 zeroed: reading 0.930 -> 0.005 (delta -0.925 "
                 f"[-0.96, -0.885]), same-layer random set -0.295")
    for head, agreement in _AGREEMENT.items()
)
