"""The ``ocr`` scorer (Baek et al. 2025) against an independent computation, hand-made
credits, and its refusals of bad input."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch

from headprobe.errors import OCRDataError, PromptFormatError, ScorerNeedsError
from headprobe.heads.ocr.ocr import OCRSample, credit_samples, longest_common_run
from headprobe.inputs import ImagePrompt, encode_prompts
from headprobe.registry import get_scorer
from headprobe.tasks.base import TaskItem
from headprobe.tiny import tiny_hf_model, tiny_model

PROMPT = "<image> read:"


@pytest.fixture(scope="module")
def tiny_llava():
    return tiny_model("llava")


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def reference_llava():
    """The same tiny LLaVA, unwrapped (no bridge, no hooks): the independent reference."""
    return tiny_hf_model("llava")


def _reference_positions(reference, prompt, steps: int):
    """HF's own greedy tokens and, per step, each head's argmax over the prompt keys from a
    full forward with ``output_attentions`` (no headprobe code)."""
    hf, _, processor = reference
    batch = processor(text=[prompt.text], images=list(prompt.images), return_tensors="pt")
    ids = batch["input_ids"]
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                          pixel_values=batch["pixel_values"], max_new_tokens=steps,
                          do_sample=False, eos_token_id=None, pad_token_id=0)
        generated = out[0, ids.shape[1]:]
        full = hf(input_ids=out[:, :-1], pixel_values=batch["pixel_values"],
                  output_attentions=True)
    n_prompt = ids.shape[1]
    rows = [torch.stack([a[0, :, n_prompt - 1 + s, :n_prompt].argmax(-1)
                         for a in full.attentions]) for s in range(steps)]  # [L, H] each
    return generated.tolist(), rows


def test_scores_equal_an_independent_attention_argmax(tiny_llava, reference_llava):
    """Answers set to the model's own greedy readings (overlap 1) and boxes over chosen
    patches: the table equals credits computed from HF's full attention matrices."""
    model, spec = tiny_llava
    steps = 3
    items, expected, char_expected = [], [], []
    for seed in range(4):
        prompt = ImagePrompt(PROMPT, [_image(seed)])
        tokens, rows = _reference_positions(reference_llava, prompt, steps)
        answer = model.tokenizer.decode(tokens)
        if len(answer) != steps or not answer.isprintable() or not answer.strip():
            continue
        (encoded,) = encode_prompts(model, [prompt], spec)
        start = encoded.spans["image"].start
        # the text box covers patches (row 0, cols 0-1) and (row 1, cols 0-1); character k's
        # box is patch (row 0, col k); evidence is the union of the box's and the characters'
        box = (0, 0, 16, 16)
        evidence = {start + 0, start + 1, start + 4, start + 5} | {start + k
                                                                   for k in range(steps)}
        char_boxes = [(8 * k, 0, 8 * k + 8, 8) for k in range(steps)]
        items.append(TaskItem(prompt=prompt, answer=answer,
                              meta={"box": box, "char_boxes": char_boxes}))
        credit = torch.zeros(spec.n_layers, spec.n_heads, dtype=torch.float64)
        char_credit = torch.zeros_like(credit)
        for s in range(steps):
            for layer in range(spec.n_layers):
                for head in range(spec.n_heads):
                    position = int(rows[s][layer, head])
                    credit[layer, head] += (position in evidence) / steps
                    char_credit[layer, head] += (position == start + s) / steps
        expected.append(credit)
        char_expected.append(char_credit)
    assert len(items) >= 2, "the tiny model's readings were not printable"
    table = get_scorer("ocr")(model, items, max_new_tokens=steps, progress=False,
                              batch_size=3)
    grid = table.pivot("score").to_numpy()
    assert np.allclose(grid, torch.stack(expected).mean(0).numpy(), atol=1e-6)
    chars = table.pivot("char_score").to_numpy()
    assert np.allclose(chars, torch.stack(char_expected).mean(0).numpy(), atol=1e-6)
    assert table.meta["reading_accuracy"] == 1.0
    assert grid.max() > 0  # some head looked at the box


