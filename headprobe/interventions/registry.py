"""The method table (:data:`METHODS`) and the entry points that attach a method's hooks."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from headprobe.errors import InterventionError, UnknownMethodError
from headprobe.interventions.heads import Factory, HookList
from headprobe.interventions.means import mean_ablation, resample_ablation
from headprobe.interventions.output import (
    add_to_output,
    scale_output,
    scale_value,
    zero_ablation,
)
from headprobe.interventions.pattern import redistribute_sink, set_pattern
from headprobe.interventions.query import uniform_attention
from headprobe.interventions.window import streaming_attention
from headprobe.registry import unknown_name_message
from headprobe.runtime.hooks import attached


@dataclass(frozen=True)
class InterventionMethod:
    """A named intervention for ``--method`` and :func:`intervene`.

    Attributes:
        name: registry name.
        kind: ``ablation`` (removes a head's contribution) or ``steering``.
        acts_on: ``z``, ``query`` or ``pattern``.
        factory: ``factory(model, heads, **options) -> HookList``.
        description: one line.
        needs: option names that must be given (``reference`` for ``mean`` ...).
        unit: what ``heads`` name: ``head`` (``(layer, query head)``) or ``kv_head``
            (``(layer, kv head)``, every query head of the group).
    """

    name: str
    kind: Literal["ablation", "steering"]
    acts_on: Literal["z", "query", "pattern"]
    factory: Factory
    description: str
    needs: tuple[str, ...] = ()
    unit: Literal["head", "kv_head"] = "head"


METHODS: dict[str, InterventionMethod] = {
    "zero": InterventionMethod("zero", "ablation", "z", zero_ablation,
                               "head output z set to 0"),
    "mean": InterventionMethod("mean", "ablation", "z", mean_ablation,
                               "z replaced by its mean over reference prompts",
                               needs=("reference",)),
    "resample": InterventionMethod("resample", "ablation", "z", resample_ablation,
                                   "z taken from a source prompt at the same positions",
                                   needs=("sources",)),
    "uniform_attention": InterventionMethod(
        "uniform_attention", "ablation", "query", uniform_attention,
        "query scaled by eps after any q norm: uniform attention (Zhou et al. 2025)"),
    "scale_output": InterventionMethod("scale_output", "ablation", "z", scale_output,
                                       "z multiplied by a factor (default 1e-5, Zhou et al. 2025)"),
    "scale_value": InterventionMethod("scale_value", "steering", "z", scale_value,
                                      "value vectors scaled by alpha (Yu et al. 2023)"),
    "add_to_output": InterventionMethod("add_to_output", "steering", "z", add_to_output,
                                        "a vector added to the head output",
                                        needs=("vector",)),
    "set_pattern": InterventionMethod("set_pattern", "steering", "pattern", set_pattern,
                                      "attention pattern replaced by a given one",
                                      needs=("pattern",)),
    "redistribute_sink": InterventionMethod(
        "redistribute_sink", "steering", "pattern", redistribute_sink,
        "keep beta of the sink's attention, spread the rest (Baek et al. 2025)"),
    "streaming_attention": InterventionMethod(
        "streaming_attention", "ablation", "pattern", streaming_attention,
        "(layer, kv head) pairs restricted to sink + recent window (DuoAttention, Xiao et al. "
        "2024)", unit="kv_head"),
}

ABLATION_METHODS = tuple(name for name, m in METHODS.items() if m.kind == "ablation")


# Options that only Python can pass (tensors): methods needing one cannot be named in a
# recipe or on the command line.
TENSOR_OPTIONS = frozenset({"vector", "pattern"})


def experiment_methods() -> list[str]:
    """Methods an ablation experiment can take by name (CLI ``--method``, recipe ``method``):
    on query heads, and needing no tensor option."""
    return [name for name, entry in METHODS.items()
            if entry.unit == "head" and not TENSOR_OPTIONS & set(entry.needs)]


def get_method(name: str) -> InterventionMethod:
    """The method registered as ``name``; :class:`UnknownMethodError` listing the known ones."""
    if name not in METHODS:
        raise UnknownMethodError(unknown_name_message("intervention method", name, METHODS))
    return METHODS[name]


def build_hooks(model: Any, heads: Iterable[Sequence[int]], method: str | Factory,
                **options: Any) -> HookList:
    """The hooks of ``method`` (a name in :data:`METHODS` or a factory) on ``heads``."""
    if callable(method):
        return method(model, heads, **options)
    entry = get_method(method)
    missing = [name for name in entry.needs if options.get(name) is None
               and not (name == "reference" and options.get("means") is not None)
               and not (name == "sources" and options.get("source") is not None)]
    if missing:
        raise InterventionError(f"method {method!r} needs the option(s) {missing}")
    return entry.factory(model, heads, **options)


@contextmanager
def intervene(model: Any, heads: Iterable[Sequence[int]], method: str | Factory = "zero",
              **options: Any) -> Iterator[Any]:
    """Apply ``method`` to ``heads`` inside a ``with`` block; the hooks go away afterwards.

    Example::

        with intervene(model, [(5, 1), (7, 3)], "uniform_attention"):
            logits = model(tokens)
    """
    hooks = build_hooks(model, heads, method, **options)
    with attached(model, hooks):
        yield model


@contextmanager
def intervene_many(model: Any, hook_lists: Sequence[HookList]) -> Iterator[Any]:
    """Attach several factories' hooks at once (e.g. two methods on different heads)."""
    hooks = [hook for hooks in hook_lists for hook in hooks]
    with attached(model, hooks):
        yield model
