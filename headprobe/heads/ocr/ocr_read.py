"""``ocr_read``: read the string rendered in an image (the OCR model's task).

Each item is an :class:`~headprobe.inputs.ImagePrompt` (``<image>\\nRead the text:`` by
default, the prompt the project's OCR model ``ocr-reader`` was trained on) holding one image
from :mod:`headprobe.heads.ocr.text_images`; the answer is the string. The item's ``meta`` carries
the renderer's ground truth that the ``ocr`` scorer needs: ``char_boxes`` (one pixel box per
character) and ``box`` (around the whole string), plus the rendering's ``font_size``,
``noise`` and ``difficulty``.

Judge: ``function``, exact match of the greedy reading (stripped) with the string, so the
ablation harness (:func:`headprobe.experiments.ablation_experiment`) reports reading accuracy
with heads masked against random heads.
"""

from __future__ import annotations

from typing import Any

from headprobe.errors import TaskError
from headprobe.heads.ocr.ocr_reader import PROMPT
from headprobe.heads.ocr.text_images import DIFFICULTIES, RenderedText, render_many
from headprobe.inputs import ImagePrompt
from headprobe.tasks.base import Task, TaskItem


def exact_reading(text: str, item: TaskItem) -> bool:
    """The judge: the continuation, stripped, equals the item's string."""
    return text.strip() == item.answer.strip()


def item_from_rendering(rendered: RenderedText, prompt: str = PROMPT,
                        difficulty: str = "") -> TaskItem:
    """The task item of one rendered image (its ground-truth boxes in ``meta``)."""
    return TaskItem(prompt=ImagePrompt(prompt, [rendered.image]), answer=rendered.text,
                    meta={"char_boxes": [list(b) for b in rendered.char_boxes],
                          "box": list(rendered.box), "font_size": rendered.font_size,
                          "noise": rendered.noise, "difficulty": difficulty})


def make_task(n: int = 64, seed: int = 0, difficulty: str = "train", image_size: int = 64,
              prompt: str = PROMPT, max_new_tokens: int = 8, **_: Any) -> Task:
    """``n`` rendered strings of ``difficulty`` (``train``, ``small``: 9-11 px text,
    ``noisy``: strong noise and lower contrast) from ``seed``.

    Raises:
        TaskError: bad ``n``, an unknown difficulty, or a prompt without ``<image>``.
    """
    if n < 1:
        raise TaskError(f"ocr_read needs n >= 1, got {n}")
    if difficulty not in DIFFICULTIES:
        raise TaskError(f"ocr_read: unknown difficulty {difficulty!r}; choose one of "
                        f"{sorted(DIFFICULTIES)}")
    if "<image>" not in prompt:
        raise TaskError("ocr_read's prompt must hold an <image> placeholder")
    items = [item_from_rendering(r, prompt, difficulty)
             for r in render_many(n, seed, difficulty, image_size=image_size)]
    return Task(name="ocr_read", items=items, judge="function", judge_fn=exact_reading,
                max_new_tokens=max_new_tokens,
                description=f"read {n} rendered strings ({difficulty}, seed {seed})",
                meta={"seed": seed, "difficulty": difficulty, "image_size": image_size})
