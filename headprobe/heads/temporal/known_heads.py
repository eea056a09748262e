"""Temporal heads found so far on the real models, kept as data (issue 9's note).

SmolLM2-135M-Instruct L1H0: the only head in 4 of 4 temporal-fact circuits and 0 of 4
invariant ones (the ``temporal`` scorer with EAP-IG and with ``eap-ig-act`` alike, on the 17
temporal and 36 invariant facts the model knows). Zero-ablated: temporal facts -0.647
[-0.88, -0.41] (random single heads of layer 1: mean -0.265, none as low), invariant facts
-0.167 [-0.31, -0.06] (random mean -0.331). Caveats (issue 19): it rests on one head and 17
prompts, and the temporal set changes with the edge cut (top 100 edges per circuit: L4H3,
L5H0, L14H8; top 300: 13 heads). The check is the scorer at its defaults (without the exact-
patching comparison): one EAP-IG-act circuit per fact set after the known-fact filter, minutes
on 2 cores (the temporal recipe's [small] run alone takes 90 s in CI), so it is a slow check.
"""

from __future__ import annotations

from headprobe.groundtruth import KnownHead

KNOWN_HEADS: tuple[KnownHead, ...] = (
    KnownHead(
        model="smollm2-135m-instruct", head=(1, 0), head_type="temporal", scorer="temporal",
        within_top=1, column="is_temporal", params={"compare_exact": False}, slow_check=True,
        evidence="in 4/4 temporal circuits, 0/4 invariant (the only is_temporal head); "
                 "zero-ablated: temporal facts -0.647 [-0.88, -0.41] (random layer-1 heads "
                 "mean -0.265), invariant -0.167 (random mean -0.331); slow check: eight "
                 "EAP-IG-act circuits and the known-fact filter take minutes on 2 cores"),
)
