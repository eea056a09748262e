"""Where each image token of a prompt looks in its image: patch rows, columns and pixel boxes.

A vision-language model turns an image into a grid of patch tokens (an image span with a
``(rows, cols)`` grid, :mod:`headprobe.images`). :func:`patch_map` gives, for each image token
position of an encoded prompt, its patch's row, column and pixel box in the *original* image
(the coordinates a renderer or an annotation uses), undoing the processor's geometry:

- processors that resize the whole image onto the grid (headprobe's tiny processors,
  Qwen2-VL's ``smart_resize``, CLIP without a centre crop): cell ``(r, c)`` covers
  ``[c W / cols, (c + 1) W / cols) x [r H / rows, (r + 1) H / rows)``;
- CLIP-style processors with a centre crop (``do_center_crop``: resize the shortest edge to
  ``size["shortest_edge"]``, crop ``crop_size``): the cell is mapped through the crop and the
  scale back to the original pixels.

:func:`evidence_patches` marks the patches that show a text box, as Baek et al. 2025 ("How Do
Large Vision-Language Models See Text in Image? Unveiling the Distinctive Role of OCR Heads")
define them: a patch is evidence when ``area(patch ∩ box) / area(box) > threshold`` (0.1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from headprobe.errors import PromptFormatError
from headprobe.types import Box, Span

EVIDENCE_THRESHOLD = 0.1


def image_hw(image: Any) -> tuple[int, int]:
    """``(height, width)`` of an image given as [H, W, C] / [3, H, W] array or tensor, or a
    PIL image."""
    if hasattr(image, "size") and not hasattr(image, "shape"):  # PIL: size = (W, H)
        width, height = image.size
        return int(height), int(width)
    shape = tuple(np.asarray(image).shape) if not isinstance(image, torch.Tensor) else tuple(
        image.shape)
    if len(shape) != 3:
        raise PromptFormatError(f"an image must be [H, W, C] or [C, H, W], got shape {shape}")
    if shape[0] in (1, 3) and shape[-1] not in (1, 3):
        return int(shape[1]), int(shape[2])
    return int(shape[0]), int(shape[1])


def _crop_geometry(processor: Any, height: int, width: int
                   ) -> tuple[float, float, float] | None:
    """``(scale, top, left)`` of a centre-cropping image processor (original pixel =
    (processed pixel + offset) / scale), or None when the processor resizes the whole image."""
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None or not getattr(image_processor, "do_center_crop", False):
        return None
    size = getattr(image_processor, "size", None) or {}
    crop = getattr(image_processor, "crop_size", None) or {}
    shortest = size.get("shortest_edge") if isinstance(size, dict) else None
    if not shortest or not crop:
        return None
    scale = shortest / min(height, width)
    top = (height * scale - crop["height"]) / 2
    left = (width * scale - crop["width"]) / 2
    return scale, top, left


def patch_boxes(grid: tuple[int, int], image_size: tuple[int, int], *,
                processor: Any = None) -> np.ndarray:
    """[rows * cols, 4] float pixel box (x0, y0, x1, y1) of every patch, row-major, in the
    coordinates of an original image of ``image_size`` = (height, width)."""
    rows, cols = grid
    height, width = image_size
    r, c = np.divmod(np.arange(rows * cols), cols)
    crop = _crop_geometry(processor, height, width) if processor is not None else None
    if crop is None:
        cell_h, cell_w = height / rows, width / cols
        return np.stack([c * cell_w, r * cell_h, (c + 1) * cell_w, (r + 1) * cell_h], 1)
    scale, top, left = crop
    crop_size = processor.image_processor.crop_size
    cell_h, cell_w = crop_size["height"] / rows, crop_size["width"] / cols
    boxes = np.stack([c * cell_w + left, r * cell_h + top, (c + 1) * cell_w + left,
                      (r + 1) * cell_h + top], 1) / scale
    return boxes


def patch_map(model: Any, span: Span, image: Any) -> pd.DataFrame:
    """The image tokens of one image span: a frame with one row per token, columns
    ``position`` (absolute prompt position), ``row``, ``col``, ``x0, y0, x1, y1`` (pixel box
    in ``image``'s own coordinates).

    Raises:
        PromptFormatError: the span has no patch grid.
    """
    if span.grid is None:
        raise PromptFormatError("this image span has no patch grid; the model's config does "
                                "not say how its image tokens are laid out")
    boxes = patch_boxes(span.grid, image_hw(image),
                        processor=getattr(model, "headprobe_processor", None))
    rows, cols = np.divmod(np.arange(len(span)), span.grid[1])
    return pd.DataFrame({"position": np.arange(span.start, span.stop), "row": rows,
                         "col": cols, "x0": boxes[:, 0], "y0": boxes[:, 1],
                         "x1": boxes[:, 2], "y1": boxes[:, 3]})


def intersection_areas(boxes: np.ndarray, box: Box | Sequence[float]) -> np.ndarray:
    """[P] area of each patch box ([P, 4]) that lies inside ``box``."""
    x0, y0, x1, y1 = (float(v) for v in box)
    width = np.clip(np.minimum(boxes[:, 2], x1) - np.maximum(boxes[:, 0], x0), 0, None)
    height = np.clip(np.minimum(boxes[:, 3], y1) - np.maximum(boxes[:, 1], y0), 0, None)
    return width * height


def box_overlap(boxes: np.ndarray, box: Box | Sequence[float]) -> np.ndarray:
    """[P] area of each patch box ([P, 4]) inside ``box``, divided by ``box``'s area."""
    x0, y0, x1, y1 = (float(v) for v in box)
    area = (x1 - x0) * (y1 - y0)
    if area <= 0:
        raise ValueError(f"box {tuple(box)} has no area")
    return intersection_areas(boxes, box) / area


def evidence_patches(boxes: np.ndarray, text_boxes: Sequence[Box | Sequence[float]],
                     threshold: float = EVIDENCE_THRESHOLD) -> np.ndarray:
    """[P] bool: patches that show any of ``text_boxes`` (overlap / box area > threshold;
    Baek et al. 2025)."""
    evidence = np.zeros(len(boxes), dtype=bool)
    for box in text_boxes:
        evidence |= box_overlap(boxes, box) > threshold
    return evidence
