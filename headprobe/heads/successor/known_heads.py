"""Successor heads found so far on the real models, kept as data (issue 9's note).

- SmolLM2-135M-Instruct L23H3: the weights-only ``successor`` score's top head, 0.206 (strict
  0.000; digits .56, numbers .50, ordinals .50; 218 pairs, chance 0.067), and the behavioural
  ranking's top head (.985: increment drop minus the repeat / facts controls' drops, n=40).
  Mean-ablated on ``successor_increment``: increment -0.250 [-0.40, -0.10] (random same-layer
  mean -0.020), repeat +0.200, facts +0.025.
- Gemma-3-270M L12H0: found by behaviour only. Behavioural top head (.894; next L2H1 .439);
  mean-ablated, increment -0.775 [-0.90, -0.65] (random mean 0.000, min -0.025), repeat
  +0.075, facts 0.000. The weights-only score misses it: 0.085, near chance (0.064), tied
  with L2H0, L3H1 and L13H0 below L5H0's 0.103. Its check is therefore behavioural: every
  head mean-ablated on the increment prompts (``ablation_scan``, normalized logit difference,
  lowest first). A behavioural ``successor`` scorer is being added by another part of issue
  19; when it lands this check should move to it.
"""

from __future__ import annotations

from typing import Any

from headprobe.groundtruth import KnownHead
from headprobe.heads.successor.successor_increment import make_task


def increment_prompts(model: Any) -> Any:
    """The Gemma check's data: 8 ``successor_increment`` increment items (seed 0), filtered
    to the model's single-token items (measured: L12H0's normalized logit difference 0.019
    with it mean-ablated, next L2H1 0.506)."""
    return make_task(kind="increment", n=8, seed=0, model=model)


KNOWN_HEADS: tuple[KnownHead, ...] = (
    KnownHead(
        model="smollm2-135m-instruct", head=(23, 3), head_type="successor", scorer="successor",
        within_top=1,
        evidence="weights-only successor score 0.206, rank 1 of 270 (next L24H7 0.138); "
                 "behavioural rank 1 (.985); mean-ablated, increment -0.250 [-0.40, -0.10] "
                 "(random mean -0.020)"),
    KnownHead(
        model="gemma3-270m", head=(12, 0), head_type="successor", scorer="ablation_scan",
        within_top=1, ascending=True, prompts=increment_prompts,
        params={"task": "successor_increment", "method": "mean",
                "metric": "normalized_logit_diff", "batch_size": 16},
        evidence="behavioural rank 1 of 72 (.894; next L2H1 .439); mean-ablated, increment "
                 "-0.775 [-0.90, -0.65] (random mean 0.000), facts 0.000; the weights-only "
                 "successor score misses it (0.085, chance 0.064, top L5H0 0.103)"),
)
