"""Where a model's weights live and run: the device of a model on one device
(:func:`resolve_device`) and accelerate device maps that spread one model over several GPUs,
a GPU and the CPU, or the disk (:func:`dispatch_hf_model`).

headprobe dispatches the Hugging Face model with accelerate's ``dispatch_model`` before the
TransformerLens bridge is built around it, so the bridge's hooks run inside accelerate's
(which move inputs and load offloaded weights); the modules the layer runner
(:mod:`headprobe.runtime.layers`) calls directly get hooks of their own
(:func:`runner_paths`). Written by hand because neither accelerate nor TransformerLens checks
a map against a bridge's needs or keeps the runner's modules whole.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch

from headprobe.arch import architecture_facts, vision_language_facts
from headprobe.errors import ModelUnavailableError, UnknownModelError


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a ``torch.device``; ``None`` picks CUDA when available, else the CPU.

    Raises:
        ModelUnavailableError: a CUDA device was asked for but CUDA is not available.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise UnknownModelError(f"unknown device {device!r}; use 'cpu', 'cuda' or "
                                "'cuda:<index>'") from error
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailableError(
            f"device {device!r} asked for, but CUDA is not available here; use device='cpu'")
    return chosen


def parameter_dtype_device(model: torch.nn.Module) -> tuple[torch.dtype, torch.device]:
    """The dtype and device of the first floating parameter (fp32 / CPU for none)."""
    for param in model.parameters():
        if param.is_floating_point():
            return param.dtype, param.device
    return torch.float32, torch.device("cpu")



# ---------------------------------------------------------------------------------------------
# Device maps: one model over several devices (Hugging Face accelerate)

# String device maps, as Hugging Face's from_pretrained takes them ("auto" is "balanced").
def model_device(model: Any) -> torch.device:
    """Where the model's inputs go: the device of its first parameter, or for a model
    dispatched over several devices its main device (:func:`hf_input_device`)."""
    return hf_input_device(model.original_model)


def hf_input_device(hf_model: torch.nn.Module) -> torch.device:
    """The device a Hugging Face model takes its inputs on and returns its outputs on.

    A model dispatched by accelerate (``dispatch_model``) carries a hook on its top module
    whose execution device is the main device (inputs are moved there, outputs come back on
    the input's device); otherwise the first parameter's device that is not ``meta``
    (CPU when there is none).
    """
    device = _execution_device(getattr(hf_model, "_hf_hook", None))
    if device is not None:
        return device
    for param in hf_model.parameters():
        if param.device.type != "meta":
            return param.device
    return torch.device("cpu")


def _execution_device(hook: Any) -> torch.device | None:
    """The execution device of an accelerate hook (or of the first hook of a sequence)."""
    if hook is None:
        return None
    for inner in getattr(hook, "hooks", ()):  # SequentialHook
        found = _execution_device(inner)
        if found is not None:
            return found
    device = getattr(hook, "execution_device", None)
    if device is None:
        return None
    return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)


@contextmanager
def onloaded(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Within the block, the weights of ``module`` and its submodules that accelerate offloaded
    (``meta`` placeholders of a model dispatched with ``"cpu"`` / ``"disk"`` entries) are
    loaded on their execution devices; they are offloaded again afterwards, also on error.
    A no-op for modules without offloaded weights. Read weights inside the block and copy
    what is kept (``.detach().clone()`` or ``.to(...)``)."""
    with ExitStack() as stack:
        hooked = [m for m in module.modules() if "_hf_hook" in vars(m)]
        if hooked:
            from accelerate.utils import align_module_device

            for submodule in hooked:
                stack.enter_context(align_module_device(submodule))
        yield module


DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_OFFLOAD_TARGETS = ("cpu", "disk")


def dispatch_hf_model(
    hf_model: torch.nn.Module,
    device_map: str | Mapping[str, Any],
    *,
    main_device: str | torch.device | None = None,
    offload_folder: str | os.PathLike[str] | None = None,
    max_memory: Mapping[int | str, int | str] | None = None,
    keep_whole: tuple[str, ...] = (),
) -> dict[str, str]:
    """Spread ``hf_model`` over devices with accelerate's ``dispatch_model``; returns the map
    applied (``{module path: device}``, devices as ``"cuda:0"``, ``"cpu"``, ``"disk"``).

    accelerate puts a hook on every mapped module that moves the module's inputs to its
    execution device (and, for ``"cpu"`` / ``"disk"`` entries, loads its weights there for
    the call). Entries mapped to ``"cpu"`` / ``"disk"`` run on ``main_device`` (default: the
    map's first accelerator, else the CPU): with ``main_device="cpu"`` the ``"cpu"`` entries
    run on the CPU. The model's inputs go to ``main_device`` and its outputs come back on
    the inputs' device.

    Args:
        device_map: one of :data:`DEVICE_MAP_STRATEGIES` (accelerate's
            ``infer_auto_device_map`` within ``max_memory``; decoder layers are never split),
            or ``{module path: device}`` covering every weight once, paths as in
            ``hf_model.named_modules()`` (``""``: the whole model), devices an int (CUDA
            index), ``"cuda:1"``, ``"cpu"`` or ``"disk"``.
        offload_folder: where ``"disk"`` weights are written, in a fresh subfolder
            (``headprobe-offload-*``) per call, which is left for the caller to delete.
        keep_whole: module paths that must get hooks of their own because headprobe calls
            them directly (the layer runner: embedding, each decoder layer, final norm,
            unembedding, rotary table): a map entry containing one of them is replaced by
            its children, and a path the map leaves out (a module holding only
            non-persistent buffers) is placed on the main device.

    Raises:
        ModelUnavailableError: accelerate is not installed, or a CUDA device is absent.
        UnknownModelError: an unknown strategy or module path, weights the map leaves out or
            maps twice, tied weights mapped to different devices, ``"meta"``, ``"disk"``
            without ``offload_folder``, or ``max_memory`` with an explicit map.
    """
    try:
        import accelerate
    except ImportError as error:
        raise ModelUnavailableError(
            "device_map needs Hugging Face accelerate, which is not installed: pip install "
            "accelerate (or load the model on one device: device_map=None)") from error
    if isinstance(device_map, str):
        placement = _auto_device_map(hf_model, device_map, max_memory)
    elif isinstance(device_map, Mapping):
        if max_memory is not None:
            raise UnknownModelError("max_memory budgets a string device_map ('auto', ...); an "
                                    "explicit {module: device} map takes none")
        placement = _checked_device_map(hf_model, device_map)
    else:
        raise UnknownModelError(f"device_map must be one of {', '.join(DEVICE_MAP_STRATEGIES)} "
                                f"or a {{module path: device}} dict, got {device_map!r}")
    main = (resolve_device(main_device) if main_device is not None
            else _first_accelerator(placement.values()))
    split = len(set(placement.values())) > 1 or "disk" in placement.values()
    if split:
        placement = _split_for_runner(hf_model, placement, keep_whole, _device_name(main))
    _check_tied(hf_model, placement)
    offload_dir = None
    if "disk" in placement.values():
        if offload_folder is None:
            disk = [path for path, where in placement.items() if where == "disk"]
            raise UnknownModelError(
                f"device_map puts {', '.join(disk[:4])}{' ...' if len(disk) > 4 else ''} on "
                "'disk' but no offload_folder was given; pass offload_folder=<a folder>")
        folder = Path(offload_folder).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        offload_dir = tempfile.mkdtemp(prefix="headprobe-offload-", dir=folder)
    # main device as a string: accelerate compares it with "cpu" to decide what is offloaded;
    # skip_keys (the KV cache) as Hugging Face's from_pretrained passes them
    skip = getattr(hf_model, "_skip_keys_device_placement", None)
    accelerate.dispatch_model(hf_model, device_map=placement, main_device=str(main),
                              offload_dir=offload_dir, skip_keys=sorted(skip) if skip else None)
    hf_model.hf_device_map = dict(placement)
    return dict(placement)


def placed_map(hf_model: torch.nn.Module) -> dict[str, str]:
    """The ``hf_device_map`` of a model accelerate spread over several devices (or the disk);
    empty for a model on one device (see :func:`is_placed`)."""
    placed = getattr(hf_model, "hf_device_map", None) or {}
    named = {path: _device_name(where) for path, where in placed.items()}
    return named if len(set(named.values())) > 1 or "disk" in named.values() else {}


def is_placed(hf_model: torch.nn.Module) -> bool:
    """The one placement predicate: whether a device map spread ``hf_model`` over several
    devices or put weights on the disk (accelerate then hooks its modules and may keep
    ``meta`` placeholders, so weights are read through :func:`onloaded`). A one-device map
    (``from_pretrained(device_map="cuda")``: ``{"": 0}``) leaves a plain model: not placed."""
    return bool(placed_map(hf_model))


def _device_name(where: Any) -> str:
    """A device map value as a string (``1`` -> ``"cuda:1"``, ``"cuda"`` -> ``"cuda:0"``),
    checked: ``"disk"``, the CPU or a device that exists here."""
    if isinstance(where, bool):
        raise UnknownModelError(f"device_map value {where!r} is not a device")
    if isinstance(where, int):
        where = f"cuda:{where}"
    text = str(where).strip().lower()
    if text == "disk":
        return text
    if text == "meta":
        raise UnknownModelError("device_map value 'meta' holds no weights; use 'disk' (with "
                                "offload_folder=) or 'cpu' to offload a module")
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError) as error:
        raise UnknownModelError(f"device_map value {where!r} is not a device; use a CUDA index "
                                "(0), 'cuda:0', 'cpu' or 'disk'") from error
    if device.type == "cuda":
        index = 0 if device.index is None else device.index
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if index >= count:
            raise ModelUnavailableError(
                f"device_map asks for {where!r}, but this machine has {count} CUDA device(s); "
                "map the modules to 'cpu' / 'disk' or to existing devices")
        return f"cuda:{index}"
    return str(device)


