"""Tiny random-weight models built from a config, for fast unit tests only.

They need no download: the tokenizer is a character-level ``PreTrainedTokenizerFast`` built
in memory (with a small chat template). Kinds cover the code paths that differ between
architectures:

- ``llama-gqa``: RMSNorm, rotary, grouped-query attention (4 query heads, 2 kv heads);
- ``gpt2``: LayerNorm, learned positions, one kv head per query head;
- ``gemma3``: RMSNorm with q/k norms and post-attention (sandwich) norms, one kv head;
- ``bert``: a non-causal encoder (to check that causal scorers refuse it);
- ``llava``: a LLaVA-style vision-language model (a tiny CLIP vision tower, a projector and
  a tiny Llama text model) with a processor (:class:`TinyImageTextProcessor`) that expands
  each ``<image>`` into one image token per patch (a 4 x 4 grid of 8-pixel patches of a
  32 x 32 image);
- ``qwen2.5-vl``: a Qwen2.5-VL-style vision-language model (``Qwen2_5_VLForConditionalGeneration``:
  a tiny windowed ViT with 2 x 2 patch merging and a tiny Qwen2 text model with multimodal
  rotary positions) with the real ``Qwen2_5_VLProcessor`` around the PIL ``Qwen2VL`` image
  processor (8-pixel patches; a 32 x 48 image gives a 4 x 6 patch grid, 2 x 3 = 6 image tokens).

Real claims about heads are never made on these models.
"""

from __future__ import annotations

import os
import string
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from headprobe.arch import ModelSpec
from headprobe.errors import UnknownModelError
from headprobe.registry import unknown_name_message

TINY_KINDS = ("llama-gqa", "gpt2", "gemma3", "bert", "llava", "qwen2.5-vl")

_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]

IMAGE_TOKEN = "<image>"

# "<s>system: ...\nuser: ...\nassistant:" -- one line per message, BOS first.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)

# The tiny LLaVA's vision tower: 32 x 32 images cut into 8 x 8 patches (a 4 x 4 grid).
_IMAGE_SIZE = 32
_PATCH_SIZE = 8
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# The tiny Qwen2.5-VL: Qwen's special tokens, appended after the char vocabulary; 8-pixel
# patches, 2 frames per temporal patch, 2 x 2 spatial merging, images resized to between
# 16 x 16 and 64 x 64 pixels (multiples of patch * merge = 16 per side).
QWEN_SPECIALS = ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>")
_QWEN_PATCH = 8
_QWEN_MERGE = 2
_QWEN_MIN_PIXELS = 16 * 16
_QWEN_MAX_PIXELS = 64 * 64


