"""OCR-head views and comparisons (Baek et al. 2025, "How Do Large Vision-Language Models See
Text in Image? Unveiling the Distinctive Role of OCR Heads").

- :func:`patch_attention`: one head's attention over an image's patches at every step while
  the model reads it (KV-cached decoding with the decode-time observer; one attention row per
  step, never a T x T matrix), with the reading.
- :func:`evidence_figure` / :func:`patch_attention_figure`: the image with its evidence patches
  and character boxes; a head's attention over the patch grid per emitted token (plotly
  figures, returned, never shown).
- :func:`compare_with_retrieval`: how an ``ocr`` table and a ``retrieval`` table of the same
  model differ: top-k overlap, rank and linear correlation, and sparsity (the paper finds OCR
  heads less sparse than retrieval heads and distinct from them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from headprobe.headtable import HeadTable
from headprobe.image_patches import EVIDENCE_THRESHOLD, evidence_patches, image_hw, patch_boxes
from headprobe.inputs import ImagePrompt, encode_prompts
from headprobe.interventions import normalize_heads
from headprobe.models import describe_model
from headprobe.runtime.decode import generate
from headprobe.runtime.observer import AttentionObserver, AttentionRows
from headprobe.tasks.base import TaskItem
from headprobe.types import Head


@dataclass
class PatchAttention:
    """A head's attention over the patch grid while the model reads one image.

    Attributes:
        reading: the generated text (up to EOS).
        tokens: the generated token strings, one per step.
        weights: [S, rows, cols] attention of the head's query at each step over the image
            patches (S = number of steps; rows sum to the image's share of the attention).
        sink: [S] attention on the first prompt token (the sink).
    """

    reading: str
    tokens: list[str]
    weights: np.ndarray
    sink: np.ndarray


def patch_attention(model: Any, item: TaskItem | ImagePrompt, head: Head, *,
                    max_new_tokens: int = 8, hooks: Any = ()) -> PatchAttention:
    """Greedy reading of one image prompt with ``head``'s attention over its patches recorded
    at every step (step 0: the last prompt token's query, which emits the first token).

    ``hooks``: interventions active during the reading (e.g. masked heads).
    """
    prompt = item.prompt if isinstance(item, TaskItem) else item
    spec = describe_model(model)
    layer, query_head = normalize_heads(spec, [head])[0]
    (encoded,) = encode_prompts(model, [prompt], spec)
    span = encoded.spans["image"]
    if span.grid is None:
        raise ValueError("the image span has no patch grid")
    rows_out: list[np.ndarray] = []
    sinks: list[float] = []

    def record(rows: AttentionRows) -> None:
        if rows.layer != layer or not bool(rows.live[0]):
            return
        weights = rows.weights[0, query_head].float().cpu()
        positions = rows.key_positions[0].cpu()
        grid = np.zeros(len(span))
        for column, position in enumerate(positions.tolist()):
            if span.start <= position < span.stop:
                grid[position - span.start] = float(weights[column])
            if position == 0:
                sinks.append(float(weights[column]))
        rows_out.append(grid.reshape(span.grid))

    eos = getattr(model.tokenizer, "eos_token_id", None)
    generation = generate(model, [encoded], max_new_tokens=max_new_tokens, batch_size=1,
                          stop_at_eos=eos is not None, eos_token_id=eos, hooks=hooks,
                          observers=[AttentionObserver(record, include_prefill=True)])
    ids = generation.tokens[0, :int(generation.lengths[0])].tolist()
    if eos is not None and eos in ids:
        ids = ids[:ids.index(eos)]
    steps = len(ids)
    return PatchAttention(model.tokenizer.decode(ids, skip_special_tokens=True),
                          [model.tokenizer.decode([i]) for i in ids],
                          np.stack(rows_out[:steps]) if steps else np.zeros((0, *span.grid)),
                          np.array(sinks[:steps]))


def evidence_figure(model: Any, item: TaskItem, *, threshold: float = EVIDENCE_THRESHOLD,
                    title: str | None = None) -> Any:
    """The item's image with its patch grid, the evidence patches of its text box (red) and
    the character boxes (green); a plotly figure."""
    import plotly.express as px

    image = np.asarray(item.prompt.images[0])
    spec = describe_model(model)
    (encoded,) = encode_prompts(model, [item.prompt], spec)
    grid = encoded.spans["image"].grid
    boxes = patch_boxes(grid, image_hw(image),
                        processor=getattr(model, "headprobe_processor", None))
    evidence = evidence_patches(boxes, [item.meta["box"]], threshold)
    figure = px.imshow(image, title=title or f"{item.answer!r}: evidence patches (red), "
                       "character boxes (green)")
    for (x0, y0, x1, y1), is_evidence in zip(boxes, evidence, strict=True):
        figure.add_shape(type="rect", x0=x0 - 0.5, y0=y0 - 0.5, x1=x1 - 0.5, y1=y1 - 0.5,
                         line={"color": "red" if is_evidence else "rgba(0,0,255,0.25)",
                               "width": 2 if is_evidence else 1})
    for x0, y0, x1, y1 in item.meta.get("char_boxes", []):
        figure.add_shape(type="rect", x0=x0 - 0.5, y0=y0 - 0.5, x1=x1 - 0.5, y1=y1 - 0.5,
                         line={"color": "lime", "width": 1})
    return figure


def patch_attention_figure(attention: PatchAttention, title: str = "") -> Any:
    """One panel per emitted token: the head's attention over the patch grid."""
    import plotly.express as px

    labels = [f"{k}: {token!r}" for k, token in enumerate(attention.tokens)]
    figure = px.imshow(attention.weights, facet_col=0, color_continuous_scale="Viridis",
                       title=title or f"attention over the patches while reading "
                       f"{attention.reading!r}")
    for index, label in enumerate(labels):
        figure.layout.annotations[index].text = label
    return figure


def _gini(values: np.ndarray) -> float:
    """Gini coefficient of non-negative values (0: all equal, near 1: one holds all)."""
    values = np.sort(np.clip(values, 0, None))
    total = values.sum()
    if total == 0:
        return 0.0
    n = len(values)
    return float((2 * np.arange(1, n + 1) - n - 1) @ values / (n * total))


def compare_with_retrieval(ocr: HeadTable, retrieval: HeadTable, *, k: int = 10,
                           threshold: float = 0.1) -> dict[str, Any]:
    """How OCR heads and retrieval heads of one model differ.

    Returns ``top_k_overlap`` (heads in both top-k lists, and their names), ``jaccard``,
    ``spearman`` / ``pearson`` over all heads, and per table the share of heads above
    ``threshold``, the share with any credit (score > 0) and the Gini coefficient of the
    scores (higher: sparser).
    """
    merged = pd.merge(ocr.data[["layer", "head", "score"]],
                      retrieval.data[["layer", "head", "score"]], on=["layer", "head"],
                      suffixes=("_ocr", "_retrieval"))
    top_ocr = set(map(tuple, ocr.top(k)[["layer", "head"]].to_numpy().tolist()))
    top_retrieval = set(map(tuple, retrieval.top(k)[["layer", "head"]].to_numpy().tolist()))
    both = sorted(top_ocr & top_retrieval)
    out: dict[str, Any] = {
        "k": k,
        "top_k_overlap": len(both),
        "shared_heads": [f"L{layer}H{head}" for layer, head in both],
        "jaccard": len(both) / len(top_ocr | top_retrieval),
        "spearman": float(stats.spearmanr(merged["score_ocr"], merged["score_retrieval"])[0]),
        "pearson": float(stats.pearsonr(merged["score_ocr"], merged["score_retrieval"])[0]),
    }
    for name in ("ocr", "retrieval"):
        scores = merged[f"score_{name}"].to_numpy()
        out[name] = {"share_above_threshold": float((scores > threshold).mean()),
                     "share_nonzero": float((scores > 0).mean()), "gini": _gini(scores),
                     "max": float(scores.max())}
    return out
