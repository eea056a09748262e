"""LoRA adapters shipped for a base model: their folder, metadata, checks and merging.

An adapter folder holds peft's ``adapter_config.json`` and ``adapter_model.safetensors`` plus
headprobe's :data:`ADAPTER_META` (``headprobe_adapter.json``): the base model's headprobe name,
a hash of its parameter names and shapes, the training settings, the data fingerprint, the
training time and the evaluation numbers. Packaged adapters live under
``data/adapters/<name>/`` (:func:`packaged_adapter_dir`, found through
:func:`headprobe.paths.data_dir`).

:func:`merge_adapter` checks that an adapter fits the base model it is merged into (the base
name, every LoRA matrix against its target layer, then the shape hash) and merges it with
``PeftModel.from_pretrained(model, folder).merge_and_unload()``, so the result is the plain
Hugging Face model with ``W + (alpha / r) B A`` in place of each target ``W``: every headprobe
tool sees an ordinary model. :func:`load_adapted_model` does that for a base model name and
wraps the result in a bridge.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from headprobe.errors import AdapterMismatchError, ModelUnavailableError
from headprobe.paths import data_dir

ADAPTER_META = "headprobe_adapter.json"
ADAPTERS_DIR = "adapters"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
META_FORMAT = 1
_PEFT_PREFIX = "base_model.model."  # peft's key prefix in saved adapters


def packaged_adapter_dir(name: str) -> Path:
    """``data/adapters/<name>`` (the folder may not exist; see :func:`require_adapter_files`).

    Raises:
        DataNotFoundError: the data folder itself cannot be found.
    """
    return data_dir() / ADAPTERS_DIR / name


def require_adapter_files(folder: Path, rebuild_hint: str = "") -> None:
    """:class:`ModelUnavailableError` (saying how to rebuild it) unless ``folder`` holds an
    adapter: peft's config and weights and :data:`ADAPTER_META`."""
    missing = [name for name in (PEFT_CONFIG, PEFT_WEIGHTS, ADAPTER_META)
               if not (folder / name).is_file()]
    if not missing:
        return
    what = ("is missing" if not folder.is_dir()
            else f"lacks {', '.join(missing)}")
    hint = f" Rebuild it with: {rebuild_hint}" if rebuild_hint else ""
    raise ModelUnavailableError(f"the LoRA adapter folder {folder} {what}.{hint}")


def shapes_fingerprint(model: torch.nn.Module) -> str:
    """sha256 (first 16 hex digits) of the model's parameter names and shapes, sorted.

    Identifies the architecture and size of a base model (not its weights), independent of
    where its file lies.
    """
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        digest.update(f"{name}:{tuple(param.shape)};".encode())
    return digest.hexdigest()[:16]


def read_adapter_meta(folder: Path) -> dict[str, Any]:
    """The parsed :data:`ADAPTER_META` of ``folder``.

    Raises:
        AdapterMismatchError: the file is not valid JSON or not an object.
    """
    path = folder / ADAPTER_META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise AdapterMismatchError(f"cannot read the adapter metadata {path}: {error}") from error
    if not isinstance(meta, dict):
        raise AdapterMismatchError(f"the adapter metadata {path} is not a JSON object")
    return meta


