"""Image prompts through a vision-language model's processor.

An :class:`~headprobe.prompt_items.ImagePrompt` is text with ``<image>`` placeholders and the
images. :func:`encode_image_prompt` runs the processor that :func:`headprobe.catalogue.load_model`
keeps on the bridge (``model.headprobe_processor``), which expands each placeholder into one
image token per patch and returns ``pixel_values``; it finds each image's run of image tokens
(the config's ``image_token_id`` / ``image_token_index``), gives it a span ``image`` (or
``image_0``, ``image_1``, ...) with its grid of image tokens (LLaVA: the vision tower's patch
grid, ``image_size // patch_size`` per side; Qwen2-VL-style: each image's own
``image_grid_thw`` after the ``merge x merge`` patch merger), and maps the prompt's named text
spans to positions in the expanded token sequence. For Qwen2-VL-style models it also stores
the 3-D multimodal rotary positions of the prompt (``position_ids`` [3, T]) as an extra input.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from headprobe.arch import ModelSpec
from headprobe.errors import PromptFormatError
from headprobe.prompt_items import (
    IMAGE_PLACEHOLDER,
    Encoded,
    ImagePrompt,
    chars_to_span,
    mark_chars,
    token_offsets,
    tokenizer_of,
)
from headprobe.types import Span

# Processor outputs that are not extra model inputs.
TEXT_KEYS = frozenset({"input_ids", "attention_mask", "token_type_ids", "offset_mapping",
                       "mm_token_type_ids", "text_replacement_offsets"})


def processor_of(model: Any) -> Any:
    """The processor kept on the bridge by :func:`headprobe.catalogue.load_model`.

    Raises:
        PromptFormatError: the model has none (it is not a vision-language model).
    """
    processor = getattr(model, "headprobe_processor", None)
    if processor is None:
        raise PromptFormatError(
            "this model has no processor, so an ImagePrompt cannot be encoded; load a "
            "vision-language model with headprobe.load_model (e.g. 'tiny:llava')")
    return processor


def image_token_id(model: Any) -> int:
    """The id of the image token, from the model's config (``image_token_id`` or
    ``image_token_index``), else from its processor."""
    config = model.original_model.config
    for attr in ("image_token_id", "image_token_index"):
        value = getattr(config, attr, None)
        if value is not None:
            return int(value)
    value = getattr(processor_of(model), "image_token_id", None)
    if value is None:
        raise PromptFormatError("neither the config nor the processor names an image token")
    return int(value)


def patch_grid(model: Any) -> tuple[int, int] | None:
    """``(rows, cols)`` of the vision tower's patch grid (image_size // patch_size), or None
    when the config does not say (Qwen2-VL-style towers take any image size: their grid is
    per image, see :func:`image_grids`)."""
    vision = getattr(model.original_model.config, "vision_config", None)
    size, patch = getattr(vision, "image_size", None), getattr(vision, "patch_size", None)
    if not size or not patch:
        return None
    rows, cols = (size, size) if isinstance(size, int) else tuple(size)
    prows, pcols = (patch, patch) if isinstance(patch, int) else tuple(patch)
    return rows // prows, cols // pcols


def image_grids(model: Any, output: Any) -> list[tuple[int, int] | None] | None:
    """Per-image ``(rows, cols)`` grids of image tokens from a Qwen2-VL-style processor's
    ``image_grid_thw`` [N_images, 3] (t, h, w in patches): the language model sees
    ``(h // merge) x (w // merge)`` tokens per image after the ``merge x merge`` patch merger
    (``vision_config.spatial_merge_size``); None for an image with ``t != 1`` and for
    processors that do not return ``image_grid_thw`` (LLaVA: :func:`patch_grid`)."""
    thw = output.get("image_grid_thw") if hasattr(output, "get") else None
    if thw is None:
        return None
    vision = getattr(model.original_model.config, "vision_config", None)
    merge = int(getattr(vision, "spatial_merge_size", None) or getattr(
        getattr(processor_of(model), "image_processor", None), "merge_size", 1))
    return [(int(h) // merge, int(w) // merge) if int(t) == 1 else None
            for t, h, w in thw.tolist()]


def encode_image_prompt(model: Any, item: ImagePrompt, spec: ModelSpec) -> Encoded:
    """Encode ``item`` with the model's processor (see the module docstring).

    Each ``<image>`` becomes the processor's image token, wrapped in the model's vision
    start / end tokens when its config names them (Qwen2-VL-style:
    ``<|vision_start|><|image_pad|><|vision_end|>``, as Qwen's chat template writes it).

    Returns:
        An :class:`~headprobe.inputs.Encoded`: ids [T] with the image tokens expanded, spans
        (images with their grid of image tokens: one per patch for LLaVA, the merged
        ``(h // merge, w // merge)`` grid of ``image_grid_thw`` for Qwen2-VL-style models),
        and the processor's extra inputs (``pixel_values``: [N_images, 3, H, W] for LLaVA,
        [sum of patches, C * T * P * P] for Qwen2-VL-style models, with ``image_grid_thw``
        [N_images, 3]; floating ones in ``spec.dtype``). A model with multimodal rotary
        positions (an HF ``get_rope_index``) also gets ``position_ids`` [3, T]: the 3-D
        (time, height, width) positions its own forward would compute, which the batch
        passes instead of 1-D positions (:func:`headprobe.inputs.iter_batches`).

    Raises:
        PromptFormatError: no processor, or processor output that does not match the
            tokenizer's tokens of the text.
    """
    processor = processor_of(model)
    token = _placeholder_text(model, processor)
    pieces = item.text.split(IMAGE_PLACEHOLDER)
    text = token.join(pieces)
    growth = len(token) - len(IMAGE_PLACEHOLDER)
    ends = [len(IMAGE_PLACEHOLDER.join(pieces[:k + 1])) + len(IMAGE_PLACEHOLDER)
            for k in range(len(pieces) - 1)]  # original end of each placeholder

    def moved(position: int) -> int:  # a character position of item.text in text
        return position + growth * sum(end <= position for end in ends)

    try:
        output = processor(text=[text], images=list(item.images), return_tensors="pt")
    except (ValueError, TypeError, IndexError, RuntimeError) as error:
        shapes = [tuple(getattr(image, "shape", ())) or getattr(image, "size", "?")
                  for image in item.images]
        raise PromptFormatError(
            f"the model's processor ({type(processor).__name__}) rejected this image prompt "
            f"(image shapes {shapes}): {error}") from error
    expanded = [int(i) for i in output["input_ids"][0].tolist()]
    image_id = image_token_id(model)
    plain, offsets = token_offsets(tokenizer_of(model), text, add_special_tokens=True)
    position_of, image_runs = _expansion_map(plain, expanded, image_id)
    if len(image_runs) != len(item.images):
        raise PromptFormatError(
            f"the processor gave {len(image_runs)} runs of image tokens for "
            f"{len(item.images)} images")
    grids = image_grids(model, output) or [patch_grid(model)] * len(image_runs)
    spans: dict[str, Span] = {}
    for k, (begin, end) in enumerate(image_runs):
        grid = grids[k] if k < len(grids) else None
        fits = grid is not None and grid[0] * grid[1] == end - begin
        spans["image" if len(image_runs) == 1 else f"image_{k}"] = Span(
            begin, end, grid if fits else None)
    for name, mark in item.spans.items():
        chars = mark_chars(name, mark, item.text)
        chars = (moved(chars[0]), moved(chars[1] - 1) + 1)
        local = chars_to_span(name, chars, offsets)
        spans[name] = Span(position_of[local.start], position_of[local.stop - 1] + 1)
    extra = {key: _cast(value, spec) for key, value in output.items()
             if key not in TEXT_KEYS and isinstance(value, torch.Tensor)}
    positions = _rope_positions(model, output)
    if positions is not None:
        extra["position_ids"] = positions
    return Encoded(torch.tensor(expanded, dtype=torch.long), spans, extra, text=text)


def _placeholder_text(model: Any, processor: Any) -> str:
    """The text that stands for one image: the processor's image token, between the vision
    start and end tokens when the config names both (Qwen2-VL-style models)."""
    token = str(getattr(processor, "image_token", IMAGE_PLACEHOLDER))
    config = model.original_model.config
    start = getattr(config, "vision_start_token_id", None)
    end = getattr(config, "vision_end_token_id", None)
    if start is None or end is None:
        return token
    tokenizer = tokenizer_of(model)
    return f"{tokenizer.convert_ids_to_tokens(int(start))}{token}" \
           f"{tokenizer.convert_ids_to_tokens(int(end))}"


def _rope_positions(model: Any, output: Any) -> torch.Tensor | None:
    """[3, T] multimodal rotary positions (mRoPE: time, height, width) of one processed
    prompt, from the HF model's own ``get_rope_index`` (Qwen2-VL-style models: text tokens
    get equal positions in the three streams, image tokens their grid coordinates); None
    for models without one or outputs without ``image_grid_thw``."""
    thw = output.get("image_grid_thw")
    hf = model.original_model
    rope_index = getattr(hf, "get_rope_index", None) or getattr(
        getattr(hf, "model", None), "get_rope_index", None)
    if thw is None or rope_index is None:
        return None
    ids = output["input_ids"]
    kwargs: dict[str, Any] = {"image_grid_thw": thw, "attention_mask": output.get(
        "attention_mask", torch.ones_like(ids))}
    if "mm_token_type_ids" in inspect.signature(rope_index).parameters:
        types = output.get("mm_token_type_ids")
        kwargs["mm_token_type_ids"] = (types if types is not None
                                       else (ids == image_token_id(model)).long())
    device = next(hf.parameters()).device
    with torch.no_grad():
        positions, _ = rope_index(ids.to(device), **{
            key: value.to(device) for key, value in kwargs.items()})
    return positions[:, 0].long().cpu()  # [3, 1, T] -> [3, T]


def _cast(value: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """Floating extra inputs in the model's dtype (``spec.dtype``)."""
    if not value.is_floating_point():
        return value
    return value.to(getattr(torch, spec.dtype, value.dtype))


def _expansion_map(plain: Sequence[int], expanded: Sequence[int], image_id: int
                   ) -> tuple[list[int], list[tuple[int, int]]]:
    """Positions of ``plain`` (one image token per image) in ``expanded`` (one per patch).

    Returns ``(position_of, image_runs)``: the expanded position of every plain token (an image
    token maps to the first of its run) and the ``[begin, end)`` run of each image; adjacent
    images share a run evenly.
    """
    position_of: list[int] = []
    runs: list[tuple[int, int]] = []
    cursor, index = 0, 0
    while index < len(plain):
        if plain[index] != image_id:
            if cursor >= len(expanded) or expanded[cursor] != plain[index]:
                raise PromptFormatError("the processor's tokens do not match the tokenizer's "
                                        "around the images; spans cannot be mapped")
            position_of.append(cursor)
            cursor, index = cursor + 1, index + 1
            continue
        n_images = 1
        while index + n_images < len(plain) and plain[index + n_images] == image_id:
            n_images += 1
        run = 0
        while cursor + run < len(expanded) and expanded[cursor + run] == image_id:
            run += 1
        if run == 0 or run % n_images:
            raise PromptFormatError(f"{n_images} image placeholder(s) expanded to {run} image "
                                    "tokens, not an equal number per image")
        per_image = run // n_images
        for k in range(n_images):
            position_of.append(cursor + k * per_image)
            runs.append((cursor + k * per_image, cursor + (k + 1) * per_image))
        cursor, index = cursor + run, index + n_images
    if cursor != len(expanded):
        raise PromptFormatError("the processor added tokens the tokenizer did not give; "
                                "spans cannot be mapped")
    return position_of, runs
