"""Model organisms: small models fine-tuned to show a behaviour whose heads headprobe studies.

- :mod:`headprobe.organisms.lora`: LoRA fine-tuning of a plain Hugging Face causal LM on chat
  examples, loss on the assistant reply only.
- :mod:`headprobe.organisms.adapters`: adapter folders, their metadata, the check that an
  adapter fits its base model, and merging (``PeftModel.merge_and_unload``).
- :mod:`headprobe.organisms.safety`: the safety-tuned SmolLM2 (``smollm2-135m-safety``) after
  Zhou et al. 2025, "On the Role of Attention Heads in Large Language Model Safety": training
  (:func:`train_safety_adapter`) and the refusal / answer rates (:func:`evaluate_refusals`).
- :mod:`headprobe.organisms.ocr_reader`: the project's OCR model ``ocr-reader``, a tiny LLaVA
  trained from scratch to read rendered strings (Baek et al. 2025's OCR heads need a
  vision-language model, and none installs offline).

Importing this package imports neither peft nor a model.
"""

from headprobe.organisms.adapters import load_adapted_model, merge_adapter
from headprobe.organisms.lora import ChatExample, LoraSettings, train_lora
from headprobe.organisms.safety import TrainReport, evaluate_refusals, train_safety_adapter

__all__ = [
    "ChatExample",
    "LoraSettings",
    "TrainReport",
    "evaluate_refusals",
    "load_adapted_model",
    "merge_adapter",
    "train_lora",
    "train_safety_adapter",
]