def lora_shapes(folder: Path) -> dict[str, dict[str, tuple[int, ...]]]:
    """``{module path: {"lora_A": shape, "lora_B": shape}}`` of the saved adapter (shapes
    only, read from the safetensors header; module paths as in the plain HF model)."""
    from safetensors import safe_open

    shapes: dict[str, dict[str, tuple[int, ...]]] = {}
    with safe_open(str(folder / PEFT_WEIGHTS), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
            path = key.removeprefix(_PEFT_PREFIX)
            for part in ("lora_A", "lora_B"):
                marker = f".{part}."
                if marker in path:
                    module = path.split(marker)[0]
                    shape = tuple(handle.get_slice(key).get_shape())
                    shapes.setdefault(module, {})[part] = shape
    return shapes


def check_adapter(model: torch.nn.Module, folder: Path, *, base_name: str) -> dict[str, Any]:
    """Check that the adapter in ``folder`` fits ``model`` (a plain HF model named
    ``base_name``); returns its metadata.

    Checks, in order: the metadata's ``base`` equals ``base_name``; every LoRA pair
    ``A`` [r, in], ``B`` [out, r] targets an ``nn.Linear`` of the model with those ``in`` /
    ``out`` features; the model's :func:`shapes_fingerprint` equals the recorded one.

    Raises:
        AdapterMismatchError: the first check that fails, named.
    """
    meta = read_adapter_meta(folder)
    trained_on = meta.get("base")
    if trained_on != base_name:
        raise AdapterMismatchError(
            f"the adapter {folder} was trained on {trained_on!r}, not on {base_name!r}; merge "
            f"it into {trained_on!r} or retrain it on {base_name!r}")
    shapes = lora_shapes(folder)
    if not shapes:
        raise AdapterMismatchError(f"the adapter {folder} holds no LoRA weights")
    for module_path, pair in sorted(shapes.items()):
        try:
            module = model.get_submodule(module_path)
        except AttributeError as error:
            raise AdapterMismatchError(
                f"the adapter {folder} targets {module_path}, which {base_name!r} does not "
                "have") from error
        if not isinstance(module, torch.nn.Linear) or set(pair) != {"lora_A", "lora_B"}:
            raise AdapterMismatchError(f"the adapter {folder} targets {module_path}, which is "
                                       f"not a plain linear layer of {base_name!r}")
        a_shape, b_shape = pair["lora_A"], pair["lora_B"]
        if a_shape[1] != module.in_features or b_shape[0] != module.out_features:
            raise AdapterMismatchError(
                f"the adapter {folder} does not fit {base_name!r}: {module_path} is "
                f"[{module.out_features}, {module.in_features}] but the adapter's B A is "
                f"[{b_shape[0]}, {a_shape[1]}]")
    recorded = meta.get("base_shapes_sha256")
    if recorded is not None and recorded != shapes_fingerprint(model):
        raise AdapterMismatchError(
            f"the adapter {folder} was trained on a {trained_on!r} with other parameter "
            f"shapes (shape hash {recorded}, this model's {shapes_fingerprint(model)})")
    return meta


def merge_adapter(model: torch.nn.Module, folder: Path, *, base_name: str) -> torch.nn.Module:
    """Check (:func:`check_adapter`) and merge the adapter in ``folder`` into ``model``.

    Returns:
        The plain HF model with each target weight replaced by ``W + (alpha / r) B A``
        (``peft``'s ``merge_and_unload``), in eval mode.

    Raises:
        AdapterMismatchError: the adapter does not fit the model.
    """
    from peft import PeftModel

    check_adapter(model, folder, base_name=base_name)
    merged = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    return merged.eval()


def load_adapted(
    base: str,
    folder: Path,
    *,
    dtype: torch.dtype = torch.float32,
    use_cache: bool = True,
    rebuild_hint: str = "",
) -> tuple[Any, Any]:
    """``(hf_model, tokenizer)``: the base model (any :func:`headprobe.catalogue.load_model`
    spec) loaded in fp32, the adapter in ``folder`` merged into it, then cast to ``dtype``.

    Raises:
        ModelUnavailableError: the adapter folder or one of its files is missing (the message
            says ``rebuild_hint``), or the base cannot be loaded.
        AdapterMismatchError: the adapter does not fit the base model.
    """
    from headprobe.gguf import cast_parameters
    from headprobe.sources import load_hf_model

    folder = Path(folder)
    require_adapter_files(folder, rebuild_hint)
    model, tokenizer = load_hf_model(base, dtype=torch.float32, use_cache=use_cache)
    merged = merge_adapter(model, folder, base_name=base)
    cast_parameters(merged, dtype)
    return merged, tokenizer


def load_adapted_model(
    base: str,
    folder: str | Path,
    *,
    name: str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    use_cache: bool = True,
) -> tuple[Any, Any]:
    """``(bridge, spec)`` of ``base`` with the adapter in ``folder`` merged, like
    :func:`headprobe.catalogue.load_model` (``name``: the spec's name, default the folder's)."""
    from headprobe.models import resolve_dtype, wrap_hf_model
    from headprobe.placement import resolve_device
    from headprobe.sources import PACKAGED_MODELS

    folder = Path(folder)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    model, tokenizer = load_adapted(base, folder, dtype=torch_dtype, use_cache=use_cache)
    packaged = PACKAGED_MODELS.get(base)
    return wrap_hf_model(model, tokenizer, name=name or folder.name,
                         hf_name=packaged.hf_name if packaged else base, device=torch_device,
                         dtype=torch_dtype)
