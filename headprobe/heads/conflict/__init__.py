"""Memory-versus-context heads: heads that push the in-context answer over the memorised one.

Jin et al. 2024, "Cutting Off the Head Ends the Conflict: A Mechanism for Interpreting and
Mitigating Knowledge Conflicts in Language Models". Holds the scorer (path patching + DLA),
the ``knowledge_conflict`` task and the pruning / value-scaling experiments.
"""

from headprobe.registry import HeadType

HEAD_TYPE = HeadType(
    name="conflict",
    summary="memory and context heads: which answer a head pushes when the context "
            "contradicts a memorised fact (Jin et al. 2024)",
    scorers={"conflict": "headprobe.heads.conflict.conflict"},
    tasks={"knowledge_conflict": "headprobe.heads.conflict.knowledge_conflict"},
    recipes=("recipes/knowledge_conflict.toml",),
    notebook="notebooks/06_temporal_and_conflict_heads.ipynb",
    example="headprobe.heads.conflict.example:example",
    ground_truth="headprobe.heads.conflict.ground_truth:cases",
    known_heads="headprobe.heads.conflict.known_heads:KNOWN_HEADS",
)
