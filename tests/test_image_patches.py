"""Patch geometry: pixel boxes of image tokens and the evidence patches of a text box."""

from __future__ import annotations

import numpy as np
import pytest

from headprobe.errors import PromptFormatError
from headprobe.image_patches import (
    box_overlap,
    evidence_patches,
    image_hw,
    patch_boxes,
    patch_map,
)
from headprobe.inputs import ImagePrompt, encode_prompts
from headprobe.tiny import tiny_model


def test_patch_boxes_tile_the_image_row_major():
    boxes = patch_boxes((2, 3), (20, 30))
    assert boxes.shape == (6, 4)
    assert boxes[0].tolist() == [0, 0, 10, 10]
    assert boxes[2].tolist() == [20, 0, 30, 10]  # row 0, col 2
    assert boxes[3].tolist() == [0, 10, 10, 20]  # row 1, col 0
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sum()
    assert area == 20 * 30


def test_centre_crop_geometry_maps_back_to_the_original_image():
    class ImageProcessor:
        def __init__(self) -> None:
            self.do_center_crop = True
            self.size = {"shortest_edge": 32}
            self.crop_size = {"height": 32, "width": 32}

    class Processor:
        image_processor = ImageProcessor()

    # a 64 x 128 image: scaled by 1/2 to 32 x 64, then the middle 32 columns are kept,
    # i.e. original columns 32..96
    boxes = patch_boxes((2, 2), (64, 128), processor=Processor())
    assert boxes[0].tolist() == [32, 0, 64, 32]
    assert boxes[3].tolist() == [64, 32, 96, 64]


def test_evidence_uses_overlap_over_box_area():
    boxes = patch_boxes((4, 4), (32, 32))  # 8-pixel patches
    # a 10 x 8 box at x 6..16, y 0..8: 2/10 of it lies in patch 0, 8/10 in patch 1
    overlap = box_overlap(boxes, (6, 0, 16, 8))
    assert overlap[0] == pytest.approx(0.2) and overlap[1] == pytest.approx(0.8)
    assert overlap[2:].sum() == 0
    assert evidence_patches(boxes, [(6, 0, 16, 8)]).nonzero()[0].tolist() == [0, 1]
    # at threshold 0.25 the 0.2 sliver is not evidence
    assert evidence_patches(boxes, [(6, 0, 16, 8)], 0.25).nonzero()[0].tolist() == [1]
    with pytest.raises(ValueError, match="no area"):
        box_overlap(boxes, (5, 5, 5, 9))


def test_image_hw_reads_every_layout():
    assert image_hw(np.zeros((20, 30, 3))) == (20, 30)
    assert image_hw(np.zeros((3, 20, 30))) == (20, 30)
    with pytest.raises(PromptFormatError, match="must be"):
        image_hw(np.zeros((20, 30)))


def test_patch_map_of_an_encoded_llava_prompt():
    model, spec = tiny_model("llava")
    image = np.zeros((64, 64, 3), dtype=np.uint8)  # resized to 32 x 32 by the processor
    (encoded,) = encode_prompts(model, [ImagePrompt("<image> hi", [image])], spec)
    table = patch_map(model, encoded.spans["image"], image)
    assert len(table) == 16
    assert table["position"].tolist() == list(encoded.spans["image"].positions())
    last = table.iloc[-1]
    assert (last.row, last.col) == (3, 3)
    assert [last.x0, last.y0, last.x1, last.y1] == [48, 48, 64, 64]  # original pixels
