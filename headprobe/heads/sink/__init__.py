"""Attention-sink heads: attention parked on the first token, active or dormant per domain.

Xiao et al. 2023, "Efficient Streaming Language Models with Attention Sinks"; Guo et al. 2024,
"Active-Dormant Attention Heads".
"""

from headprobe.registry import HeadType

HEAD_TYPE = HeadType(
    name="sink",
    summary="attention-sink heads: attention on the first token per prompt domain, "
            "active/dormant split (Xiao et al. 2023; Guo et al. 2024)",
    scorers={"sink": "headprobe.heads.sink.sink"},
    recipes=("recipes/sink_heads.toml",),
    notebook="notebooks/01_quickstart.ipynb",
    example="headprobe.heads.sink.example:example",
    planters={"sink": "headprobe.heads.sink.plant:plant_sink"},
    ground_truth="headprobe.heads.sink.ground_truth:cases",
    known_heads="headprobe.heads.sink.known_heads:KNOWN_HEADS",
)
