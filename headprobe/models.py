"""The bridge wrapper: a loaded Hugging Face model wrapped in a TransformerLens
``TransformerBridge`` (hooks on every head) and described by a :class:`~headprobe.arch.ModelSpec`;
dtype names.

:func:`wrap_hf_model` wraps a model that is already loaded; the bridge runs the Hugging Face
model itself, with eager attention, so logits equal Hugging Face's. :func:`describe_model`
gives the spec of any bridge. Precision is a parameter: ``dtype`` is a torch dtype or a name
(``"float32"``, ``"bf16"``, ...; :func:`resolve_dtype`), by default fp32 on the CPU and bf16
on CUDA, recorded in ``spec.dtype`` / ``spec.device``. A vision-language model's processor is
kept as ``bridge.headprobe_processor`` (used by :func:`headprobe.inputs.encode` for images).

Larger than one device: ``device_map=`` (``"auto"`` or ``{module path: device}``, with
``offload_folder=`` for ``"disk"`` entries) spreads the Hugging Face model over GPUs, the CPU
and the disk with accelerate's ``dispatch_model`` (:mod:`headprobe.placement`) before the bridge
wraps it; each module's accelerate hook moves its inputs to its device (and loads offloaded
weights for the call), so bridge hooks, the layer runner and the fast scans work unchanged.
``spec.device`` is then the main device (inputs and outputs) and ``spec.device_map`` the map.

Where models come from (packaged GGUF files, local folders, the hub) is
:mod:`headprobe.sources`; resolving a model name (packaged, ``tiny:``, organisms, the OCR
model) is :func:`headprobe.catalogue.load_model`.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from headprobe.arch import ModelSpec, spec_from_hf_config
from headprobe.errors import UnknownModelError
from headprobe.gguf import ARCHITECTURES_BY_MODEL_TYPE, cast_parameters
from headprobe.placement import (
    DEVICE_MAP_STRATEGIES as DEVICE_MAP_STRATEGIES,  # re-exported
)
from headprobe.placement import (
    dispatch_hf_model,
    hf_input_device,
    map_main_device,
    mixed_placement_allowed,
    parameter_dtype_device,
    placed_map,
    resolve_device,
    runner_paths,
)

# Names accepted for ``dtype=`` (and ``--dtype``).
DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device | None = None
                  ) -> torch.dtype:
    """The parameter dtype: ``dtype`` as given, or by default fp32 on the CPU, bf16 on CUDA.

    Accepts a floating torch dtype or one of :data:`DTYPE_NAMES` (``"float32"``, ``"fp32"``,
    ``"bfloat16"``, ``"bf16"``, ``"float16"``, ``"fp16"``).

    Raises:
        UnknownModelError: an unknown name or a non-floating dtype.
    """
    if dtype is None:
        return torch.bfloat16 if resolve_device(device).type == "cuda" else torch.float32
    if isinstance(dtype, str):
        key = dtype.lower().removeprefix("torch.")
        if key not in DTYPE_NAMES:
            raise UnknownModelError(
                f"unknown dtype {dtype!r}; use one of {', '.join(DTYPE_NAMES)}")
        return DTYPE_NAMES[key]
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise UnknownModelError(f"dtype must be a floating torch dtype or a name, got {dtype!r}")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def wrap_hf_model(
    hf_model: Any,
    tokenizer: Any,
    *,
    name: str,
    hf_name: str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    processor: Any = None,
    device_map: str | Mapping[str, Any] | None = None,
    offload_folder: str | os.PathLike[str] | None = None,
    max_memory: Mapping[int | str, int | str] | None = None,
) -> tuple[Any, ModelSpec]:
    """Wrap an already loaded Hugging Face model in a bridge and describe it.

    The model is moved to ``device`` (``None``: CUDA when available, else CPU) and, when
    ``dtype`` is given, its floating parameters are cast to it (buffers such as rotary
    frequencies stay as they are); ``dtype=None`` keeps the model's own dtype. ``processor``
    (a vision-language model's) is kept as ``bridge.headprobe_processor``.

    ``device_map`` (with ``offload_folder``, ``max_memory``): the model is cast, then spread
    over devices by :func:`headprobe.placement.dispatch_hf_model` (``device``: the main device,
    ``None``: the map's first accelerator, else the CPU) before the bridge wraps it, so the
    bridge's hooks run inside accelerate's; the map is recorded in ``spec.device_map``. A model
    the caller already spread over devices (``from_pretrained(..., device_map=...)``, for one
    larger than the CPU's memory) keeps its placement: pass ``device_map=None`` and
    ``dtype=None`` (its map should give each decoder layer, the embedding, the final norm and
    the unembedding entries of their own, as accelerate's ``"auto"`` maps do).
    """
    from transformer_lens.model_bridge import TransformerBridge

    config = hf_model.config
    if not getattr(config, "architectures", None):
        arch = ARCHITECTURES_BY_MODEL_TYPE.get(config.model_type)
        if arch is None:
            raise UnknownModelError(
                f"{name}: config has no `architectures` and model_type {config.model_type!r} "
                "is not one headprobe knows how to fill in"
            )
        config.architectures = [arch]
    applied = placed_map(hf_model)  # dispatched by the caller (from_pretrained(device_map=))
    if applied and device_map is not None:
        raise UnknownModelError(f"{name} is already spread over devices (hf_device_map); "
                                "pass device_map=None to keep that placement")
    if applied:
        hf_model = hf_model.eval()
        param_dtype = parameter_dtype_device(hf_model)[0]
        if dtype is not None and resolve_dtype(dtype, "cpu") != param_dtype:
            raise UnknownModelError(
                f"{name} was dispatched over devices in {dtype_name(param_dtype)}; its offloaded "
                "weights cannot be cast: load it in the dtype wanted, or pass dtype=None")
        param_device = torch_device = hf_input_device(hf_model)
    elif device_map is None:
        torch_device = resolve_device(device)
        hf_model = hf_model.to(torch_device).eval()
        if dtype is not None:
            cast_parameters(hf_model, resolve_dtype(dtype, torch_device))
        param_dtype, param_device = parameter_dtype_device(hf_model)
    else:
        main = resolve_device(device) if device is not None else None
        hf_model = hf_model.eval()
        if dtype is not None:  # cast while every weight is still real (not yet offloaded)
            cast_parameters(hf_model, resolve_dtype(dtype, main or map_main_device(device_map)))
        applied = dispatch_hf_model(hf_model, device_map, main_device=main,
                                    offload_folder=offload_folder, max_memory=max_memory,
                                    keep_whole=runner_paths(config))
        param_dtype = parameter_dtype_device(hf_model)[0]
        param_device = torch_device = hf_input_device(hf_model)
    with _given_processor(processor), adapter_libraries_waived(processor), \
            mixed_placement_allowed(bool(applied)):
        bridge = TransformerBridge.boot_transformers(
            hf_name or name, hf_model=hf_model, tokenizer=tokenizer, device=torch_device,
            dtype=param_dtype,
        )
    if applied:  # TransformerLens reads the embedding's (possibly meta) parameter device
        bridge.cfg.device = str(param_device)
    bridge.eval()
    model_spec = spec_from_hf_config(
        name,
        config,
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=_pad_token_id(tokenizer),
        dtype=dtype_name(param_dtype),
        device=str(param_device),
        device_map=tuple(applied.items()),
    )
    bridge.headprobe_spec = model_spec
    bridge.headprobe_processor = processor
    return bridge, model_spec


_TL_TRANSFORMERS_SOURCE = "transformer_lens.model_bridge.sources.transformers.source"


@contextlib.contextmanager
def adapter_libraries_waived(processor: Any) -> Iterator[None]:
    """While booting a bridge around a model whose processor headprobe already built, skip
    TransformerLens' check that the architecture's optional libraries are installed.

    TransformerLens 4.3's ``Qwen2_5_VLArchitectureAdapter`` lists ``torchvision`` as required
    and raises ``ImportError`` ("needs the optional torchvision library ... Install with `pip
    install torchvision`") without it, although the model and the adapter never import it:
    only HF's fast image and video processors do, and headprobe hands the bridge its own
    (PIL) processor. The adapter's ``required_libraries`` is emptied for the boot and
    restored afterwards, even on error.
    """
    if processor is None:
        yield
        return
    from transformer_lens.model_bridge.architecture_adapter import ArchitectureAdapter

    original = ArchitectureAdapter._check_required_libraries
    ArchitectureAdapter._check_required_libraries = lambda self: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        ArchitectureAdapter._check_required_libraries = original  # type: ignore[method-assign]


@contextlib.contextmanager
def _given_processor(processor: Any) -> Iterator[None]:
    """While booting a bridge, hand it ``processor`` instead of letting TransformerLens look
    one up by name.

    For a multimodal model TransformerLens 4.3 calls ``AutoProcessor.from_pretrained(name)``
    (a hub request for an in-memory model) and, when that fails, tries to pip-install
    torchvision. When headprobe already has the processor, that lookup is replaced for the
    duration of the boot (and restored afterwards, even on error).
    """
    if processor is None:
        yield
        return
    try:
        source = importlib.import_module(_TL_TRANSFORMERS_SOURCE)
    except ImportError:
        yield
        return
    original = getattr(source, "load_modality_processor", None)
    if original is None:
        yield
        return

    def attach(bridge: Any, *args: Any, **kwargs: Any) -> None:
        bridge.processor = processor

    source.load_modality_processor = attach
    try:
        yield
    finally:
        source.load_modality_processor = original


def describe_model(model: Any) -> ModelSpec:
    """The :class:`ModelSpec` of a bridge (loaded by headprobe or booted by hand)."""
    spec = getattr(model, "headprobe_spec", None)
    if isinstance(spec, ModelSpec):
        return spec
    tokenizer = model.tokenizer
    param_dtype = parameter_dtype_device(model.original_model)[0]
    return spec_from_hf_config(  # a VLM: text model's sizes, the wrapper's arch entry
        str(getattr(model.cfg, "model_name", "model")),
        model.original_model.config,
        bos_token_id=getattr(tokenizer, "bos_token_id", None),
        pad_token_id=_pad_token_id(tokenizer) if tokenizer is not None else None,
        dtype=dtype_name(param_dtype),
        device=str(hf_input_device(model.original_model)),
        device_map=tuple(placed_map(model.original_model).items()),
    )


def _pad_token_id(tokenizer: Any) -> int | None:
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return None