def _first_accelerator(devices: Any) -> torch.device:
    """The first device of a map that is not ``"cpu"`` / ``"disk"`` (the CPU if none)."""
    for where in devices:
        if where not in _OFFLOAD_TARGETS:
            return torch.device(where)
    return torch.device("cpu")


def map_main_device(device_map: str | Mapping[str, Any]) -> str:
    """The main device a map will get, for picking the default dtype before the model is
    dispatched (a bad map is reported later by :func:`dispatch_hf_model`)."""
    if isinstance(device_map, str):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        values = [_device_name(where) for where in dict(device_map).values()]
    except (UnknownModelError, ModelUnavailableError, TypeError, ValueError):
        return "cpu"
    return str(_first_accelerator(values))


def _auto_device_map(hf_model: torch.nn.Module, strategy: str,
                     max_memory: Mapping[int | str, int | str] | None) -> dict[str, str]:
    """accelerate's placement for a string strategy (decoder layers kept whole)."""
    from accelerate.utils import get_balanced_memory, infer_auto_device_map

    if strategy not in DEVICE_MAP_STRATEGIES:
        raise UnknownModelError(f"unknown device_map {strategy!r}; use one of "
                                f"{', '.join(DEVICE_MAP_STRATEGIES)} or a {{module: device}} dict")
    no_split = sorted(getattr(hf_model, "_no_split_modules", None) or [])
    dtype = parameter_dtype_device(hf_model)[0]
    budget = dict(max_memory) if max_memory is not None else None
    if strategy != "sequential":
        budget = get_balanced_memory(hf_model, max_memory=budget, no_split_module_classes=no_split,
                                     dtype=dtype, low_zero=strategy == "balanced_low_0")
    inferred = infer_auto_device_map(hf_model, max_memory=budget,
                                     no_split_module_classes=no_split, dtype=dtype)
    return {path: _device_name(where) for path, where in inferred.items()}


