"""The tiny Qwen2.5-VL-style model (``Qwen2_5_VLForConditionalGeneration``): spec and module
paths from the ``qwen2_5_vl`` entry, image spans with each image's own merged grid, the 3-D
multimodal rotary positions carried through padded batches (logits equal the HF model's own
forward), hooks on the language model's heads, and generation refused with a clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headprobe.arch import ARCHITECTURES
from headprobe.errors import ImageGenerationError
from headprobe.images import patch_grid, processor_of
from headprobe.inputs import ImagePrompt, encode_prompts, iter_batches
from headprobe.interventions import zero_ablation
from headprobe.models import describe_model
from headprobe.runtime.decode import generate
from headprobe.runtime.forward import forward_batch
from headprobe.runtime.hooks import attached
from headprobe.runtime.stream import collect_per_prompt
from headprobe.tiny import tiny_model
from headprobe.weights import hf_module, unwrap

QUESTION = "USER: <image>\nab cd ab cd? ASSISTANT:"


@pytest.fixture(scope="module")
def tiny_qwen():
    """The tiny Qwen2.5-VL: 2 layers x 4 heads over 2 kv heads, 8-pixel patches, 2 x 2 merge."""
    return tiny_model("qwen2.5-vl")


def _image(seed: int, height: int = 32, width: int = 48) -> np.ndarray:
    """[height, width, 3] uint8 noise from a local generator."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _hook_count(model) -> int:
    return sum(len(point._forward_hooks) for point in model.hook_dict.values())


