"""Induction-circuit heads: previous-token, duplicate-token and induction heads.

Olsson et al. 2022, "In-context Learning and Induction Heads"; Wang et al. 2022,
"Interpretability in the Wild" (duplicate-token heads). Scorers measure attention mass on the
positions each pattern predicts (:mod:`.pattern_mass`); ``induction_copy`` is the causal task.
"""

from headprobe.registry import HeadType

HEAD_TYPE = HeadType(
    name="induction",
    summary="previous-token, duplicate-token and induction heads: attention on the position "
            "an in-context copy predicts (Olsson et al. 2022; Wang et al. 2022)",
    scorers={
        "previous_token": "headprobe.heads.induction.previous_token",
        "duplicate_token": "headprobe.heads.induction.duplicate_token",
        "induction": "headprobe.heads.induction.induction",
    },
    tasks={"induction_copy": "headprobe.heads.induction.induction_copy"},
    recipes=("recipes/induction.toml",),
    notebook="notebooks/01_quickstart.ipynb",
    example="headprobe.heads.induction.example:example",
    planters={
        "previous_token": "headprobe.heads.induction.plant:plant_previous_token",
        "duplicate_token": "headprobe.heads.induction.plant:plant_duplicate_token",
        "induction": "headprobe.heads.induction.plant:plant_induction",
    },
    ground_truth="headprobe.heads.induction.ground_truth:cases",
    known_heads="headprobe.heads.induction.known_heads:KNOWN_HEADS",
)