def char_tokenizer(*, image_token: bool = False, extra_specials: Sequence[str] = ()) -> Any:
    """A character-level tokenizer (printable ASCII + specials) that prepends ``<s>``.

    It has a chat template (:data:`CHAT_TEMPLATE`: ``role: content`` lines after ``<s>``,
    then ``assistant:``). ``image_token``: also add ``<image>`` as a special token (the
    tiny LLaVA's image placeholder), after every other token. ``extra_specials``: more
    special tokens, appended in order (e.g. :data:`QWEN_SPECIALS`).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(string.printable) - set("\x0b\x0c\r"))
    vocab = {tok: i for i, tok in enumerate(_SPECIALS + chars)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()  # decode joins the characters (no spaces between tokens)
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=256,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    if image_token:
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if extra_specials:
        tokenizer.add_special_tokens({"additional_special_tokens": list(extra_specials)})
    # The post-processor already prepends <s>; saying so stops TransformerLens from trying to
    # reload the tokenizer by name (which would need a hub).
    tokenizer.init_kwargs["add_bos_token"] = True
    tokenizer.init_kwargs["name_or_path"] = "headprobe-char-tokenizer"
    return tokenizer


class TinyImageTextProcessor:
    """A minimal LLaVA-style processor for the tiny ``llava`` model (no PIL, no download).

    ``processor(text=..., images=..., return_tensors="pt")`` returns the tokenizer's output
    with every ``<image>`` expanded to :attr:`n_image_tokens` image tokens, plus
    ``pixel_values`` [N_images, 3, S, S]: each image resized (bilinear) to ``S x S`` and
    normalized with CLIP's mean and std. Images are [H, W, 3] uint8 arrays or tensors, or
    [3, H, W] float tensors in [0, 1].
    """

    def __init__(self, tokenizer: Any, *, image_size: int = _IMAGE_SIZE,
                 patch_size: int = _PATCH_SIZE) -> None:
        self.tokenizer = tokenizer
        self.image_token = IMAGE_TOKEN
        self.image_token_id = int(tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
        self.image_size = image_size
        self.patch_size = patch_size
        self.n_image_tokens = (image_size // patch_size) ** 2
        self.chat_template = tokenizer.chat_template

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        """[N, 3, S, S] float32 pixel values of ``images``."""
        mean = torch.tensor(_CLIP_MEAN).view(3, 1, 1)
        std = torch.tensor(_CLIP_STD).view(3, 1, 1)
        out = []
        for index, image in enumerate(images):
            pixels = torch.as_tensor(np.asarray(image))
            if pixels.ndim != 3 or 3 not in (pixels.shape[0], pixels.shape[-1]):
                raise ValueError(f"image {index} must be [H, W, 3] or [3, H, W], got "
                                 f"shape {tuple(pixels.shape)}")
            if pixels.shape[0] != 3:
                pixels = pixels.permute(2, 0, 1)
            pixels = pixels.float() / 255.0 if pixels.dtype == torch.uint8 else pixels.float()
            resized = torch.nn.functional.interpolate(
                pixels[None], size=(self.image_size, self.image_size), mode="bilinear",
                align_corners=False)[0]
            out.append((resized - mean) / std)
        return torch.stack(out)

    def __call__(self, text: str | list[str] | None = None, images: Sequence[Any] | None = None,
                 return_tensors: str | None = "pt", **kwargs: Any) -> Any:
        from transformers import BatchFeature

        texts = [text] if isinstance(text, str) else list(text or [])
        images = list(images or [])
        expanded = [t.replace(IMAGE_TOKEN, IMAGE_TOKEN * self.n_image_tokens) for t in texts]
        n_placeholders = sum(t.count(IMAGE_TOKEN) for t in texts)
        if n_placeholders != len(images):
            raise ValueError(f"the text has {n_placeholders} {IMAGE_TOKEN} placeholders but "
                             f"{len(images)} images were given")
        data: dict[str, Any] = {}
        if texts:
            data.update(self.tokenizer(expanded, return_tensors=return_tensors, **kwargs))
        if images:
            data["pixel_values"] = self.preprocess(images)
        return BatchFeature(data)


def qwen_vl_processor(tokenizer: Any, image_processor: Any = None) -> Any:
    """A ``Qwen2_5_VLProcessor`` for images only, built offline without torchvision.

    ``image_processor``: by default the tiny ``qwen2.5-vl`` model's, a PIL
    ``Qwen2VLImageProcessorPil`` with 8-pixel patches, 2 x 2 merging and 16..64 pixels per
    side (HF's default "fast" image processor and its video processor need torchvision, which
    headprobe does not install); a real checkpoint's can be passed
    (``Qwen2VLImageProcessorPil.from_pretrained(folder)``). The processor has no video
    sub-processor (videos are not supported). ``processor(text=..., images=...)`` expands each
    ``<|image_pad|>`` into ``t * h * w / merge**2`` image tokens and returns
    ``pixel_values`` [sum of patches, 3 * temporal_patch * patch**2] and ``image_grid_thw``
    [N_images, 3] (t, h, w in patches).
    """
    if image_processor is None:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
            Qwen2VLImageProcessorPil,
        )

        image_processor = Qwen2VLImageProcessorPil(
            patch_size=_QWEN_PATCH, temporal_patch_size=2, merge_size=_QWEN_MERGE,
            min_pixels=_QWEN_MIN_PIXELS, max_pixels=_QWEN_MAX_PIXELS)
    from headprobe.processors import qwen_images_processor

    return qwen_images_processor(tokenizer, image_processor)


def _config(kind: str, vocab_size: int, tokenizer: Any = None) -> Any:
    import transformers as tf

    common: dict[str, Any] = {"vocab_size": vocab_size, "bos_token_id": 1, "eos_token_id": 2,
                              "pad_token_id": 0}
    if kind == "llama-gqa":
        return tf.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                              max_position_embeddings=256, tie_word_embeddings=False,
                              architectures=["LlamaForCausalLM"], **common)
    if kind == "gpt2":
        return tf.GPT2Config(n_embd=64, n_layer=3, n_head=4, n_positions=256, n_inner=128,
                             architectures=["GPT2LMHeadModel"], **common)
    if kind == "gemma3":
        return tf.Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                                   max_position_embeddings=256, sliding_window=64,
                                   layer_types=["full_attention"] * 3,
                                   architectures=["Gemma3ForCausalLM"], **common)
    if kind == "bert":
        return tf.BertConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=256,
                             architectures=["BertForMaskedLM"], **common)
    if kind == "llava":
        text = tf.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                              max_position_embeddings=256, tie_word_embeddings=False, **common)
        vision = tf.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, image_size=_IMAGE_SIZE,
                                     patch_size=_PATCH_SIZE, projection_dim=32)
        return tf.LlavaConfig(vision_config=vision, text_config=text,
                              image_token_index=vocab_size - 1,
                              vision_feature_select_strategy="default", vision_feature_layer=-1,
                              projector_hidden_act="gelu",
                              architectures=["LlavaForConditionalGeneration"])
    if kind == "qwen2.5-vl":
        ids = {token: int(tokenizer.convert_tokens_to_ids(token)) for token in QWEN_SPECIALS}
        # head_dim 16: 8 rotary frequencies, split 2 / 3 / 3 over (time, height, width)
        text = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2,
                "max_position_embeddings": 256, "tie_word_embeddings": False,
                "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                    "mrope_section": [2, 3, 3]}, **common}
        vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                  "in_channels": 3, "patch_size": _QWEN_PATCH, "temporal_patch_size": 2,
                  "spatial_merge_size": _QWEN_MERGE, "out_hidden_size": 64,
                  "window_size": 32, "fullatt_block_indexes": [1]}
        return tf.Qwen2_5_VLConfig(
            text_config=text, vision_config=vision, tie_word_embeddings=False,
            image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
            architectures=["Qwen2_5_VLForConditionalGeneration"])
    raise UnknownModelError(unknown_name_message("tiny model kind", kind, list(TINY_KINDS)))


def _model_class(kind: str) -> Any:
    import transformers as tf

    if kind == "bert":
        return tf.BertForMaskedLM
    if kind == "llava":
        return tf.LlavaForConditionalGeneration
    if kind == "qwen2.5-vl":
        return tf.Qwen2_5_VLForConditionalGeneration
    return None


def tiny_hf_model(kind: str = "llama-gqa", seed: int = 0) -> tuple[Any, Any, Any]:
    """The unwrapped Hugging Face model of :func:`tiny_model`: ``(hf_model, tokenizer,
    processor)`` (processor None for text models), fp32 on the CPU, eager attention. Tests
    use it as an independent reference: it never passes through the bridge."""
    import transformers as tf

    if kind not in TINY_KINDS:
        raise UnknownModelError(unknown_name_message("tiny model kind", kind, list(TINY_KINDS)))
    tokenizer = char_tokenizer(image_token=kind == "llava",
                               extra_specials=QWEN_SPECIALS if kind == "qwen2.5-vl" else ())
    config = _config(kind, vocab_size=len(tokenizer), tokenizer=tokenizer)
    config._attn_implementation = "eager"
    if kind in ("llava", "qwen2.5-vl"):
        config.text_config._attn_implementation = "eager"
        config.vision_config._attn_implementation = "eager"
    generator_state = torch.random.get_rng_state()
    try:  # seed the init without leaving the global RNG changed
        torch.manual_seed(seed)
        model_class = _model_class(kind)
        hf_model = (model_class(config) if model_class is not None
                    else tf.AutoModelForCausalLM.from_config(config))
        _spread_weights(hf_model)
    finally:
        torch.random.set_rng_state(generator_state)
    processor = TinyImageTextProcessor(tokenizer) if kind == "llava" else None
    if kind == "qwen2.5-vl":
        processor = qwen_vl_processor(tokenizer)
    return hf_model.eval(), tokenizer, processor


def tiny_model(
    kind: str = "llama-gqa",
    seed: int = 0,
    device: str | torch.device | None = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    device_map: str | Mapping[str, Any] | None = None,
    offload_folder: str | os.PathLike[str] | None = None,
    max_memory: Mapping[int | str, int | str] | None = None,
) -> tuple[Any, ModelSpec]:
    """A random-weight tiny model of ``kind`` wrapped in a bridge: ``(bridge, spec)``.

    The weights are drawn on the CPU in fp32 from ``seed`` (the global RNG is restored), then
    the model is moved to ``device`` and its parameters cast to ``dtype``, so one seed gives
    the same model everywhere. With ``device_map`` (and ``offload_folder`` / ``max_memory``)
    it is spread over devices instead, ``device`` being the main device (``None``: the map's
    first accelerator), as in :func:`headprobe.catalogue.load_model`; test maps use HF module
    paths (``model.embed_tokens``, ``model.layers.0``, ``model.norm``, ``lm_head``). The
    ``llava`` and ``qwen2.5-vl`` kinds also get ``bridge.headprobe_processor``.
    """
    from headprobe.models import wrap_hf_model

    hf_model, tokenizer, processor = tiny_hf_model(kind, seed)
    return wrap_hf_model(hf_model, tokenizer, name=f"tiny-{kind}", hf_name=f"tiny-{kind}",
                         device=device, dtype=dtype, processor=processor,
                         device_map=device_map, offload_folder=offload_folder,
                         max_memory=max_memory)


def _spread_weights(model: torch.nn.Module) -> None:
    """Give norms non-trivial weights and biases, so tests catch a norm that is not applied."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name.lower() or "ln" in name.lower():
                param.add_(0.3 * torch.randn_like(param))
            elif param.ndim >= 2:
                param.normal_(0.0, 0.08)
