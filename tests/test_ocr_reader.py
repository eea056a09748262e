"""The project's OCR model: its training pieces, saving and loading, and the shipped weights'
reading accuracy on held-out images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from headprobe.catalogue import available_models, load_model
from headprobe.heads.ocr.ocr_reader import (
    OCRModelSize,
    TrainSettings,
    load_ocr_model,
    patch_labels,
    reading_accuracy,
    train_ocr_model,
)
from headprobe.heads.ocr.text_images import OCR_ALPHABET, render_many, render_text
from headprobe.tasks import get_task

SMALL = OCRModelSize(vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=32,
                     text_layers=1, text_heads=2, text_kv_heads=1, head_dim=16)


def test_patch_labels_name_the_character_on_each_patch():
    # "AB" at x 8.., y 8..: 8-pixel patches, so the labels lie in rows 1-2
    sample = render_text("AB", image_size=64, font_size=16, position=(8, 8))
    labels = patch_labels(sample, (8, 8)).reshape(8, 8)
    letters = {OCR_ALPHABET[v - 1] for v in labels[labels > 0].tolist()}
    assert letters == {"A", "B"}
    assert (labels[3:] == 0).all() and (labels[:, 5:] == 0).all()
    a_cols = (labels == 1 + OCR_ALPHABET.index("A")).nonzero()[:, 1]
    b_cols = (labels == 1 + OCR_ALPHABET.index("B")).nonzero()[:, 1]
    assert a_cols.max() <= b_cols.min()  # A left of B


def test_train_save_and_load_round_trip(tmp_path):
    settings = TrainSettings(steps=3, batch_size=4, warmup=1, size=SMALL)
    record = train_ocr_model(tmp_path, settings, progress=False, log_every=2)
    assert [entry["step"] for entry in record["log"]] == [2, 3]
    assert all(np.isfinite(entry["loss"]) for entry in record["log"])
    saved = json.loads((tmp_path / "training.json").read_text())
    assert saved["settings"]["steps"] == 3
    model, _, processor = load_ocr_model(tmp_path)
    again, _, _ = load_ocr_model(tmp_path)
    sample = render_many(2, seed=5)
    batch = processor(text=["<image>\nRead the text:"] * 2, images=[s.image for s in sample])
    with torch.no_grad():
        first = model(**batch).logits
        second = again(**batch).logits
    assert torch.equal(first, second)
    with pytest.raises(FileNotFoundError, match="train_ocr_model"):
        load_ocr_model(tmp_path / "missing")


def test_shipped_model_reads_held_out_images():
    """The shipped weights (data/ocr_model) read fresh images of the training distribution
    (seeds the training stream never drew); through the bridge, the ocr_read task's judge
    agrees with the plain HF reading."""
    rows = {row["name"]: row for row in available_models()}
    assert rows["ocr-reader"]["installed"]
    hf_model, tokenizer, processor = load_ocr_model()
    samples = render_many(40, seed=424242)
    result = reading_accuracy(hf_model, tokenizer, processor, samples)
    assert result["exact_match"] >= 0.9, result["readings"]
    model, spec = load_model("ocr-reader")
    assert spec.facts.vision_language and spec.n_layers == 4 and spec.n_heads == 8
    from headprobe.experiments.judging import judge_task

    task = get_task("ocr_read", n=16, seed=424243)
    judged = judge_task(model, task, batch_size=8)
    plain = reading_accuracy(hf_model, tokenizer, processor,
                             render_many(16, seed=424243))["readings"]
    assert judged.tolist() == [r == item.answer for r, item in zip(plain, task.items,
                                                                    strict=True)]