def _sample(answer_ids, evidence, char_evidence, length=8):
    ev = torch.zeros(length, dtype=torch.bool)
    ev[list(evidence)] = True
    chars = []
    for positions in char_evidence:
        mask = torch.zeros(length, dtype=torch.bool)
        mask[list(positions)] = True
        chars.append(mask)
    return OCRSample(encoded=torch.zeros(length), answer="AB", answer_ids=answer_ids,
                     evidence=ev, char_evidence=chars, meta={})


class _CharTokenizer:
    eos_token_id = 2
    vocab: ClassVar[dict[int, str]] = {10: "A", 11: "B", 12: "C"}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.vocab.get(int(i), "") for i in ids)


def test_hand_made_credits():
    """Answer "AB" (ids 10, 11), evidence at positions 2 and 3, A's patch 2, B's patch 3.
    Head 0 reads A at 2 then B at 3 (score 1, character agreement 1); head 1 looks at 3
    then 2 (score 1, agreement 0); head 2 looks at position 0 (score 0). A second sample
    reads "AC" (overlap 1/2): only "A" belongs to the answer."""
    sample = _sample([10, 11], {2, 3}, [{2}, {3}])
    positions = torch.full((2, 3, 1, 3), -1, dtype=torch.long)
    positions[0, 0, 0] = torch.tensor([2, 3, 0])
    positions[0, 1, 0] = torch.tensor([3, 2, 0])
    positions[1, 0, 0] = torch.tensor([2, 2, 2])
    positions[1, 1, 0] = torch.tensor([3, 3, 3])
    tokens = torch.tensor([[10, 11, 2], [10, 12, 2]])
    lengths = torch.tensor([3, 3])
    credit = credit_samples(_CharTokenizer(), [sample, sample], positions, tokens, lengths)
    assert credit.texts == ["AB", "AC"]
    assert credit.overlaps.tolist() == [1.0, 0.5]
    assert credit.score[0, 0].tolist() == [1.0, 1.0, 0.0]
    assert credit.char_hits[0, 0].tolist() == [2.0, 0.0, 0.0]
    # sample 2: one answer token ("A", step 0) worth overlap / len = 0.25 on evidence
    assert credit.score[1, 0].tolist() == [0.25, 0.25, 0.25]
    assert credit.answer_tokens.tolist() == [2, 1]
    assert credit.char_hits[1, 0].tolist() == [1.0, 1.0, 1.0]  # A's own patch is 2


def test_longest_common_run():
    assert longest_common_run([1, 2, 3, 4], [9, 2, 3, 7]) == 2
    assert longest_common_run([], [1]) == 0


def test_bad_input_is_refused(tiny_llava):
    model, _ = tiny_llava
    scorer = get_scorer("ocr")
    prompt = ImagePrompt(PROMPT, [_image(0)])
    with pytest.raises(OCRDataError, match="no evidence box"):
        scorer(model, [TaskItem(prompt=prompt, answer="AB")], progress=False)
    with pytest.raises(OCRDataError, match="covers no image patch"):
        scorer(model, [TaskItem(prompt=prompt, answer="AB", meta={"box": (40, 40, 50, 50)})],
               progress=False)
    with pytest.raises(OCRDataError, match="character boxes"):
        scorer(model, [TaskItem(prompt=prompt, answer="AB",
                                meta={"box": (0, 0, 8, 8), "char_boxes": [(0, 0, 8, 8)]})],
               progress=False)
    bad_image = ImagePrompt(PROMPT, [np.zeros((32, 32), dtype=np.uint8)])
    with pytest.raises(PromptFormatError, match="rejected this image prompt"):
        scorer(model, [TaskItem(prompt=bad_image, answer="AB", meta={"box": (0, 0, 8, 8)})],
               progress=False)
    text_model, _ = tiny_model("llama-gqa")
    with pytest.raises(ScorerNeedsError, match="needs images"):
        scorer(text_model, progress=False)
