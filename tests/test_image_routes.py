"""Image prompts through the streaming scorers, the judges, ablations and the patching engine,
on the tiny LLaVA-style model (32 x 32 images, a 4 x 4 patch grid, 16 image tokens)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headprobe.experiments import ablation_experiment
from headprobe.experiments.judging import answer_first_tokens, judge_task
from headprobe.heads.induction.pattern_mass import induction_targets, per_prompt_pattern_scores
from headprobe.inputs import ImagePrompt, encode_prompts, fingerprint, iter_batches
from headprobe.interventions import zero_ablation
from headprobe.metrics import final_logits
from headprobe.patching.engine import PatchingEngine
from headprobe.patching.setters import head_z
from headprobe.registry import scan
from headprobe.runtime.decode import generate
from headprobe.runtime.forward import forward_batch
from headprobe.runtime.hooks import attached
from headprobe.runtime.stream import collect_per_prompt
from headprobe.tasks.base import Task, TaskItem
from headprobe.tiny import tiny_model

QUESTION = "USER: <image>\nab cd ab cd? ASSISTANT:"


@pytest.fixture(scope="module")
def tiny_llava():
    """The tiny LLaVA-style model and its spec."""
    return tiny_model("llava")


def _image(seed: int) -> torch.Tensor:
    """[32, 32, 3] uint8 noise from a local generator."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (32, 32, 3), generator=generator, dtype=torch.uint8)


def _alone_next_tokens(model, spec, prompts) -> torch.Tensor:
    """[N] greedy next token of each prompt run alone (one unpadded forward each)."""
    out = []
    for item in encode_prompts(model, prompts, spec):
        (batch,) = list(iter_batches([item], 1))
        with torch.no_grad():
            logits = forward_batch(model, batch)
        out.append(int(logits[0, -1].argmax()))
    return torch.tensor(out)


# --- 1. the streaming route and the pattern scorers --------------------------------------------

def test_text_fingerprint_is_unchanged_by_encoding(tiny_llava):
    model, spec = tiny_llava
    texts = ["ab cd ab cd", "hello"]
    encoded = encode_prompts(model, texts, spec)
    assert fingerprint(encoded) == fingerprint([item.ids for item in encoded])


def test_collect_per_prompt_carries_pixels(tiny_llava):
    """Encoded image prompts stream with their pixels: the residual at the image rows is the
    image feature, so two images give different activations there and equal text rows before."""
    model, spec = tiny_llava
    prompts = [ImagePrompt(QUESTION, [_image(0)]), ImagePrompt(QUESTION, [_image(1)])]
    encoded = encode_prompts(model, prompts, spec)
    resid = collect_per_prompt(model, spec, encoded, "resid_pre",
                               lambda act, batch: act.float(), layers=[0], progress=False)
    image = encoded[0].spans["image"]
    assert not torch.allclose(resid[0, 0, image.start:image.stop],
                              resid[1, 0, image.start:image.stop])
    assert torch.equal(resid[0, 0, :image.start], resid[1, 0, :image.start])


@pytest.mark.parametrize("side", ["left", "right"])
def test_pattern_scores_of_an_image_prompt_do_not_depend_on_padding(tiny_llava, side):
    """A prompt scored alone equals it padded in a batch with a longer image prompt."""
    model, spec = tiny_llava
    short = ImagePrompt(QUESTION, [_image(0)])
    longer = ImagePrompt("USER: <image>\nxy zw xy zw xy zw, and more text? ASSISTANT:",
                         [_image(1)])
    kwargs = {"exclude_bos": True, "exclude_current": True, "progress": False, "desc": "t"}
    alone = per_prompt_pattern_scores(model, spec, encode_prompts(model, [short], spec),
                                      induction_targets, batch_size=1, padding_side=side,
                                      **kwargs)
    batched = per_prompt_pattern_scores(model, spec, encode_prompts(model, [longer, short], spec),
                                        induction_targets, batch_size=2, padding_side=side,
                                        **kwargs)
    assert torch.isfinite(alone).all()
    assert (alone[0] - batched[1]).abs().max() <= 1e-5


