"""Previous-token heads: attention from each token to the token just before it.

Score (TransformerLens head detector, "previous_token_head"; Olsson et al. 2022, "In-context
Learning and Induction Heads"): mean over query positions of the attention on position
``i - 1`` over the attention on allowed positions (BOS excluded by default). Default data:
repeated random-token sequences, as for induction.
"""

from headprobe.heads.induction.pattern_mass import (
    PATTERN_PROMPTS,
    PreviousTokenParams,
    pattern_compute,
    prepare_pattern_data,
    previous_token_targets,
)
from headprobe.scorers.base import Scorer

SCORER = Scorer(
    name="previous_token",
    description="attention on the previous token (i -> i-1)",
    reference="Olsson et al. 2022, In-context Learning and Induction Heads; TransformerLens "
    "head_detector",
    prepare=prepare_pattern_data,
    compute=pattern_compute(previous_token_targets, "previous_token"),
    prompts=PATTERN_PROMPTS,
    params=PreviousTokenParams,
    default_n=32,
)
