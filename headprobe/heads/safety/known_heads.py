"""Safety heads of the refusing organism ``smollm2-135m-safety`` found so far (issue 19).

L18H8 is the ``ships`` scorer's top head under undifferentiated attention (8 train harmful
requests, chat template): mean KL 1.371 (median 0.789, in the top 10 of all 8 requests), next
L17H7 0.276. Causally (28 held-out harmful requests, greedy 24 tokens): making L18H8 attend
uniformly takes refusal from 1.000 to 0.893 (ASR 10.7%, delta -0.107 [-0.214, 0]) with the
harmless answer rate unchanged (0.893), while random single heads of layer 18 change nothing;
with Sahara's second head L19H8 refusal falls to 0.321 (delta -0.679 [-0.822, -0.500]).
Caveat (issue 19): L18H8 is also the base model's strongest sink (sink 0.99), and the random
controls never held L18H7 (sink 0.93), so "safety head" and "sink disrupted" are not yet
separated. The check: Ships with the uniform-attention ablation only, on 1 request
(measured: L18H8 3.508, next L17H7 1.160).
"""

from __future__ import annotations

from headprobe.groundtruth import KnownHead

KNOWN_HEADS: tuple[KnownHead, ...] = (
    KnownHead(
        model="smollm2-135m-safety", head=(18, 8), head_type="safety", scorer="ships",
        within_top=1, n=1, params={"method": "uniform_attention"},
        evidence="Ships (uniform attention) mean KL 1.371, rank 1 of 270 (next L17H7 0.276; "
                 "8 train requests); ablated: refusal 1.000 -> 0.893 (ASR 10.7%, delta -0.107 "
                 "[-0.214, 0]), harmless answers unchanged, random layer-18 heads no change; "
                 "also the base model's strongest sink (0.99)"),
)
