"""Induction heads: attention from a token to the token after an earlier copy of itself.

Score (Olsson et al. 2022, "In-context Learning and Induction Heads"; TransformerLens head
detector, "induction_head"): on ``BOS + r + r`` with ``r`` random tokens, for each query in
the second copy, the attention on the position after the earlier copy of the current token,
over the attention on allowed positions (BOS and the current token excluded), averaged over
queries and prompts. On SmolLM2-135M-Instruct, layer 18 head 6 scores about 0.9.
"""

from headprobe.heads.induction.pattern_mass import (
    PATTERN_PROMPTS,
    PatternParams,
    induction_targets,
    pattern_compute,
    prepare_pattern_data,
)
from headprobe.scorers.base import Scorer

SCORER = Scorer(
    name="induction",
    description="attention on the token after an earlier copy of the current token",
    reference="Olsson et al. 2022, In-context Learning and Induction Heads",
    prepare=prepare_pattern_data,
    compute=pattern_compute(induction_targets, "induction"),
    prompts=PATTERN_PROMPTS,
    params=PatternParams,
    default_n=32,
)