def _reference(model, text: str, images) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [T], logits [T, V])`` of the HF model called on the processor's output for the
    same text and images (it computes its 3-D rotary positions itself)."""
    output = processor_of(model)(text=[text], images=list(images), return_tensors="pt")
    with torch.no_grad():
        logits = model.original_model(**output).logits[0]
    return output["input_ids"][0], logits


# --- spec and module paths ----------------------------------------------------------------------

def test_spec_takes_sizes_from_text_config_and_paths_from_its_entry(tiny_qwen):
    model, spec = tiny_qwen
    text = model.original_model.config.text_config
    assert (spec.model_type, spec.n_layers, spec.n_heads, spec.n_kv_heads, spec.d_model,
            spec.d_head, spec.d_vocab) == (
        "qwen2_5_vl_text", text.num_hidden_layers, text.num_attention_heads,
        text.num_key_value_heads, text.hidden_size, text.hidden_size // text.num_attention_heads,
        text.vocab_size)
    assert spec.facts is ARCHITECTURES["qwen2_5_vl"]
    assert spec.facts.vision_language and not spec.facts.layer_runner
    assert type(model.original_model).__name__ == "Qwen2_5_VLForConditionalGeneration"


def test_module_paths_exist_in_the_hf_model(tiny_qwen):
    model, spec = tiny_qwen
    facts = spec.facts
    hf = model.original_model
    decoder = hf_module(model, facts.decoder)
    assert decoder is unwrap(hf.model.language_model)
    assert hf_module(model, facts.final_norm) is unwrap(hf.model.language_model.norm)
    assert hf_module(model, facts.unembed) is unwrap(hf.lm_head)
    assert hf_module(model, facts.rotary) is unwrap(hf.model.language_model.rotary_emb)
    for layer in range(spec.n_layers):
        path = f"{facts.layers_path}.{layer}.{facts.attention_module}"
        assert hf_module(model, path) is unwrap(unwrap(decoder.layers[layer]).self_attn)
        assert hf_module(model, f"{path}.{facts.o_proj}").weight.shape == (
            spec.d_model, spec.n_heads * spec.d_head)
        assert hf_module(model, f"{path}.{facts.k_proj}").weight.shape == (
            spec.n_kv_heads * spec.d_head, spec.d_model)
    assert decoder.config.model_type == spec.model_type


# --- encoding: image spans with the merged grid, 3-D positions ---------------------------------

@pytest.mark.parametrize(("height", "width"), [(32, 48), (48, 32), (64, 64)])
def test_image_span_has_the_merged_grid_of_image_grid_thw(tiny_qwen, height, width):
    model, spec = tiny_qwen
    (encoded,) = encode_prompts(model, [ImagePrompt(QUESTION, [_image(0, height, width)],
                                                    spans={"q": "ab cd"})], spec)
    t, h, w = encoded.extra["image_grid_thw"][0].tolist()
    assert (t, h, w) == (1, height // 8, width // 8)
    image = encoded.spans["image"]
    assert image.grid == (h // 2, w // 2)
    assert len(image) == t * h * w // 4
    ids = encoded.ids.tolist()
    config = model.original_model.config
    assert ids[image.start:image.stop] == [config.image_token_id] * len(image)
    assert ids[image.start - 1] == config.vision_start_token_id
    assert ids[image.stop] == config.vision_end_token_id
    assert patch_grid(model) is None  # the grid is per image, not the tower's
    # pixel values are flattened patches, one row per 8 x 8 x 2-frame patch
    assert tuple(encoded.extra["pixel_values"].shape) == (t * h * w, 3 * 2 * 8 * 8)
    # 3-D rotary positions: image tokens at their (row, col), text tokens equal in 3 streams
    positions = encoded.extra["position_ids"]
    assert tuple(positions.shape) == (3, len(encoded))
    rows = positions[1, image.start:image.stop] - positions[1, image.start]
    cols = positions[2, image.start:image.stop] - positions[2, image.start]
    assert rows.tolist() == [r for r in range(h // 2) for _ in range(w // 2)]
    assert cols.tolist() == [c for _ in range(h // 2) for c in range(w // 2)]
    text = positions[:, :image.start]
    assert torch.equal(text[0], text[1]) and torch.equal(text[0], text[2])
    # a named text span maps to its characters
    span = encoded.spans["q"]
    assert model.tokenizer.decode(encoded.ids[span.start:span.stop]).replace(" ", "") == "abcd"


# --- the forward: logits equal HF's own, with padding --------------------------------------------

def test_forward_batch_equals_the_hf_forward(tiny_qwen):
    model, spec = tiny_qwen
    prompt = ImagePrompt(QUESTION, [_image(1)])
    (encoded,) = encode_prompts(model, [prompt], spec)
    ids, expected = _reference(model, encoded.text, prompt.images)
    assert torch.equal(ids, encoded.ids)
    (batch,) = list(iter_batches([encoded], 1))
    with torch.no_grad():
        logits = forward_batch(model, batch)[0]
        # the 1-D positions alone would not do: multimodal rotary moves the image tokens
        flat = model(batch.tokens, attention_mask=batch.attention_mask.long(),
                     position_ids=batch.position_ids,
                     **{k: v for k, v in batch.extra.items() if k != "position_ids"})[0]
    assert torch.allclose(logits, expected, atol=1e-5)
    assert not torch.allclose(flat, expected, atol=1e-3)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batches_with_images_of_different_sizes_equal_each_prompt_alone(tiny_qwen, side):
    """Two image prompts (different image sizes) and a text prompt in one padded batch: the
    logits at each prompt's real columns equal the HF model's forward on that prompt alone."""
    model, spec = tiny_qwen
    prompts = [ImagePrompt(QUESTION, [_image(2)]), "ab cd ab",
               ImagePrompt("<image> and <image> ab?", [_image(3, 64, 64), _image(4, 48, 32)])]
    encoded = encode_prompts(model, prompts, spec)
    (batch,) = list(iter_batches(encoded, 3, padding_side=side))
    assert tuple(batch.extra["position_ids"].shape) == (3, 3, batch.seq_len)
    with torch.no_grad():
        logits = forward_batch(model, batch)
    for row, (prompt, item) in enumerate(zip(prompts, encoded, strict=True)):
        if isinstance(prompt, ImagePrompt):
            _, expected = _reference(model, item.text, prompt.images)
        else:
            with torch.no_grad():
                expected = model.original_model(input_ids=item.ids[None]).logits[0]
        start = int(batch.start[row])
        assert torch.allclose(logits[row, start:start + len(item)], expected, atol=1e-5)
    assert [len(item.spans[name]) for item in encoded[2:] for name in ("image_0", "image_1")] \
        == [16, 6]


# --- hooks on the language model's heads ---------------------------------------------------------

def test_head_hooks_fire_and_see_the_image(tiny_qwen):
    """hook_pattern fires on every layer; the attention paid to the image span depends on the
    image, and equal text before the image gives equal patterns there."""
    model, spec = tiny_qwen
    prompts = [ImagePrompt(QUESTION, [_image(5)]), ImagePrompt(QUESTION, [_image(6)])]
    encoded = encode_prompts(model, prompts, spec)
    image = encoded[0].spans["image"]

    def mass_on_image(pattern, batch):  # [B, H, T_q, T_k] -> [B, H]
        return pattern[:, :, -1, image.start:image.stop].sum(-1).float()

    mass = collect_per_prompt(model, spec, encoded, "pattern", mass_on_image, batch_size=2,
                              progress=False)
    assert tuple(mass.shape) == (2, spec.n_layers, spec.n_heads)
    assert bool((mass > 0).all()) and bool((mass < 1).all())
    assert not torch.allclose(mass[0], mass[1])
    z = collect_per_prompt(model, spec, encoded, "z", lambda act, batch: act[:, :image.start],
                           batch_size=2, progress=False)
    assert tuple(z.shape[-2:]) == (spec.n_heads, spec.d_head)
    assert torch.allclose(z[0], z[1], atol=1e-6)
    assert _hook_count(model) == 0


def test_zero_ablation_changes_the_logits_and_the_hooks_are_removed(tiny_qwen):
    model, spec = tiny_qwen
    encoded = encode_prompts(model, [ImagePrompt(QUESTION, [_image(7)])], spec)
    (batch,) = list(iter_batches(encoded, 1))
    before = _hook_count(model)
    with torch.no_grad():
        clean = forward_batch(model, batch)
        with attached(model, zero_ablation(model, [(1, 2)])):
            assert _hook_count(model) > before
            ablated = forward_batch(model, batch)
        again = forward_batch(model, batch)
    assert _hook_count(model) == before
    assert not torch.allclose(clean, ablated, atol=1e-4)
    assert torch.equal(clean, again)


# --- generation is refused ----------------------------------------------------------------------

def test_generation_from_a_qwen_image_prompt_raises_a_clear_error(tiny_qwen):
    model, _ = tiny_qwen
    with pytest.raises(ImageGenerationError, match="qwen2_5_vl"):
        generate(model, [ImagePrompt(QUESTION, [_image(8)])], max_new_tokens=2)
    assert _hook_count(model) == 0
    # text prompts still generate (1-D positions equal mRoPE's for text): the first step's
    # logits are the HF forward's last ones
    out = generate(model, ["ab cd"], max_new_tokens=2, keep_logits=True)
    (encoded,) = encode_prompts(model, ["ab cd"], describe_model(model))
    with torch.no_grad():
        expected = model.original_model(input_ids=encoded.ids[None]).logits[0, -1]
    assert torch.allclose(out.logits[0, 0], expected, atol=1e-5)


def test_load_model_reads_a_saved_qwen_vl_folder(tmp_path):
    """A Qwen2.5-VL folder (model, tokenizer, PIL image processor; no torchvision) loads through
    load_model with an images-only processor, and the bridge gives HF's logits."""
    from headprobe.catalogue import load_model
    from headprobe.tiny import tiny_hf_model

    hf, tokenizer, processor = tiny_hf_model("qwen2.5-vl")
    hf.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    processor.image_processor.save_pretrained(tmp_path)
    model, spec = load_model(tmp_path)
    assert spec.facts.vision_language and model.headprobe_processor is not None
    image = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    (encoded,) = encode_prompts(model, [ImagePrompt("<image> ab", [image])], spec)
    (batch,) = list(iter_batches([encoded], 1))
    with torch.no_grad():
        ours = forward_batch(model, batch)
        theirs = hf(input_ids=batch.tokens, **batch.extra).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
