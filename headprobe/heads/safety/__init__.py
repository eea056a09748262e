"""Safety heads: heads whose ablation undoes refusal.

Zhou et al. 2025, "On the Role of Attention Heads in Large Language Model Safety" (Ships and
Sahara). Holds both scorers, the harmful / harmless request sets, the refusal tasks and the
refusing model organism ``smollm2-135m-safety`` (:mod:`.organism`).
"""

from headprobe.registry import HeadType

HEAD_TYPE = HeadType(
    name="safety",
    summary="safety heads: ablation changes the first reply token on harmful requests (Ships) "
            "or turns the refusal direction (Sahara) (Zhou et al. 2025)",
    scorers={
        "ships": "headprobe.heads.safety.ships",
        "sahara": "headprobe.heads.safety.sahara",
    },
    tasks={
        "harmful_refusal": "headprobe.heads.safety.harmful_refusal",
        "harmless_answer": "headprobe.heads.safety.harmless_answer",
    },
    recipes=("recipes/safety_heads.toml", "recipes/safety_matched_controls.toml"),
    models={"smollm2-135m-safety": "headprobe.heads.safety.model:SAFETY_MODEL_SOURCE"},
    notebook="notebooks/04_safety_heads.ipynb",
    example="headprobe.heads.safety.example:example",
    ground_truth="headprobe.heads.safety.ground_truth:cases",
)