def _checked_device_map(hf_model: torch.nn.Module, device_map: Mapping[str, Any]
                        ) -> dict[str, str]:
    """An explicit map with known module paths, each weight mapped exactly once."""
    modules = dict(hf_model.named_modules())
    unknown = [path for path in device_map if not isinstance(path, str) or path not in modules]
    if unknown:
        examples = [name for name in modules if name and name.count(".") <= 1][:6]
        raise UnknownModelError(
            f"device_map names modules that {type(hf_model).__name__} does not have: "
            f"{unknown}; use Hugging Face module paths such as {', '.join(examples)} "
            "(``hf_model.named_modules()``; '' is the whole model)")
    placement = {path: _device_name(where) for path, where in device_map.items()}
    paths = list(placement)
    for outer in paths:
        inner = [p for p in paths if p != outer and (outer == "" or p.startswith(outer + "."))]
        if inner:
            raise UnknownModelError(f"device_map maps {outer!r} and, inside it, {inner[:3]}; "
                                    "give each weight one device (map the parts instead)")
    missing = [name for name in hf_model.state_dict()
               if not any(p == "" or name.startswith(p + ".") for p in paths)]
    if missing:
        raise UnknownModelError(
            f"device_map gives no device to {len(missing)} weight(s): {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}; map their modules too")
    return placement


