"""Memory and context heads found so far on the real models, kept as data (issue 9's note).

Sign convention of the ``conflict`` scorer: positive = memory head (pushes the answer the model
recalls), negative = context head (pushes the answer the context states). The evidence is
path patching (PH3; n=64) and pruning on held-out facts; the check is the scorer's exact DLA
onto W_U[memory] - W_U[context] (``score_by="dla"``, no path patching: path patching costs
one forward per head per batch, 700 s on SmolLM2 at n=64) on a few items of two relations.
On those 12 items (measured): L24H4 is first on the memory side (DLA +0.594); on the context
side L23H7 is first (-0.794) and L23H0 fifth (-0.501), the layer-23 context heads' DLA being
close together (on 12 items of every relation L23H0 was first and L23H7 third).
Only heads whose DLA agrees with their path score in sign and rank are recorded (L23H4, a
context head by path at -1.83, has DLA +0.57: its direct push goes the other way).

- SmolLM2-135M-Instruct: memory L24H4 (path +1.98, DLA +0.61; value scaling alpha=5 takes the
  held-out context rate to 0.025 [0.008, 0.046], delta -0.487, best random head 0.15), context
  L23H0 and L23H7 (path -1.87 and -1.62); pruning the top 3 memory heads: context
  rate +0.263 [0.204, 0.329] (random same-layer -0.21 to +0.01), the top 3 context heads:
  -0.271 [-0.333, -0.204] (random -0.07 to +0.07).
- Gemma-3-270M: memory L13H3 (path +4.52, DLA +1.86; pruned: +0.095 [0.045, 0.15], random
  mean -0.05), context L11H2 (path -9.19, DLA -4.40; pruned: context rate 0.67 -> 0.055,
  -0.615 [-0.68, -0.545], every random set raised it).
"""

from __future__ import annotations

from typing import Any

from headprobe.groundtruth import KnownHead
from headprobe.heads.conflict.knowledge_conflict import make_task


def conflict_prompts(model: Any) -> Any:
    """The check's data: 12 knowledge-conflict items (seed 0) of the capital and language
    relations in framings 1 and 2, facts the model recalls without context."""
    return make_task(n=12, seed=0, model=model, relations=["capital", "language"],
                     framings=[1, 2])


def _conflict(model: str, layer: int, head: int, role: str, within_top: int,
              evidence: str) -> KnownHead:
    return KnownHead(
        model=model, head=(layer, head), head_type="conflict", scorer="conflict",
        within_top=within_top, column="dla", ascending=role == "context",
        prompts=conflict_prompts, params={"score_by": "dla", "path": False, "batch_size": 12},
        evidence=f"{role} head: {evidence}")


KNOWN_HEADS: tuple[KnownHead, ...] = (
    _conflict("smollm2-135m-instruct", 24, 4, "memory", 2,
              "path +1.98 (rank 2 of 270, n=64), DLA +0.61; value scaling alpha=5: held-out "
              "context rate 0.025 (delta -0.487; best random head 0.15)"),
    _conflict("smollm2-135m-instruct", 23, 0, "context", 5,
              "path -1.87 (rank 1 of the context side, n=64); top-3 context heads pruned: "
              "context rate -0.271 [-0.333, -0.204] (random -0.07 to +0.07)"),
    _conflict("smollm2-135m-instruct", 23, 7, "context", 3,
              "path -1.62 (rank 3 of the context side, n=64); one of the top-3 context heads "
              "pruned above"),
    _conflict("gemma3-270m", 13, 3, "memory", 2,
              "path +4.52 (rank 1 of 72, n=64), DLA +1.86; pruned: context rate +0.095 "
              "[0.045, 0.15] (random mean -0.05)"),
    _conflict("gemma3-270m", 11, 2, "context", 1,
              "path -9.19, DLA -4.40 (rank 1 of the context side); pruned: context rate 0.67 "
              "-> 0.055 (-0.615 [-0.68, -0.545]; every random set raised it)"),
)
