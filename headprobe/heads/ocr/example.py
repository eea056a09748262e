"""Example with an exactly known answer (computed): OCR credits from HF's own attention.

A tiny random LLaVA (:func:`headprobe.tiny.tiny_model` ``"llava"``: a 4 x 4 grid of image
patches) reads random images; each item's answer is the model's own greedy 3-token reading
(so every reading is correct) and its text box covers the top-left 2 x 2 patches. The
expected ``ocr`` score of every head (Baek et al. 2025: the share of answer steps whose
attention argmax over the prompt lands on the box's or the characters' patches) is computed
here by an independent route that shares no code with the scorer: the unwrapped Hugging
Face model (:func:`headprobe.tiny.tiny_hf_model`, no bridge, no hooks) generates greedily,
then one forward with ``output_attentions`` gives every head's argmax at every step, and
the credits are counted in plain loops. The table must equal it to 1e-6.
"""

from __future__ import annotations

import numpy as np
import torch

from headprobe.examples import Example
from headprobe.inputs import ImagePrompt, encode_prompts
from headprobe.tasks.base import TaskItem
from headprobe.tiny import tiny_hf_model, tiny_model

PROMPT = "<image> read:"
STEPS = 3


def _reference(reference: tuple, prompt: ImagePrompt) -> tuple[list[int], list[torch.Tensor]]:
    """HF's greedy tokens and, per step, each head's [L, H] argmax over the prompt keys."""
    hf, _, processor = reference
    batch = processor(text=[prompt.text], images=list(prompt.images), return_tensors="pt")
    ids = batch["input_ids"]
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                          pixel_values=batch["pixel_values"], max_new_tokens=STEPS,
                          do_sample=False, eos_token_id=None, pad_token_id=0)
        full = hf(input_ids=out[:, :-1], pixel_values=batch["pixel_values"],
                  output_attentions=True)
    n_prompt = ids.shape[1]
    rows = [torch.stack([a[0, :, n_prompt - 1 + s, :n_prompt].argmax(-1)
                         for a in full.attentions]) for s in range(STEPS)]
    return out[0, n_prompt:].tolist(), rows


def example() -> Example:
    """The ``ocr`` scorer on a tiny LLaVA, against credits computed from HF's attentions."""
    model, spec = tiny_model("llava")
    reference = tiny_hf_model("llava")
    items, credits = [], []
    for seed in range(6):
        image = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        prompt = ImagePrompt(PROMPT, [image])
        tokens, rows = _reference(reference, prompt)
        answer = model.tokenizer.decode(tokens)
        if len(answer) != STEPS or not answer.isprintable() or not answer.strip():
            continue  # a reading the answer tokenizer would not give back as 3 characters
        (encoded,) = encode_prompts(model, [prompt], spec)
        start = encoded.spans["image"].start
        # the box covers patches (0, 0), (0, 1), (1, 0), (1, 1) of the 4 x 4 grid; character
        # k's box is patch (0, k); the evidence is the union of both
        evidence = {start, start + 1, start + 4, start + 5} | {start + k for k in range(STEPS)}
        items.append(TaskItem(prompt=prompt, answer=answer,
                              meta={"box": (0, 0, 16, 16),
                                    "char_boxes": [(8 * k, 0, 8 * k + 8, 8)
                                                   for k in range(STEPS)]}))
        credit = np.zeros((spec.n_layers, spec.n_heads))
        for step in range(STEPS):
            for layer in range(spec.n_layers):
                for head in range(spec.n_heads):
                    credit[layer, head] += (int(rows[step][layer, head]) in evidence) / STEPS
        credits.append(credit)
        if len(items) == 2:
            break
    return Example(
        head_type="ocr", scorer="ocr", model=model, kind="computed",
        description=f"tiny random LLaVA reading {len(items)} random images, scores computed "
                    "from the unwrapped HF model's attention matrices",
        prompts=items, params={"max_new_tokens": STEPS}, grid=np.mean(credits, axis=0))
