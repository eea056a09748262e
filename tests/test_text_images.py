"""Rendered strings: every character's box holds that character's ink, and nothing else."""

from __future__ import annotations

import numpy as np
import pytest

from headprobe.heads.ocr.text_images import (
    DIFFICULTIES,
    OCR_ALPHABET,
    render_many,
    render_random,
    render_text,
)


def test_char_boxes_hold_the_ink_of_each_character():
    """Rendering each character alone at its box's place lights exactly the pixels of the
    whole string inside that box (no noise, fixed grey levels)."""
    rendered = render_text("K7QX", image_size=64, font_size=16, position=(5, 20),
                           background=255, foreground=0)
    ink = rendered.image[..., 0] < 128
    inside = np.zeros_like(ink)
    for x0, y0, x1, y1 in rendered.char_boxes:
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
        assert ink[y0:y1, x0:x1].any()  # the box holds ink
        inside[y0:y1, x0:x1] = True
    assert not (ink & ~inside).any()  # no ink outside the character boxes
    x0s = [b[0] for b in rendered.char_boxes]
    assert x0s == sorted(x0s)  # left to right
    assert rendered.box == (min(x0s), min(b[1] for b in rendered.char_boxes),
                            max(b[2] for b in rendered.char_boxes),
                            max(b[3] for b in rendered.char_boxes))
    assert rendered.box[0] == 5 and rendered.box[1] == 20  # the ink starts at the position


def test_random_renderings_are_reproducible_and_fit():
    first = render_many(20, seed=3)
    again = render_many(20, seed=3)
    other = render_many(20, seed=4)
    assert [r.text for r in first] == [r.text for r in again]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(first, again, strict=True))
    assert [r.text for r in first] != [r.text for r in other]
    for r in first:
        assert r.image.shape == (64, 64, 3) and r.image.dtype == np.uint8
        assert set(r.text) <= set(OCR_ALPHABET) and 3 <= len(r.text) <= 5
        assert len(r.char_boxes) == len(r.text)
        hi = DIFFICULTIES["train"].font_sizes[1]
        assert 6 <= r.font_size <= hi  # stepped down only when the string would not fit
        lo_noise, hi_noise = DIFFICULTIES["train"].noise
        assert lo_noise <= r.noise <= hi_noise


def test_difficulties_and_bad_input():
    rng = np.random.default_rng(0)
    assert all(render_random(rng, "small").font_size in (9, 10, 11) for _ in range(10))
    assert all(render_random(rng, "noisy").noise >= 35 for _ in range(10))
    with pytest.raises(ValueError, match="unknown difficulty"):
        render_random(rng, "impossible")
    with pytest.raises(ValueError, match="does not fit"):
        render_text("ABCDEFGHJK", image_size=32, font_size=20, position=(0, 0))
    with pytest.raises(ValueError, match="visible"):
        render_text("   ", position=(0, 0))
    with pytest.raises(ValueError, match="rng"):
        render_text("AB")
