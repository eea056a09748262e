"""Duplicate-token heads: attention from a token to earlier copies of the same token.

Score (TransformerLens head detector, "duplicate_token_head"; Wang et al. 2022, "Interpretability
in the Wild"): mean over query positions that have an earlier copy of their token of the
attention on those copies over the attention on allowed positions (BOS and the current token
excluded by default). Default data: repeated random-token sequences.
"""

from headprobe.heads.induction.pattern_mass import (
    PATTERN_PROMPTS,
    PatternParams,
    duplicate_token_targets,
    pattern_compute,
    prepare_pattern_data,
)
from headprobe.scorers.base import Scorer

SCORER = Scorer(
    name="duplicate_token",
    description="attention on earlier copies of the current token",
    reference="Wang et al. 2022, Interpretability in the Wild (IOI); TransformerLens "
    "head_detector",
    prepare=prepare_pattern_data,
    compute=pattern_compute(duplicate_token_targets, "duplicate_token"),
    prompts=PATTERN_PROMPTS,
    params=PatternParams,
    default_n=32,
)
