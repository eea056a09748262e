"""Successor heads: heads whose OV circuit maps an ordinal item to the next one.

Gould et al. 2023, "Successor Heads: Recurring, Interpretable Attention Heads In The Wild".
Holds the weights-only scorer ``successor``, the behavioural scorer ``successor_behaviour``
(mean ablation on increment vs repeat / facts prompts), the ordinal token sets, the
``successor_increment`` task and the recipe steps ``successor_behaviour`` and ``mod10_view``.
"""

from headprobe.registry import HeadType

HEAD_TYPE = HeadType(
    name="successor",
    summary="successor heads: the effective OV circuit maps each ordinal item (numbers, days, "
            "months, letters, ...) to its successor (Gould et al. 2023)",
    scorers={"successor": "headprobe.heads.successor.successor",
             "successor_behaviour": "headprobe.heads.successor.behaviour"},
    tasks={"successor_increment": "headprobe.heads.successor.successor_increment"},
    recipes=("recipes/successor_heads.toml",),
    notebook="notebooks/05_successor_heads.ipynb",
    example="headprobe.heads.successor.example:example",
    steps={"successor_behaviour": "headprobe.heads.successor.steps:SUCCESSOR_BEHAVIOUR",
           "mod10_view": "headprobe.heads.successor.steps:MOD10_VIEW"},
    planters={"successor": "headprobe.heads.successor.plant:plant_successor"},
    ground_truth="headprobe.heads.successor.ground_truth:cases",
    known_heads="headprobe.heads.successor.known_heads:KNOWN_HEADS",
)
