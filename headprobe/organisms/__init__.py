"""Model organisms: the generic machinery for small models fine-tuned to show a behaviour.

- :mod:`headprobe.organisms.lora`: LoRA fine-tuning of a plain Hugging Face causal LM on chat
  examples, loss on the assistant reply only.
- :mod:`headprobe.organisms.adapters`: adapter folders, their metadata, the check that an
  adapter fits its base model, and merging (``PeftModel.merge_and_unload``).

A head type's own organism lives in its folder and is declared in its ``HEAD_TYPE.models``
(the refusing SmolLM2 of the safety head type, the OCR model of the ocr head type).
Importing this package imports neither peft nor a model.
"""

from headprobe.organisms.adapters import load_adapted_model, merge_adapter
from headprobe.organisms.lora import ChatExample, LoraSettings, train_lora

__all__ = [
    "ChatExample",
    "LoraSettings",
    "load_adapted_model",
    "merge_adapter",
    "train_lora",
]
