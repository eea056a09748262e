"""Processors headprobe builds itself for vision-language models (a leaf of the models layer).

The stock Qwen2-VL processor builds a video processor whose base class needs torchvision,
which headprobe does not install; :func:`qwen_images_processor` is the images-only variant
used for local Qwen2-VL-style folders (:mod:`headprobe.sources`) and the tiny test model
(:mod:`headprobe.tiny`).
"""

from __future__ import annotations

import functools
from typing import Any


def qwen_images_processor(tokenizer: Any, image_processor: Any) -> Any:
    """A Qwen2-VL-style processor for images only: ``tokenizer`` and a PIL
    ``Qwen2VLImageProcessorPil`` (HF's default fast image and video processors need
    torchvision, which headprobe does not install). Videos are not supported."""
    return _image_only_qwen_processor_class()(
        image_processor=image_processor, tokenizer=tokenizer,
        chat_template=getattr(tokenizer, "chat_template", None))


@functools.cache
def _image_only_qwen_processor_class() -> Any:
    """``Qwen2_5_VLProcessor`` without its video sub-processor (whose base class needs
    torchvision); images are processed by the parent class's own code."""
    from transformers import Qwen2_5_VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class _ImageOnlyQwenProcessor(Qwen2_5_VLProcessor):
        def __init__(self, image_processor: Any = None, tokenizer: Any = None,
                     chat_template: str | None = None, **kwargs: Any) -> None:
            self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
            self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
            self.image_token_id = int(tokenizer.convert_tokens_to_ids(self.image_token))
            self.video_token_id = int(tokenizer.convert_tokens_to_ids(self.video_token))
            ProcessorMixin.__init__(self, image_processor, tokenizer,
                                    chat_template=chat_template)

    return _ImageOnlyQwenProcessor
