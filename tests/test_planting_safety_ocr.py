"""Planted safety (Ships) and OCR heads (issue 19): each does what it should, checked on the
models' own attention and logits (never through a scorer), and its scorer ranks it first."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch

from headprobe import registry
from headprobe.errors import PlantingError
from headprobe.groundtruth import GroundTruthCase
from headprobe.heads.ocr.ground_truth import cases as ocr_cases
from headprobe.heads.ocr.plant import DEFAULT_HEAD, colour_items, planted_llava_hf
from headprobe.heads.safety.ground_truth import (
    ANSWER_HEAD,
    COMPLY,
    MARKER,
    REFUSAL,
    SHIPS_HEAD,
    build_safety_model,
    requests,
)
from headprobe.heads.safety.ground_truth import ships_cases as safety_cases
from headprobe.planting import KINDS, planted_model
from headprobe.types import Head


@contextlib.contextmanager
def zeroed(weight: torch.Tensor, index: tuple) -> Iterator[None]:
    """``weight[index]`` set to 0 inside the block, restored after (even on error)."""
    saved = weight[index].clone()
    with torch.no_grad():
        weight[index] = 0.0
    try:
        yield
    finally:
        with torch.no_grad():
            weight[index] = saved


# ------------------------------------------------------------------------------ safety (Ships)


@pytest.fixture(scope="module", params=KINDS)
def safety(request):
    return build_safety_model(request.param)


def _replies(planted, prompts):
    """The greedy next token of each prompt (one batch: the prompts have equal length) and
    the ships head's attention rows at the last position [N, T], from the bridge's own
    pattern hook; also the token ids [N, T]."""
    tokenizer = planted.tokenizer
    ids = torch.tensor([tokenizer(prompt)["input_ids"] for prompt in prompts])
    name = f"blocks.{SHIPS_HEAD.layer}.attn.hook_pattern"
    with torch.no_grad():
        logits, cache = planted.bridge.run_with_cache(ids, names_filter=[name])
    replies = "".join(tokenizer.decode([int(t)]) for t in logits[:, -1].argmax(-1))
    return replies, ids, cache[name][:, SHIPS_HEAD.head, -1]


def _ships_rows(planted):
    d_head = planted.spec.d_head
    return slice(SHIPS_HEAD.head * d_head, (SHIPS_HEAD.head + 1) * d_head)


def test_ships_head_attends_to_the_marker_and_decides_refusal(safety):
    harmful, benign = requests(6, seed=3), requests(6, seed=4, harmful=False)
    replies, ids, rows = _replies(safety, harmful)
    assert replies == REFUSAL * 6
    on_marker = (rows * (ids == safety.token_id(MARKER))).sum(-1)
    assert bool((on_marker > 0.99).all()), on_marker
    assert _replies(safety, benign)[0] == COMPLY * 6
    attn = safety.attention(SHIPS_HEAD.layer)
    # undifferentiated attention (zero query: every logit 0) and removal both make it comply
    with zeroed(attn.q_proj.weight, (_ships_rows(safety),)):
        replies, ids, rows = _replies(safety, harmful)
        assert replies == COMPLY * 6
        assert torch.allclose(rows, torch.full_like(rows, 1.0 / ids.shape[1]), atol=1e-5)
    with zeroed(attn.o_proj.weight, (slice(None), _ships_rows(safety))):
        assert _replies(safety, harmful)[0] == COMPLY * 6
    # the answer head alone cannot flip it back: removing it keeps the refusal
    answer_rows = slice(ANSWER_HEAD.head * safety.spec.d_head,
                        (ANSWER_HEAD.head + 1) * safety.spec.d_head)
    with zeroed(attn.o_proj.weight, (slice(None), answer_rows)):
        assert _replies(safety, harmful)[0] == REFUSAL * 6


def test_ships_ranks_the_planted_head_first():
    for case in safety_cases():
        assert isinstance(case, GroundTruthCase) and case.known == frozenset({SHIPS_HEAD})
        bridge = case.build()
        table = registry.scan(bridge, case.scorer, case.prompts(bridge), n=case.n,
                              progress=False, **case.params)
        ranked = table.data.sort_values(case.column, ascending=False)
        best = ranked.iloc[0]
        assert Head(int(best["layer"]), int(best["head"])) == SHIPS_HEAD, case.model
        assert best[case.column] >= 10 * case.threshold  # measured: 5.19 (llama), 5.20 (gemma)
        assert ranked[case.column].iloc[1] < 1e-3  # measured: < 5e-10
        answer = table.data[(table.data["layer"] == ANSWER_HEAD.layer)
                            & (table.data["head"] == ANSWER_HEAD.head)][case.column]
        assert float(answer.iloc[0]) < 1e-6  # it attends uniformly already


def test_ships_planter_is_registered():
    from headprobe.planting import list_roles

    assert "ships" in list_roles()
    planted = planted_model("llama", {(1, 2): "ships", (1, 6): "answer"},
                            role_options={"answer": {"token": COMPLY, "gain": 0.5}})
    assert planted.known("ships") == frozenset({Head(1, 2)})
    assert "harmful" in planted.allocator.names


# ------------------------------------------------------------------------------ OCR


@pytest.fixture(scope="module")
def llava():
    return planted_llava_hf()


def _read(llava, items):
    """Greedy first token of each item and the planted head's attention row at the last
    prompt position (the unwrapped HF model: no bridge, no hooks)."""
    hf, tokenizer, processor = llava
    readings, rows = [], []
    for item in items:
        batch = processor(text=[item.prompt.text], images=list(item.prompt.images),
                          return_tensors="pt")
        with torch.no_grad():
            out = hf(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                     output_attentions=True)
        readings.append(tokenizer.decode([int(out.logits[0, -1].argmax())]))
        start = int((batch["input_ids"][0] == processor.image_token_id).nonzero()[0])
        rows.append((start, out.attentions[DEFAULT_HEAD.layer][0, DEFAULT_HEAD.head, -1]))
    return "".join(readings), rows


def test_reading_head_attends_to_the_text_and_reads_it(llava):
    items = colour_items(12, seed=5)
    readings, rows = _read(llava, items)
    assert readings == "".join(item.answer for item in items)
    for item, (start, row) in zip(items, rows, strict=True):
        row_index, col_index = item.meta["patch"]
        assert float(row[start + 4 * row_index + col_index]) > 0.99
    hf, _, _ = llava
    d_head = hf.config.text_config.head_dim
    o_proj = hf.model.language_model.layers[0].self_attn.o_proj.weight
    with zeroed(o_proj, (slice(None), slice(DEFAULT_HEAD.head * d_head,
                                            (DEFAULT_HEAD.head + 1) * d_head))):
        ablated, _ = _read(llava, items)
    right = sum(a == item.answer for a, item in zip(ablated, items, strict=True))
    assert right <= 2  # measured: 0 of 16 on colour_items(16, seed=0)


def test_ocr_ranks_the_planted_head_first():
    (case,) = ocr_cases()
    bridge = case.build()
    table = registry.scan(bridge, case.scorer, case.prompts(bridge), n=case.n, progress=False,
                          **case.params)
    assert table.data.attrs["reading_accuracy"] == 1.0
    ranked = table.data.sort_values(case.column, ascending=False, kind="stable")
    best = ranked.iloc[0]
    assert Head(int(best["layer"]), int(best["head"])) == DEFAULT_HEAD
    assert best[case.column] == pytest.approx(1.0)
    assert ranked[case.column].iloc[1] < 1.0  # measured: L0H2 0.9375


def test_reading_head_must_be_in_layer_0():
    with pytest.raises(PlantingError, match="layer 0"):
        planted_llava_hf((1, 0))
