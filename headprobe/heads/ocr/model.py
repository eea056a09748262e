"""The OCR head type's model in the catalogue: ``ocr-reader``, the project's OCR model.

A tiny LLaVA (CLIP ViT 64 x 64 images, 8 x 8 patches; Llama 4 layers x 8 heads, 4 kv heads)
trained by ``recipes/train_ocr_model.py`` to read rendered strings; its weights are in
``data/ocr_model`` (:func:`.ocr_reader.ocr_model_dir`). :func:`headprobe.catalogue.load_model`
finds it through ``HEAD_TYPE.models``.
"""

from __future__ import annotations

from typing import Any

import torch

from headprobe.catalogue import ModelSource
from headprobe.errors import HeadprobeError, ModelUnavailableError
from headprobe.heads.ocr.ocr_reader import load_ocr_model, ocr_model_dir

TRAIN_HINT = "python recipes/train_ocr_model.py"


def load(*, dtype: torch.dtype, use_cache: bool = True) -> tuple[Any, Any, str, Any]:
    """``(hf_model, tokenizer, "headprobe/ocr-reader", processor)``: the shipped model in fp32
    on the CPU (:func:`headprobe.catalogue.load_model` casts it to ``dtype``); ``use_cache``
    is unused (nothing is dequantized).

    Raises:
        ModelUnavailableError: the weights are missing (the message says how to train them).
    """
    try:
        hf_model, tokenizer, processor = load_ocr_model()
    except FileNotFoundError as error:
        raise ModelUnavailableError(str(error)) from error
    return hf_model, tokenizer, "headprobe/ocr-reader", processor


def status() -> dict[str, Any]:
    """Loadable here when ``data/ocr_model/model.safetensors`` exists."""
    try:
        present = (ocr_model_dir() / "model.safetensors").is_file()
    except HeadprobeError:  # no data folder here
        present = False
    return {"installed": present, "cached": present, "install": "" if present else TRAIN_HINT}


OCR_MODEL_SOURCE = ModelSource(
    name="ocr-reader",
    description="the project's OCR model: a tiny LLaVA (CLIP ViT 64 x 64 images, 8 x 8 "
                "patches; Llama 4 layers x 8 heads, 4 kv heads) trained to read rendered "
                "strings (data/ocr_model)",
    load=load,
    status=status,
)
