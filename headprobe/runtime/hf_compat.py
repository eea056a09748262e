"""The KV cache on both sides of transformers' 5.24 rename of ``past_key_values`` to ``cache``.

transformers 5.24 renamed the cache argument of every model, decoder layer and attention
from ``past_key_values`` to ``cache`` (the old name is still accepted by the models and
decoder layers, renamed on entry by ``deprecate_kwarg``, until 5.40). A decoder layer now calls
its attention with ``cache=``. TransformerLens 4.3's bridge attention re-implements the
attention and reads the cache only under ``past_key_values`` (or ``layer_past``):
``AttentionBridge._update_kv_cache`` in
``transformer_lens/model_bridge/generalized_components/attention.py``. So with transformers
>= 5.24 a bridged model's KV cache stays empty and every cached decode step attends to its own
columns only.

Two pieces make headprobe's cached routes work on both sides:

- :func:`cache_kwarg` names the cache argument the installed transformers' models and decoder
  layers take (``past_key_values`` before 5.24, ``cache`` from 5.24), so calls pass it under
  that name (no deprecation warning, nothing renamed on the way);
- :func:`bridge_attention_cache` is a context manager that, where transformers passes ``cache``
  and the bridge attention reads ``past_key_values``, attaches to each bridge attention that
  re-implements its forward a keyword pre-hook adding ``past_key_values=cache`` to that
  call's arguments (``cache`` itself is left in place). The hooks live on those modules only,
  for the block only, and are removed on exit, also on error; transformers, TransformerLens,
  the model config and the modules' code are not touched. Before 5.24 it attaches nothing.
  Bridge attentions that delegate to the HF attention (TransformerLens'
  ``AttentionBridge.forward``) get no hook: the HF attention reads ``cache`` itself.

Tested with transformers 5.23 and 5.25 (TransformerLens 4.3): the KV-cached decode equals the
recomputing route on both.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache as _memo
from typing import Any

import torch
import transformers
from packaging.version import Version

__all__ = ["CACHE_RENAMED_IN", "bridge_attention_cache", "cache_kwarg", "needs_bridge_hooks",
           "output_cache"]

# the first transformers release whose models, decoder layers and attentions take ``cache``
CACHE_RENAMED_IN = Version("5.24.0.dev0")
# the name TransformerLens's bridge attention reads the cache under (TransformerLens 4.3,
# ``AttentionBridge._update_kv_cache``)
_BRIDGE_NAME = "past_key_values"


def cache_kwarg(version: str | None = None) -> str:
    """The keyword the HF models and decoder layers take the KV cache under:
    ``"past_key_values"`` before transformers 5.24, ``"cache"`` from 5.24.

    Args:
        version: a transformers version string; ``None``: the installed one.
    """
    installed = Version(transformers.__version__ if version is None else version)
    return "cache" if installed >= CACHE_RENAMED_IN else "past_key_values"


def output_cache(output: Any) -> Any:
    """The cache an HF model output carries (``output.cache`` from 5.24,
    ``output.past_key_values`` before)."""
    return getattr(output, cache_kwarg())


@_memo
def _attention_bridge_class() -> type | None:
    """TransformerLens's base bridge attention class (``None`` where it has none)."""
    try:
        from transformer_lens.model_bridge.generalized_components.attention import (
            AttentionBridge,
        )
    except ImportError:  # pragma: no cover - a TransformerLens without the bridge
        return None
    return AttentionBridge


def _reads_bridge_name(module: torch.nn.Module) -> bool:
    """Whether ``module`` is a bridge attention that updates the cache itself (re-implements
    ``forward``, reading ``past_key_values``) rather than delegating to the HF attention."""
    base = _attention_bridge_class()
    return (base is not None and isinstance(module, base)
            and type(module).forward is not base.forward)


def _add_bridge_name(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Keyword pre-hook: ``past_key_values=cache`` beside ``cache`` (a copy of the kwargs)."""
    if kwargs.get("cache") is not None and kwargs.get(_BRIDGE_NAME) is None:
        kwargs = {**kwargs, _BRIDGE_NAME: kwargs["cache"]}
    return args, kwargs


def needs_bridge_hooks(version: str | None = None) -> bool:
    """Whether the HF decoder layers pass the cache under a name the bridge attention does not
    read (transformers >= 5.24 with TransformerLens's ``past_key_values``)."""
    return cache_kwarg(version) != _BRIDGE_NAME


@contextmanager
def bridge_attention_cache(model: torch.nn.Module) -> Iterator[int]:
    """Within the block, every bridge attention of ``model`` that updates the cache itself
    receives the cache the HF decoder layer passes as ``cache`` also as ``past_key_values``;
    yields the number of attentions hooked (0 before transformers 5.24).

    Enter it around the forward calls that pass a cache, after anything that inspects the
    attention modules' hooks (e.g. :func:`headprobe.runtime.sdpa.fused_attention`): the hooks
    are ordinary module pre-hooks while the block runs.
    """
    handles = []
    try:
        if needs_bridge_hooks():
            for module in model.modules():
                if _reads_bridge_name(module):
                    handles.append(module.register_forward_pre_hook(_add_bridge_name,
                                                                    with_kwargs=True))
        yield len(handles)
    finally:
        for handle in handles:
            handle.remove()
