"""Retrieval heads: copy-paste attention on the needle while a model repeats it.

Wu et al. 2024, "Retrieval Head Mechanistically Explains Long-Context Factuality". Holds the
scorer, the needle-in-a-haystack task (haystack and needles in ``headprobe/resources``) and
the KV-cache budget plans built from retrieval scores (:mod:`.kv_budget`, after
DuoAttention, Xiao et al. 2024, and HeadKV, Fu et al. 2024).
"""

from headprobe.registry import HeadType

HEAD_TYPE = HeadType(
    name="retrieval",
    summary="retrieval heads: decode-time attention argmax on the needle token being copied "
            "(Wu et al. 2024), and KV-cache budgets built from them",
    scorers={"retrieval": "headprobe.heads.retrieval.retrieval"},
    tasks={"niah": "headprobe.heads.retrieval.niah"},
    recipes=("recipes/retrieval_heads.toml", "recipes/retrieval_matched_controls.toml"),
    notebook="notebooks/03_retrieval_heads.ipynb",
    example="headprobe.heads.retrieval.example:example",
    steps={"kv_budget": "headprobe.heads.retrieval.kv_budget.step:KV_BUDGET"},
    planters={"retrieval": "headprobe.heads.retrieval.plant:plant_retrieval"},
    ground_truth="headprobe.heads.retrieval.ground_truth:cases",
    known_heads="headprobe.heads.retrieval.known_heads:KNOWN_HEADS",
)
