"""What every experiment shares: judging conditions under one method, metadata, progress.

A :class:`ConditionRunner` judges a task with one intervention method on many head sets.
Per-head means (``mean``) and resample sources (``resample``) are computed once for the
union of every set, so each condition costs one judging pass.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from headprobe.arch import ModelSpec
from headprobe.errors import InterventionError
from headprobe.experiments.judging import judge_task
from headprobe.inputs import encode_prompts, fingerprint
from headprobe.interventions import (
    HookList,
    build_hooks,
    cache_resample_source,
    compute_head_means,
    get_method,
)
from headprobe.provenance import Timer, result_meta
from headprobe.runtime.hooks import attached
from headprobe.tasks.base import Task
from headprobe.types import Head


class ConditionRunner:
    """Judges ``task`` under ``method`` for any head set (``None``: the clean model)."""

    def __init__(self, model: Any, task: Task, method: str, options: dict[str, Any],
                 all_heads: Sequence[Head], batch_size: int) -> None:
        self.model, self.task, self.method = model, task, method
        self.batch_size = batch_size
        check_method_options(method, options)  # bad method or option: before any work
        self.options = dict(options)
        union = sorted(set(all_heads))
        if method == "mean" and "means" not in self.options:
            reference = self.options.pop("reference", None) or task.prompts
            self.options["means"] = compute_head_means(model, union, reference,
                                                       batch_size=batch_size)
        if method == "resample" and "source" not in self.options:
            sources = self.options.pop("sources", None) or default_sources(task)
            self.options["source"] = cache_resample_source(model, union, sources,
                                                           batch_size=batch_size)
        if method == "resample":
            self.options.setdefault("seed", 0)

    def hooks(self, heads: Sequence[Head]) -> HookList:
        """The method's hooks for ``heads`` (with the shared means / sources)."""
        return build_hooks(self.model, heads, self.method, **self.options)

    def judge(self, heads: Sequence[Head] | None) -> np.ndarray:
        """[N] bool judgements with ``heads`` intervened on (``None``: no intervention)."""
        context = (nullcontext() if heads is None
                   else attached(self.model, self.hooks(heads)))
        with context:
            return judge_task(self.model, self.task, batch_size=self.batch_size)


def check_method_options(method: str, options: dict[str, Any]) -> None:
    """:class:`InterventionError` for an unknown method, a method whose heads are kv heads
    (random control sets are drawn over query heads), or an option its factory lacks."""
    entry = get_method(method)
    if entry.unit != "head":
        raise InterventionError(
            f"method {method!r} takes (layer, kv head) pairs, but ablation experiments draw "
            "random sets of query heads; use the retrieval head type's "
            "kv_budget.plan_accuracy for kv heads")
    factory = entry.factory
    parameters = list(inspect.signature(factory).parameters.values())[2:]  # after model, heads
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    known = {p.name for p in parameters}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InterventionError(
            f"method {method!r} has no option {', '.join(unknown)}; its options: "
            f"{', '.join(sorted(known)) or 'none'}")


def default_sources(task: Task) -> list[str]:
    """Resample sources: the corrupt prompts when every item has one, else the prompts."""
    corrupt = [item.corrupt_prompt for item in task.items]
    if all(c is not None for c in corrupt):
        return [c for c in corrupt if c is not None]
    return task.prompts


def jsonable_options(options: dict[str, Any]) -> dict[str, Any]:
    """Method options for metadata: scalars as they are, tensors etc. as ``<TypeName>``."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, int | float | str | bool) or value is None:
            out[key] = value
        else:
            out[key] = f"<{type(value).__name__}>"
    return out


def experiment_meta(model: Any, spec: ModelSpec, task: Task, *, name: str, description: str,
                    params: dict[str, Any], seed: int, timer: Timer,
                    **extra: Any) -> dict[str, Any]:
    """:func:`headprobe.provenance.result_meta` of an experiment on ``task``.

    Besides the common keys it records the task (``task``, ``task_description``,
    ``task_meta``, ``judge``), ``experiment`` = ``name``, and every parameter both under
    ``params`` and at the top level (as saved results always had them).
    """
    token_lists = encode_prompts(model, task.prompts, spec)  # pixels hashed too
    return result_meta(
        kind="experiment", name=name, spec=spec, params=params,
        fingerprint=fingerprint(token_lists), n_prompts=len(task), seed=seed, timer=timer,
        description=description, experiment=name, task=task.name,
        task_description=task.description, task_meta=task.meta, judge=task.judge,
        **params, **extra)


@contextmanager
def progress_steps(total: int, progress: bool, desc: str) -> Iterator[Callable[[str], None]]:
    """A progress bar of ``total`` steps; yields ``step(label)``, closed even on error."""
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
    try:
        def step(label: str) -> None:
            bar.set_postfix_str(label)
            bar.update(1)

        yield step
    finally:
        bar.close()
