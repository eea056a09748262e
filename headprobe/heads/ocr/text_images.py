"""Rendered images of short strings whose every character's pixel box is known.

The OCR model (:mod:`headprobe.heads.ocr.ocr_reader`) is trained and the ``ocr`` scorer is
checked on these images: because the renderer places each character itself, the evidence
patches of every answer token are known exactly (a ground truth for Baek et al. 2025, "How Do
Large Vision-Language Models See Text in Image? Unveiling the Distinctive Role of OCR Heads").

Rendering uses Pillow's built-in scalable font (``ImageFont.load_default(size)``), so no font
package is needed. Each image is square and grey (three equal channels): a flat background,
the string in one line at a random position and size in a darker grey, then Gaussian
pixel noise. Everything random comes from a local ``numpy`` generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from headprobe.types import Box

# Upper-case letters and digits without the pairs a small font makes ambiguous (O/0, I/1).
OCR_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


@dataclass(frozen=True)
class Difficulty:
    """How hard a set of rendered images is.

    Attributes:
        font_sizes: inclusive range of font sizes in pixels.
        noise: inclusive range of the Gaussian noise's standard deviation (grey levels).
        min_contrast: smallest grey-level difference between the (darker) text and the
            (lighter) background.
        lengths: inclusive range of string lengths.
    """

    font_sizes: tuple[int, int] = (12, 20)
    noise: tuple[float, float] = (0.0, 20.0)
    min_contrast: int = 90
    lengths: tuple[int, int] = (3, 5)


DIFFICULTIES: dict[str, Difficulty] = {
    "train": Difficulty(),
    "small": Difficulty(font_sizes=(9, 11)),
    "noisy": Difficulty(noise=(35.0, 50.0), min_contrast=60),
}


@dataclass(frozen=True)
class RenderedText:
    """One rendered string.

    Attributes:
        image: [S, S, 3] uint8 pixels.
        text: the string drawn.
        char_boxes: one pixel box (x0, y0, x1, y1), exclusive ends, per character: the ink
            of the character as Pillow draws it at its place in the string.
        box: the box around all characters.
        font_size, noise: the rendering's settings.
    """

    image: np.ndarray
    text: str
    char_boxes: tuple[Box, ...]
    box: Box
    font_size: int
    noise: float


@lru_cache(maxsize=64)
def _font(size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def render_text(text: str, *, image_size: int = 64, font_size: int = 16,
                position: tuple[int, int] | None = None, background: int = 230,
                foreground: int = 20, noise: float = 0.0,
                rng: np.random.Generator | None = None) -> RenderedText:
    """Draw ``text`` on a square grey image and return it with each character's box.

    Args:
        text: the string, one line, at least one non-space character.
        image_size: side S of the image in pixels.
        font_size: size of Pillow's built-in font.
        position: top-left corner (x, y) of the string's ink box; None: random (needs ``rng``)
            among the places where the whole string fits.
        background, foreground: grey levels of the background and the text.
        noise: standard deviation of Gaussian noise added to every pixel (needs ``rng`` when
            above 0).

    Raises:
        ValueError: empty text, or text that does not fit the image at this font size.
    """
    from PIL import Image, ImageDraw

    if not text.strip():
        raise ValueError("render_text needs a string with at least one visible character")
    font = _font(font_size)
    canvas = Image.new("L", (image_size, image_size), color=int(background))
    draw = ImageDraw.Draw(canvas)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    width, height = right - left, bottom - top
    if width > image_size or height > image_size:
        raise ValueError(f"{text!r} at font size {font_size} is {width} x {height} pixels and "
                         f"does not fit a {image_size} x {image_size} image")
    if position is None:
        if rng is None:
            raise ValueError("a random position needs rng")
        position = (int(rng.integers(0, image_size - width + 1)),
                    int(rng.integers(0, image_size - height + 1)))
    origin = (position[0] - left, position[1] - top)
    draw.text(origin, text, fill=int(foreground), font=font)
    boxes = []
    for index, char in enumerate(text):
        x = origin[0] + font.getlength(text[:index])
        x0, y0, x1, y1 = draw.textbbox((x, origin[1]), char, font=font)
        boxes.append((int(np.floor(x0)), int(y0), int(np.ceil(x1)), int(y1)))
    pixels = np.asarray(canvas, dtype=np.float32)
    if noise > 0:
        if rng is None:
            raise ValueError("noise needs rng")
        pixels = pixels + rng.normal(0.0, noise, pixels.shape)
    image = np.repeat(np.clip(pixels, 0, 255).round().astype(np.uint8)[..., None], 3, axis=2)
    visible = [b for b, c in zip(boxes, text, strict=True) if not c.isspace()]
    whole = (min(b[0] for b in visible), min(b[1] for b in visible),
             max(b[2] for b in visible), max(b[3] for b in visible))
    return RenderedText(image, text, tuple(boxes), whole, font_size, float(noise))


def random_string(rng: np.random.Generator, lengths: tuple[int, int] = (3, 5),
                  alphabet: str = OCR_ALPHABET) -> str:
    """A random string of ``alphabet`` characters, its length uniform in ``lengths``."""
    length = int(rng.integers(lengths[0], lengths[1] + 1))
    return "".join(alphabet[int(i)] for i in rng.integers(0, len(alphabet), length))


def render_random(rng: np.random.Generator, difficulty: Difficulty | str = "train", *,
                  image_size: int = 64, text: str | None = None) -> RenderedText:
    """A random string (or ``text``) rendered with random settings drawn from ``difficulty``
    (a :class:`Difficulty` or a name in :data:`DIFFICULTIES`): font size, position, grey
    levels at least ``min_contrast`` apart, and noise. A font too large for the string is
    stepped down until it fits."""
    if isinstance(difficulty, str):
        if difficulty not in DIFFICULTIES:
            raise ValueError(f"unknown difficulty {difficulty!r}; choose one of "
                             f"{sorted(DIFFICULTIES)}")
        difficulty = DIFFICULTIES[difficulty]
    text = text if text is not None else random_string(rng, difficulty.lengths)
    size = int(rng.integers(difficulty.font_sizes[0], difficulty.font_sizes[1] + 1))
    background = int(rng.integers(difficulty.min_contrast + 64, 256))
    foreground = int(rng.integers(0, background - difficulty.min_contrast + 1))
    noise = float(rng.uniform(*difficulty.noise))
    while True:
        try:
            return render_text(text, image_size=image_size, font_size=size,
                               background=background, foreground=foreground, noise=noise,
                               rng=rng)
        except ValueError:
            if size <= 6:
                raise
            size -= 1


def render_many(n: int, seed: int, difficulty: Difficulty | str = "train", *,
                image_size: int = 64, texts: Sequence[str] | None = None
                ) -> list[RenderedText]:
    """``n`` images from one seeded generator (``texts``: the strings, else random ones)."""
    rng = np.random.default_rng(seed)
    if texts is not None and len(texts) != n:
        raise ValueError(f"{len(texts)} texts for {n} images")
    return [render_random(rng, difficulty, image_size=image_size,
                          text=None if texts is None else texts[i]) for i in range(n)]
