"""The one catalogue of model names: :func:`load_model` and :func:`available_models`.

A name is resolved, in this order, as

- ``tiny:<kind>``: a random-weight test model (:mod:`headprobe.tiny`);
- a head type's model (a model organism such as ``smollm2-135m-safety``, the project's OCR
  model ``ocr-reader``): a :class:`ModelSource` that the head type's folder declares in its
  ``HEAD_TYPE.models`` and :func:`headprobe.registry.model_loaders` names as a string;
- anything :func:`headprobe.sources.load_hf` takes: a packaged offline GGUF model
  (:data:`headprobe.packaged.PACKAGED_MODELS`), a local ``.gguf`` file or Hugging Face model
  folder, a hub name.

The Hugging Face model is then wrapped in a bridge by :func:`headprobe.models.wrap_hf_model`
(dtype, device, device map), so :mod:`headprobe.models` knows no model by name.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from headprobe.arch import ModelSpec
from headprobe.errors import UnknownModelError
from headprobe.models import resolve_dtype, wrap_hf_model
from headprobe.placement import map_main_device, resolve_device
from headprobe.registry import model_loaders, resolve
from headprobe.sources import PACKAGED_MODELS, load_hf, packaged_status
from headprobe.tiny import TINY_KINDS, tiny_model

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
TINY_PREFIX = "tiny:"  # "tiny:llama-gqa" etc.: random-weight test models, see headprobe.tiny


@dataclass(frozen=True)
class ModelSource:
    """A named model that a head type ships (a model organism, the OCR model).

    Attributes:
        name: the name :func:`load_model` takes.
        description: one line for ``headprobe models``.
        load: ``load(dtype=torch.dtype, use_cache=bool)`` ->
            ``(hf_model, tokenizer, hf_name, processor)``: the Hugging Face model in ``dtype``
            (``processor`` None for a text model); :func:`load_model` wraps it. Raises
            :class:`~headprobe.errors.ModelUnavailableError` (saying how to build the
            model) when its files are missing.
        status: ``status()`` -> ``{"installed": bool, "cached": bool, "install": str}``,
            whether it can be loaded here and how to make it loadable.
    """

    name: str
    description: str
    load: Callable[..., tuple[Any, Any, str, Any]]
    status: Callable[[], dict[str, Any]]


def model_sources() -> dict[str, ModelSource]:
    """``{name: ModelSource}`` of every head type's models, in :data:`headprobe.registry.
    HEAD_TYPES` order."""
    found: dict[str, ModelSource] = {}
    for name, target in model_loaders().items():
        source = resolve(target)
        if not isinstance(source, ModelSource) or source.name != name:
            raise TypeError(f"{target} is not a ModelSource named {name!r}")
        found[name] = source
    return found


def available_models() -> list[dict[str, Any]]:
    """What can be loaded here and now: one row per packaged model, then one per head-type
    model (``name``, ``installed``, ``cached``, ``description``, ``install``)."""
    rows = [packaged_status(name) for name in PACKAGED_MODELS]
    for source in model_sources().values():
        rows.append({"name": source.name, **source.status(), "description": source.description})
    return [{key: row[key] for key in ("name", "installed", "cached", "description", "install")}
            for row in rows]


def load_model(
    spec: str | os.PathLike[str] = DEFAULT_MODEL,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    use_cache: bool = True,
    device_map: str | Mapping[str, Any] | None = None,
    offload_folder: str | os.PathLike[str] | None = None,
    max_memory: Mapping[int | str, int | str] | None = None,
) -> tuple[Any, ModelSpec]:
    """Load a model and wrap it in a TransformerLens ``TransformerBridge``.

    Args:
        spec: a packaged model name (``smollm2-135m-instruct``, ``gemma3-270m``, or the
            safety-tuned organism ``smollm2-135m-safety``: SmolLM2 with the LoRA adapter of
            ``data/adapters/smollm2-135m-safety`` merged), ``ocr-reader`` (the project's
            OCR model, a tiny LLaVA in ``data/ocr_model``), a local ``.gguf`` file, a local
            Hugging Face model folder (a causal LM, or a vision-language model with its
            processor), a hub name (online only), or ``tiny:<kind>`` for a random-weight
            test model (:mod:`headprobe.tiny`). Model organisms and the OCR model are the
            head types' :class:`ModelSource` entries (:func:`headprobe.registry.model_loaders`).
        device: torch device; ``None`` picks CUDA when available, else CPU.
        dtype: parameter dtype, a torch dtype or a name (``"float32"``, ``"fp32"``,
            ``"bfloat16"``, ``"bf16"``, ``"float16"``); ``None``: fp32 on the CPU, bf16 on
            CUDA. Recorded in ``model_spec.dtype`` (and the device in ``model_spec.device``).
        use_cache: reuse / write the dequantized safetensors copy of a GGUF file.
        device_map: spread the model over several devices with Hugging Face accelerate
            (:func:`headprobe.placement.dispatch_hf_model`): ``"auto"`` / ``"balanced"`` /
            ``"balanced_low_0"`` / ``"sequential"`` (accelerate's placement, within
            ``max_memory``), or ``{module path: device}`` with HF module paths
            (``"model.layers.3"``) and devices ``"cuda:1"`` / ``1``, ``"cpu"`` or ``"disk"``
            (weights written under ``offload_folder``). ``device`` is then the main device:
            inputs go there, and modules mapped to ``"cpu"`` / ``"disk"`` keep their weights
            there but run on it (accelerate's offload); ``device="cpu"`` runs the ``"cpu"``
            modules on the CPU instead. The default dtype follows the main device (bf16 on
            CUDA). ``None``: the whole model on ``device``.
        offload_folder: folder for the weights of ``"disk"`` entries (a fresh subfolder is
            made in it for each load).
        max_memory: ``{device: bytes or "10GiB"}`` budget of a string ``device_map``.

    Returns:
        ``(bridge, model_spec)``; with a device map ``model_spec.device`` is the main device
        and ``model_spec.device_map`` the map applied.

    Raises:
        UnknownModelError: the spec (or the dtype / device name, or the device map) is none
            of the above.
        ModelUnavailableError: the spec is known but cannot be loaded here (or CUDA was
            asked for and is absent, or an organism's adapter folder is missing).
        ModelLoadError: the model's files are there but cannot be read (a malformed
            ``config.json``).
        AdapterMismatchError: an organism's adapter does not fit its base model.
    """
    name = str(spec)
    placement = {"device_map": device_map, "offload_folder": offload_folder,
                 "max_memory": max_memory}
    if device_map is None:
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
    else:
        torch_device = resolve_device(device) if device is not None else None
        torch_dtype = resolve_dtype(dtype, torch_device or map_main_device(device_map))
    if name.startswith(TINY_PREFIX):
        kind = name[len(TINY_PREFIX):]
        if kind not in TINY_KINDS:
            raise UnknownModelError(f"unknown tiny model {name!r}; kinds: {', '.join(TINY_KINDS)}")
        bridge, model_spec = tiny_model(kind, device=torch_device, dtype=torch_dtype,
                                        **placement)
    else:
        sources = model_sources()
        if name in sources:
            hf_model, tokenizer, hf_name, processor = sources[name].load(
                dtype=torch_dtype, use_cache=use_cache)
        else:
            hf_model, tokenizer, hf_name, processor = load_hf(name, dtype=torch_dtype,
                                                              use_cache=use_cache)
        bridge, model_spec = wrap_hf_model(hf_model, tokenizer, name=name, hf_name=hf_name,
                                           device=torch_device, dtype=torch_dtype,
                                           processor=processor, **placement)
    where = model_spec.device
    if model_spec.device_map:
        devices = sorted({device for _, device in model_spec.device_map})
        where = f"{where} (device map over {', '.join(devices)})"
    log.info("loaded %s on %s in %s", model_spec.name, where, model_spec.dtype)
    return bridge, model_spec


__all__ = [
    "DEFAULT_MODEL",
    "TINY_PREFIX",
    "ModelSource",
    "available_models",
    "load_model",
    "model_sources",
]
