"""GGUF files to Hugging Face models, and headprobe's safetensors cache of the result.

A GGUF file is dequantized to fp32 by ``transformers`` + ``gguf`` (20-90 s). The result is
saved once, atomically, as a safetensors folder under ``cache_dir() / "models" / key`` (the key
carries a fingerprint of the file's path, size and modification time), so later loads read that
folder (about a second). :func:`cache_dir` is ``$HEADPROBE_CACHE`` when set, else
``$XDG_CACHE_HOME/headprobe`` (``~/.cache/headprobe``).

:func:`headprobe.sources.load_hf` resolves a spec to a file and calls :func:`load_gguf`;
``cache_dir`` and ``CACHE_ENV`` are re-exported by :mod:`headprobe.sources`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

CACHE_ENV = "HEADPROBE_CACHE"

# GGUF configs of some families lack `architectures`, which the bridge needs to pick an adapter.
ARCHITECTURES_BY_MODEL_TYPE: dict[str, str] = {
    "gemma3_text": "Gemma3ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
    "llama": "LlamaForCausalLM",
}


def cache_dir() -> Path:
    """headprobe's cache folder: ``$HEADPROBE_CACHE``, else ``$XDG_CACHE_HOME/headprobe``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "headprobe"


def file_fingerprint(path: Path) -> str:
    """12 hex digits of sha256 over the file's resolved path, size and modification time."""
    stat = path.stat()
    raw = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()
    return hashlib.sha256(raw).hexdigest()[:12]


def find_cached(key: str) -> Path | None:
    """The cached model folder of ``key``, or None when there is no complete one."""
    folder = cache_dir() / "models" / key
    return folder if (folder / "config.json").is_file() else None


def cast_parameters(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast floating parameters (not buffers: rotary frequencies stay fp32) to ``dtype``."""
    with torch.no_grad():
        for param in model.parameters():
            if param.is_floating_point() and param.dtype != dtype:
                param.data = param.data.to(dtype)


def load_hf_dir(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    """``(causal LM, tokenizer)`` of a saved Hugging Face folder, eager attention, ``dtype``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager")
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


def load_gguf(
    gguf_path: Path, *, key: str, dtype: torch.dtype, use_cache: bool
) -> tuple[Any, Any]:
    """Dequantize a GGUF file (or reuse the cached safetensors copy under ``key``).

    Args:
        gguf_path: the ``.gguf`` file.
        key: the cache folder's name; it should carry :func:`file_fingerprint` of the file.
        dtype: the parameter dtype of the returned model (the cache holds fp32).
        use_cache: read / write the cached copy.

    Returns:
        ``(causal LM, tokenizer)``.
    """
    if use_cache:
        cached = find_cached(key)
        if cached is not None:
            return load_hf_dir(cached, dtype)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantizing %s (this takes 20-90 s once; later loads use the cache)", gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent,
        gguf_file=gguf_path.name,
        dtype=torch.float32,
        attn_implementation="eager",
    )
    # The dequantized weights are plain fp32 tensors: drop the GGUF quantizer record so that
    # the model saves and reloads as an ordinary safetensors checkpoint.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    if not getattr(model.config, "architectures", None):
        arch = ARCHITECTURES_BY_MODEL_TYPE.get(model.config.model_type)
        if arch:
            model.config.architectures = [arch]
    if use_cache:
        write_cache(model, tokenizer, cache_dir() / "models" / key)
    cast_parameters(model, dtype)
    return model, tokenizer


def write_cache(model: Any, tokenizer: Any, target: Path) -> None:
    """Save atomically: into a temporary sibling folder, then rename. A cache that cannot be
    written (read-only) is logged and skipped, never an error."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except OSError as error:  # a read-only cache must not stop the load
        log.warning("could not write the model cache at %s: %s", target, error)
        shutil.rmtree(tmp, ignore_errors=True)
