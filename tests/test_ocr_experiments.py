"""OCR-head views: a head's attention over the patches (checked against HF's own attention
matrices) and the comparison of OCR and retrieval tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from headprobe.heads.ocr.figures import (
    compare_with_retrieval,
    evidence_figure,
    patch_attention,
    patch_attention_figure,
)
from headprobe.headtable import HeadTable
from headprobe.tasks import get_task
from headprobe.tiny import tiny_hf_model, tiny_model


def test_patch_attention_equals_hf_attention_rows():
    model, _ = tiny_model("llava")
    hf, _, processor = tiny_hf_model("llava")
    item = get_task("ocr_read", n=1, image_size=32, prompt="<image> read:").items[0]
    view = patch_attention(model, item, (1, 2), max_new_tokens=3)
    assert view.weights.shape[1:] == (4, 4) and len(view.tokens) == view.weights.shape[0]
    batch = processor(text=[item.prompt.text], images=list(item.prompt.images),
                      return_tensors="pt")
    ids = batch["input_ids"]
    steps = view.weights.shape[0]
    generated = model.tokenizer(view.reading, add_special_tokens=False)["input_ids"]
    full_ids = torch.cat([ids, torch.tensor([generated[:steps - 1]], dtype=torch.long)], 1)
    with torch.no_grad():
        out = hf(input_ids=full_ids, pixel_values=batch["pixel_values"],
                 output_attentions=True)
    image = (ids[0] == hf.config.image_token_index).nonzero().flatten()
    for step in range(steps):
        row = out.attentions[1][0, 2, ids.shape[1] - 1 + step]
        assert np.allclose(view.weights[step].reshape(-1), row[image].numpy(), atol=1e-5)
        assert view.sink[step] == pytest.approx(float(row[0]), abs=1e-5)
    assert len(evidence_figure(model, item).layout.shapes) == 16 + len(item.answer)
    assert len(patch_attention_figure(view).data) >= 1


def _table(scores: np.ndarray, scorer: str) -> HeadTable:
    layers, heads = np.divmod(np.arange(scores.size), scores.shape[1])
    frame = pd.DataFrame({"layer": layers, "head": heads, "kv_head": heads,
                          "score": scores.reshape(-1)})
    return HeadTable(frame, {"scorer": scorer, "model": "m"})


def test_compare_with_retrieval_counts_overlap_and_sparsity():
    ocr = _table(np.array([[0.5, 0.4, 0.3, 0.2], [0.2, 0.1, 0.05, 0.0]]), "ocr")
    retrieval = _table(np.array([[0.9, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.6]]), "retrieval")
    out = compare_with_retrieval(ocr, retrieval, k=2)
    assert out["top_k_overlap"] == 1 and out["shared_heads"] == ["L0H0"]
    assert out["jaccard"] == pytest.approx(1 / 3)
    assert out["ocr"]["share_nonzero"] == pytest.approx(7 / 8)
    assert out["retrieval"]["share_nonzero"] == pytest.approx(2 / 8)
    assert out["retrieval"]["gini"] > out["ocr"]["gini"]  # retrieval scores are sparser
    assert -1 <= out["spearman"] <= 1
