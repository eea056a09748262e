"""Attention-sink heads found so far on the real models, kept as data.

SmolLM2-135M-Instruct L18H8 is the model's strongest sink (sink score 0.99 in the ``make
demo`` atlas; L18H7 next among the layer-18 heads at 0.93). Issue 19 records it because
L18H8 is also the Ships head of the safety organism: whether its safety effect is more than a
disrupted sink is the open question the matched controls answer. The check: the ``sink``
scorer on 2 prompts per domain (measured: L18H8 1.000, next L18H7 0.948).
"""

from __future__ import annotations

from headprobe.groundtruth import KnownHead

KNOWN_HEADS: tuple[KnownHead, ...] = (
    KnownHead(
        model="smollm2-135m-instruct", head=(18, 8), head_type="sink", scorer="sink",
        within_top=1, n=2,
        evidence="sink score 0.99, the strongest sink head (make demo atlas); the safety "
                 "organism's Ships head"),
)