def _split_for_runner(hf_model: torch.nn.Module, placement: dict[str, str],
                      keep_whole: tuple[str, ...], main: str) -> dict[str, str]:
    """``placement`` with every entry that contains a ``keep_whole`` path replaced by its
    children (same device), and uncovered ``keep_whole`` paths put on ``main``."""
    modules = dict(hf_model.named_modules())
    wanted = [path for path in keep_whole if path in modules]

    def contains(outer: str, path: str) -> bool:
        return outer == "" or path.startswith(outer + ".")

    changed = True
    while changed:
        changed = False
        out: dict[str, str] = {}
        for outer, where in placement.items():
            module = modules[outer]
            own = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
            if not own and any(contains(outer, path) for path in wanted):
                prefix = f"{outer}." if outer else ""
                for child, _ in module.named_children():
                    out[prefix + child] = where
                changed = True
            else:
                out[outer] = where
        placement = out
    for path in wanted:
        if not any(path == p or contains(p, path) for p in placement):
            placement[path] = main
    return placement


def _check_tied(hf_model: torch.nn.Module, placement: dict[str, str]) -> None:
    """Tied weights (e.g. an embedding shared with the unembedding) must share a device."""
    from accelerate.utils import find_tied_parameters

    def device_of(name: str) -> str:
        covering = [p for p in placement if p == "" or name == p or name.startswith(p + ".")]
        return placement[max(covering, key=len)] if covering else "?"

    for group in find_tied_parameters(hf_model):
        devices = {name: device_of(name) for name in group}
        if len(set(devices.values())) > 1:
            modules = sorted({name.rsplit(".", 1)[0] for name in group})
            raise UnknownModelError(
                f"tied weights {sorted(group)} are mapped to different devices ({devices}); "
                f"map {' and '.join(modules)} to the same device")


def runner_paths(config: Any) -> tuple[str, ...]:
    """The HF modules headprobe's layer runner calls directly (:mod:`headprobe.runtime.layers`):
    the embedding, every decoder layer, the final norm, the unembedding and the rotary table
    (from :mod:`headprobe.arch`)."""
    facts = vision_language_facts(config)
    text = getattr(config, "text_config", None) or config
    if facts is None:
        facts = architecture_facts(text.model_type)
    n_layers = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", 0)
    paths = [facts.embed or f"{facts.decoder}.embed_tokens", facts.final_norm, facts.unembed,
             *(f"{facts.layers_path}.{index}" for index in range(n_layers))]
    if facts.rotary is not None:
        paths.append(facts.rotary)
    return tuple(paths)


@contextlib.contextmanager
def mixed_placement_allowed(active: bool) -> Iterator[None]:
    """While booting a bridge around a model headprobe dispatched, let TransformerLens accept a
    map that mixes accelerators with ``"cpu"`` / ``"disk"`` entries.

    TransformerLens 4.3 refuses such ``hf_device_map``s (``is_mixed_offload_gpu``) only
    because it has not verified them on a GPU; headprobe's tests check them
    (``tests/test_device_map.py``). The check is waived for the boot and restored
    afterwards, even on error.
    """
    if not active:
        yield
        return
    try:
        multi_gpu = importlib.import_module("transformer_lens.utilities.multi_gpu")
    except ImportError:
        yield
        return
    original = getattr(multi_gpu, "is_mixed_offload_gpu", None)
    if original is None:
        yield
        return
    multi_gpu.is_mixed_offload_gpu = lambda values: False
    try:
        yield
    finally:
        multi_gpu.is_mixed_offload_gpu = original
