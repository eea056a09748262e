"""The one task builder: a registered task by name, sized to a model where it asks for one.

Every route that builds a task from its name (the task scans, recipes, ``headprobe ablate`` /
``dose``) goes through :func:`build_task`, so a task whose ``make_task`` takes ``model`` (e.g.
``niah``, which counts context lengths in the model's tokens and renders its chat template)
always gets it, and ``n`` / ``seed`` reach only the tasks that take them.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from headprobe.errors import TaskError
from headprobe.registry import task_maker
from headprobe.tasks.base import Task


def task_parameters(name: str) -> Mapping[str, inspect.Parameter]:
    """The parameters of task ``name``'s ``make_task`` (UnknownTaskError for a bad name)."""
    return inspect.signature(task_maker(name)).parameters


def _takes(parameters: Mapping[str, inspect.Parameter], option: str) -> bool:
    return option in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def check_task_options(name: str, options: Mapping[str, Any]) -> None:
    """Raise :class:`TaskError` naming every option that task ``name`` does not take
    (``model`` is never an option: :func:`build_task` passes the model itself)."""
    if "model" in options:
        raise TaskError(f"task {name!r}: model is not an option; the task gets the model "
                        "it runs on")
    parameters = task_parameters(name)
    unknown = sorted(option for option in options if not _takes(parameters, option))
    if unknown:
        known = ", ".join(p for p in parameters if p != "model") or "none"
        raise TaskError(f"task {name!r} has no option {', '.join(unknown)}; its options: "
                        f"{known}")


def build_task(name: str, model: Any = None, *, n: int | None = None,
               seed: int | None = None, **options: Any) -> Task:
    """Build the registered task ``name``.

    Args:
        name: a registered task (:func:`headprobe.registry.list_tasks`).
        model: the model the task will run on; passed to a ``make_task`` that takes
            ``model`` (required there: such a task depends on the model's tokenizer).
        n, seed: passed where ``make_task`` takes them, ignored otherwise (None: its
            default).
        options: further ``make_task`` options, checked by :func:`check_task_options`.
    """
    check_task_options(name, options)
    parameters = task_parameters(name)
    kwargs = dict(options)
    if n is not None and _takes(parameters, "n"):
        kwargs["n"] = n
    if seed is not None and _takes(parameters, "seed"):
        kwargs["seed"] = seed
    if "model" in parameters:
        if model is None and parameters["model"].default is inspect.Parameter.empty:
            raise TaskError(f"task {name!r} is built for a model: pass model=")
        if model is not None:
            kwargs["model"] = model
    return task_maker(name)(**kwargs)
