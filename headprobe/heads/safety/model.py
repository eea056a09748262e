"""The safety head type's model organism in the catalogue: ``smollm2-135m-safety``.

SmolLM2-135M-Instruct (the packaged GGUF model) with the LoRA adapter of
``data/adapters/smollm2-135m-safety`` merged (:func:`headprobe.organisms.adapters.load_adapted`),
so it refuses harmful requests and answers harmless ones (:mod:`.organism` trains it).
:func:`headprobe.catalogue.load_model` finds it through ``HEAD_TYPE.models``.
"""

from __future__ import annotations

from typing import Any

import torch

from headprobe.catalogue import ModelSource
from headprobe.errors import HeadprobeError
from headprobe.organisms.adapters import ADAPTER_META, load_adapted, packaged_adapter_dir
from headprobe.sources import PACKAGED_MODELS, packaged_status

BASE_MODEL = "smollm2-135m-instruct"
ADAPTER = "smollm2-135m-safety"
REBUILD_HINT = "python recipes/make_safety_model.py  (about 10 minutes on 2 CPU cores)"


def load(*, dtype: torch.dtype, use_cache: bool = True) -> tuple[Any, Any, str, Any]:
    """``(hf_model, tokenizer, hf_name, None)``: the base model with the adapter merged, in
    ``dtype``.

    Raises:
        ModelUnavailableError: the base model's package or the adapter folder is missing (the
            message says how to install or rebuild it).
        AdapterMismatchError: the adapter does not fit the base model.
    """
    hf_model, tokenizer = load_adapted(BASE_MODEL, packaged_adapter_dir(ADAPTER), dtype=dtype,
                                       use_cache=use_cache, rebuild_hint=REBUILD_HINT)
    return hf_model, tokenizer, PACKAGED_MODELS[BASE_MODEL].hf_name, None


def status() -> dict[str, Any]:
    """Loadable here when the base model's package is installed and the adapter is present."""
    base = packaged_status(BASE_MODEL)
    if not base["installed"]:
        return {"installed": False, "cached": False, "install": base["install"]}
    try:
        present = (packaged_adapter_dir(ADAPTER) / ADAPTER_META).is_file()
    except HeadprobeError:  # no data folder here
        present = False
    return {"installed": present, "cached": present and base["cached"],
            "install": "" if present else REBUILD_HINT}


SAFETY_MODEL_SOURCE = ModelSource(
    name="smollm2-135m-safety",
    description="SmolLM2-135M-Instruct + a LoRA safety adapter (data/adapters/"
                "smollm2-135m-safety): refuses harmful requests, answers harmless ones",
    load=load,
    status=status,
)