def test_pattern_covers_image_positions(tiny_llava):
    """A target on the image span: the attention mass there is positive and depends on the
    image (the pixels reach the model)."""
    model, spec = tiny_llava

    def on_image(batch):
        return batch.span_mask("image")[:, None, :].expand(-1, batch.seq_len, -1) & (
            batch.key_query_mask())

    kwargs = {"exclude_bos": False, "exclude_current": False, "batch_size": 2,
              "padding_side": "right", "progress": False, "desc": "t"}
    prompts = [ImagePrompt(QUESTION, [_image(0)]), ImagePrompt(QUESTION, [_image(5)])]
    scores = per_prompt_pattern_scores(model, spec, encode_prompts(model, prompts, spec),
                                       on_image, **kwargs)
    assert bool((scores > 0).all())
    assert not torch.allclose(scores[0], scores[1])


def test_scan_induction_on_image_prompts(tiny_llava):
    model, spec = tiny_llava
    first = scan(model, "induction", [ImagePrompt(QUESTION, [_image(0)])], progress=False)
    other = scan(model, "induction", [ImagePrompt(QUESTION, [_image(7)])], progress=False)
    assert len(first) == spec.n_total_heads
    assert np.isfinite(first["score"].to_numpy()).all()
    assert not np.allclose(first["score"].to_numpy(), other["score"].to_numpy())
    assert first.meta["data_fingerprint"] != other.meta["data_fingerprint"]  # pixels are hashed


def test_sink_scan_on_image_prompts(tiny_llava):
    model, spec = tiny_llava
    table = scan(model, "sink", {"pics": [ImagePrompt(QUESTION, [_image(0)]),
                                          ImagePrompt(QUESTION, [_image(1)])]}, progress=False)
    assert len(table) == spec.n_total_heads
    assert np.isfinite(table["sink_pics"].to_numpy()).all()


# --- 2. judges and ablations ------------------------------------------------------------------

def _image_task(model, spec, judge: str = "next_token") -> tuple[Task, torch.Tensor]:
    """A 2-item image task whose first answer is the model's own next token (correct) and
    whose second is another token (wrong); also the [2] predicted tokens."""
    prompts = [ImagePrompt(QUESTION, [_image(0)]), ImagePrompt(QUESTION, [_image(1)])]
    predicted = _alone_next_tokens(model, spec, prompts)
    tokenizer = model.tokenizer
    right = tokenizer.decode([int(predicted[0])])
    wrong_id = next(i for i in range(5, 200) if i != int(predicted[1])
                    and len(tokenizer.encode(tokenizer.decode([i]), add_special_tokens=False))
                    == 1 and tokenizer.encode(tokenizer.decode([i]),
                                              add_special_tokens=False)[0] == i)
    items = [TaskItem(prompt=prompts[0], answer=right),
             TaskItem(prompt=prompts[1], answer=tokenizer.decode([wrong_id]))]
    return Task(name="pics", items=items, judge=judge, max_new_tokens=2), predicted


def test_next_token_judge_on_image_prompts(tiny_llava):
    model, spec = tiny_llava
    task, _ = _image_task(model, spec)
    assert judge_task(model, task, batch_size=2).tolist() == [True, False]


def test_ablation_experiment_on_image_prompts(tiny_llava):
    """The ablation's judgements equal the model's own next tokens with the heads zeroed."""
    model, spec = tiny_llava
    task, _ = _image_task(model, spec)
    heads = [(0, 0), (0, 1), (1, 0), (1, 2)]
    result = ablation_experiment(model, task, heads, method="zero", n_random=1,
                                 progress=False, n_bootstrap=0)
    assert result.correct["baseline"].tolist() == [True, False]
    with attached(model, zero_ablation(model, heads)):
        ablated = _alone_next_tokens(model, spec, [item.prompt for item in task.items])
        ablated_logits = _last_logits(model, spec, task.items[0].prompt)
    expected = (ablated == answer_first_tokens(model, task)).tolist()
    assert result.correct["target"].tolist() == expected
    # the hooks act: the zeroed heads change the image prompt's logits
    assert not torch.allclose(ablated_logits, _last_logits(model, spec, task.items[0].prompt))
    table = result.table.set_index("condition")
    assert table.loc["baseline", "accuracy"] == pytest.approx(0.5)


