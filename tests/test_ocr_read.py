"""The ocr_read and bracket_copy tasks: prompts, ground truth, judges, bad options."""

from __future__ import annotations

import numpy as np
import pytest

from headprobe.errors import TaskError
from headprobe.heads.ocr.ocr_read import exact_reading
from headprobe.heads.ocr.text_images import render_text
from headprobe.inputs import ImagePrompt, Text
from headprobe.tasks import get_task


def test_ocr_read_items_carry_the_renderer_ground_truth():
    task = get_task("ocr_read", n=5, seed=7, difficulty="small")
    again = get_task("ocr_read", n=5, seed=7, difficulty="small")
    assert task.judge == "function" and len(task) == 5
    for item, twin in zip(task.items, again.items, strict=True):
        assert isinstance(item.prompt, ImagePrompt) and "<image>" in item.prompt.text
        assert np.array_equal(item.prompt.images[0], twin.prompt.images[0])
        assert len(item.meta["char_boxes"]) == len(item.answer)
        assert item.meta["font_size"] <= 11 and item.meta["difficulty"] == "small"
        # the boxes are the renderer's: re-rendering at the same place gives the same boxes
        x0, y0 = item.meta["box"][:2]
        again_boxes = render_text(item.answer, font_size=item.meta["font_size"],
                                  position=(x0, y0)).char_boxes
        assert [list(b) for b in again_boxes] == item.meta["char_boxes"]
    assert exact_reading(" AB3 ", task.items[0].__class__(prompt="x", answer="AB3"))
    assert not exact_reading("AB", task.items[0].__class__(prompt="x", answer="AB3"))


def test_bracket_copy_marks_the_needle():
    task = get_task("bracket_copy", n=4, seed=1)
    for item in task.items:
        assert isinstance(item.prompt, Text)
        start, stop = item.prompt.spans["needle"]
        assert item.prompt.text[start:stop] == item.answer
        assert item.prompt.text[start - 1] == "[" and item.prompt.text[stop] == "]"
        assert item.prompt.text.endswith("\nRead the text:")


def test_bad_options():
    with pytest.raises(TaskError, match="difficulty"):
        get_task("ocr_read", n=2, difficulty="blurry")
    with pytest.raises(TaskError, match="<image>"):
        get_task("ocr_read", n=2, prompt="Read:")
    with pytest.raises(TaskError, match="n >= 1"):
        get_task("bracket_copy", n=0)
