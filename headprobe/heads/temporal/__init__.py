"""Temporal heads: heads in the circuits that recall time-dependent facts.

Park et al. 2025, "Does Time Have Its Place? Temporal Heads: Where Language Models Recall
Time-specific Information". Holds the scorer (EAP-IG circuits per fact set), the
``temporal_facts`` task, the temporal edit experiment and their recipe steps.
"""

from headprobe.registry import HeadType

HEAD_TYPE = HeadType(
    name="temporal",
    summary="temporal heads: in the circuits of time-conditioned facts but not of "
            "time-invariant ones (Park et al. 2025)",
    scorers={"temporal": "headprobe.heads.temporal.temporal"},
    tasks={"temporal_facts": "headprobe.heads.temporal.temporal_facts"},
    recipes=("recipes/temporal_heads.toml",),
    notebook="notebooks/06_temporal_and_conflict_heads.ipynb",
    example="headprobe.heads.temporal.example:example",
    steps={"temporal_heads": "headprobe.heads.temporal.steps:TEMPORAL_HEADS",
           "temporal_edit": "headprobe.heads.temporal.steps:TEMPORAL_EDIT"},
    known_heads="headprobe.heads.temporal.known_heads:KNOWN_HEADS",
)