def _last_logits(model, spec, prompt) -> torch.Tensor:
    """[V] final logits of one prompt run alone (hooks attached around the call act)."""
    (batch,) = list(iter_batches(encode_prompts(model, [prompt], spec), 1))
    with torch.no_grad():
        return final_logits(forward_batch(model, batch), batch.last)[0].float()


def test_generation_from_image_prompts_matches_the_hf_forward(tiny_llava):
    """The KV-cached decode step merges the image features at the prefill: its tokens and
    logits equal the reference route's (a full HF forward with the pixel values at every
    step), with left and right padding and a text prompt in the same batch."""
    model, _spec = tiny_llava
    prompts = [ImagePrompt(QUESTION, [_image(0)]), "ab cd ab",
               ImagePrompt("<image> ab? ", [_image(1)])]
    reference = generate(model, prompts, max_new_tokens=4, use_cache=False, keep_logits=True)
    for side in ("left", "right"):
        cached = generate(model, prompts, max_new_tokens=4, padding_side=side,
                          keep_logits=True, batch_size=3)
        assert torch.equal(cached.tokens, reference.tokens)
        assert torch.allclose(cached.logits, reference.logits, atol=1e-4)
    # the image changes the continuation's logits (the features are merged, not dropped)
    other = generate(model, [ImagePrompt(QUESTION, [_image(5)])], max_new_tokens=1,
                     keep_logits=True)
    assert not torch.allclose(other.logits[0, 0], reference.logits[0, 0], atol=1e-3)


def test_generation_judges_run_on_image_prompts(tiny_llava):
    model, spec = tiny_llava
    task, _ = _image_task(model, spec, judge="contains")
    correct = judge_task(model, task)
    texts = generate(model, task.prompts, max_new_tokens=task.max_new_tokens,
                     padding_side="right").texts
    expected = [item.answer.strip() in text for item, text in zip(task.items, texts,
                                                                   strict=True)]
    assert correct.tolist() == expected and bool(correct[0])


# --- 3. the patching engine -------------------------------------------------------------------

def test_patching_engine_with_image_pairs(tiny_llava):
    """Same text, different images: patching every head's z of the clean run into the corrupt
    run at every position restores the clean logit difference, since the final position's
    residual is then its (shared) text embedding plus clean attention outputs plus MLPs of
    that same residual; a single head's patch runs too."""
    model, spec = tiny_llava
    clean = [ImagePrompt(QUESTION, [_image(0)]), ImagePrompt(QUESTION, [_image(2)])]
    corrupt = [ImagePrompt(QUESTION, [_image(1)]), ImagePrompt(QUESTION, [_image(3)])]
    engine = PatchingEngine(model, clean, corrupt, ["a", "b"], ["c", "d"], batch_size=2)
    base = engine.baseline("logit_diff")
    assert abs(base["clean"] - base["corrupt"]) > 1e-4  # the images matter
    one = engine.run([head_z(spec, 1, 0)], metric="logit_diff")
    assert np.isfinite(one)
    every = [head_z(spec, layer, head) for layer in range(spec.n_layers)
             for head in range(spec.n_heads)]
    restored = engine.run_values(every, target="corrupt", source="clean", metric="logit_diff")
    clean_values, _ = engine.baseline_values("logit_diff")
    assert (restored - clean_values).abs().max() <= 1e-4


# --- 4. direct logit attribution --------------------------------------------------------------

def test_dla_on_image_prompts(tiny_llava):
    """The components sum to the measured logit difference, which depends on the image."""
    from headprobe.scorers.dla import attribute

    model, _ = tiny_llava
    items = [TaskItem(ImagePrompt(QUESTION, [_image(seed)]), "a", "c") for seed in (0, 1, 2)]
    result = attribute(model, items, batch_size=2)
    assert float(result.measured.abs().max()) > 1e-3
    assert float(result.error.abs().max()) <= 1e-4
    assert not torch.allclose(result.measured[0], result.measured[1])
