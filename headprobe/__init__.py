"""headprobe: per-head scores, causal checks and interventions for transformer attention heads.

Importing headprobe loads no model and changes no global state. Start with::

    from headprobe import load_model, scan
    model, spec = load_model("smollm2-135m-instruct")
    table = scan(model, "induction")
    table.top(5); table.heatmap(); table.save("runs/induction")
"""

from headprobe.arch import ModelSpec
from headprobe.errors import (
    ContextLengthError,
    EmptyPromptsError,
    HeadIndexError,
    HeadprobeError,
    ModelUnavailableError,
    NonCausalModelError,
    OutputPathError,
    UnknownModelError,
    UnknownScorerError,
)
from headprobe.headtable import HeadTable
from headprobe.inputs import Batch, Chat, ImagePrompt, Text, encode_prompts
from headprobe.models import available_models, describe_model, load_model
from headprobe.registry import get_scorer, list_scorers, scan
from headprobe.version import __version__

__all__ = [
    "Batch",
    "Chat",
    "ContextLengthError",
    "EmptyPromptsError",
    "HeadIndexError",
    "HeadTable",
    "HeadprobeError",
    "ImagePrompt",
    "ModelSpec",
    "ModelUnavailableError",
    "NonCausalModelError",
    "OutputPathError",
    "Text",
    "UnknownModelError",
    "UnknownScorerError",
    "__version__",
    "available_models",
    "describe_model",
    "encode_prompts",
    "get_scorer",
    "list_scorers",
    "load_model",
    "scan",
]
