"""The name registry: scorers, tasks, head types, model organisms and recipe step kinds.

One table, no logic beyond lookups. The generic scorers and tasks are listed here; every head
type is one package ``headprobe.heads.<name>`` named in :data:`HEAD_TYPES`, whose
``HEAD_TYPE`` (a :class:`HeadType`) declares its own scorers, tasks, model organisms and
recipe step kinds. Adding a head type is its folder plus one line in :data:`HEAD_TYPES`.

Modules are named as strings and imported only when a name is looked up, so importing
headprobe runs nothing and this table sits at the bottom of the layering (it imports
``errors`` only): the generic layers ask it for a name without knowing any head type.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from headprobe.errors import UnknownNameError, UnknownScorerError, UnknownTaskError

if TYPE_CHECKING:  # pragma: no cover - types only
    from headprobe.scorers.base import Scorer
    from headprobe.tasks.base import Task

# Scorers and tasks that belong to no head type: circuit-discovery methods that take any task.
GENERIC_SCORERS: dict[str, str] = {
    "dla": "headprobe.scorers.dla",
    "activation_patching": "headprobe.scorers.activation_patching",
    "ablation_scan": "headprobe.scorers.ablation_scan",
    "attribution_patching": "headprobe.scorers.attribution_patching",
}
GENERIC_TASKS: dict[str, str] = {
    "facts": "headprobe.tasks.facts",
    "ioi": "headprobe.tasks.ioi",
}

# The one list of head types: package ``headprobe.heads.<name>`` for each.
HEAD_TYPES: tuple[str, ...] = (
    "induction",
    "sink",
    "retrieval",
    "safety",
    "successor",
    "temporal",
    "conflict",
    "ocr",
)


@dataclass(frozen=True)
class HeadType:
    """What one head-type folder (``headprobe/heads/<name>/``) declares.

    Attributes:
        name: the folder's name.
        summary: one line: what heads of this type do, and the paper that defines them.
        scorers: ``{scorer name: module}``, each module defining ``SCORER``.
        tasks: ``{task name: module}``, each module defining ``make_task(**options)``.
        recipes: the shipped TOML recipes, paths relative to the repository root (at least
            one; ``tests/test_head_types.py`` checks it).
        notebook: the notebook that walks through the head type (repository-relative).
        example: ``"module:function"`` of the tiny-model example with an exactly known
            answer (``headprobe/heads/<name>/example.py``); the function takes no argument
            and returns a :class:`headprobe.examples.Example` whose ``check()`` passes.
        models: ``{model name: "module:attribute"}`` of the head type's models (model
            organisms, the OCR model), each a :class:`headprobe.catalogue.ModelSource`
            that :func:`headprobe.catalogue.load_model` resolves the name through.
        steps: ``{recipe step kind: "module:ATTRIBUTE"}`` that the head type adds to recipes,
            each naming a :class:`headprobe.recipes.steps.StepKind`.
        planters: ``{role: "module:function"}``: the heads of this type that
            :func:`headprobe.planting.planted_model` can write into a model, each function
            ``plant(planted, head, **options)`` (:mod:`headprobe.planting`).
        ground_truth: ``"module:function"`` returning the head type's
            :class:`headprobe.groundtruth.GroundTruthCase` s (``headprobe validate``).
        known_heads: ``"module:ATTRIBUTE"``: a sequence of
            :class:`headprobe.groundtruth.KnownHead` of real models found so far.
    """

    name: str
    summary: str
    scorers: Mapping[str, str]
    tasks: Mapping[str, str] = field(default_factory=dict)
    recipes: tuple[str, ...] = ()
    notebook: str = ""
    example: str = ""
    models: Mapping[str, str] = field(default_factory=dict)
    steps: Mapping[str, str] = field(default_factory=dict)
    planters: Mapping[str, str] = field(default_factory=dict)
    ground_truth: str = ""
    known_heads: str = ""


def head_types() -> dict[str, HeadType]:
    """``{name: HeadType}`` of every head type in :data:`HEAD_TYPES`, in that order."""
    found: dict[str, HeadType] = {}
    for name in HEAD_TYPES:
        declared = importlib.import_module(f"headprobe.heads.{name}").HEAD_TYPE
        if not isinstance(declared, HeadType) or declared.name != name:
            raise TypeError(f"headprobe.heads.{name}.HEAD_TYPE is not a HeadType named {name!r}")
        found[name] = declared
    return found


def _joined(kind: str, generic: Mapping[str, str]) -> dict[str, str]:
    """Each head type's ``kind`` entries in :data:`HEAD_TYPES` order, then ``generic``."""
    table: dict[str, str] = {}
    for head_type in head_types().values():
        for name, target in getattr(head_type, kind).items():
            if name in table:
                raise TypeError(f"{kind[:-1]} {name!r} is declared twice")
            table[name] = target
    for name, target in generic.items():
        if name in table:
            raise TypeError(f"{kind[:-1]} {name!r} is declared twice")
        table[name] = target
    return table


def scorer_modules() -> dict[str, str]:
    """``{scorer name: module}``: each head type's scorers, then the generic ones."""
    return _joined("scorers", GENERIC_SCORERS)


def task_modules() -> dict[str, str]:
    """``{task name: module}``: each head type's tasks, then the generic ones."""
    return _joined("tasks", GENERIC_TASKS)


def model_loaders() -> dict[str, str]:
    """``{model name: "module:attribute"}`` of every head type's models (each a
    :class:`headprobe.catalogue.ModelSource`)."""
    return _joined("models", {})


def step_kinds() -> dict[str, str]:
    """``{recipe step kind: "module:ATTRIBUTE"}`` that head types add to recipes (each a
    :class:`headprobe.recipes.steps.StepKind`)."""
    return _joined("steps", {})


def resolve(target: str) -> Any:
    """The object a ``"module:attribute"`` string names."""
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def list_scorers() -> list[str]:
    """Names of every registered scorer."""
    return list(scorer_modules())


def get_scorer(name: str) -> Scorer:
    """The scorer registered as ``name``; :class:`UnknownScorerError` if there is none."""
    modules = scorer_modules()
    if name not in modules:
        raise UnknownScorerError(unknown_name_message("scorer", name, modules))
    scorer = importlib.import_module(modules[name]).SCORER
    if getattr(scorer, "name", None) != name:
        raise TypeError(f"{modules[name]}.SCORER is not a Scorer named {name!r}")
    return scorer


def scan(model: Any, scorer: str, prompts: Any = None, **kwargs: Any) -> Any:
    """Run the scorer ``scorer`` on ``model`` and return its
    :class:`~headprobe.headtable.HeadTable`; see :class:`~headprobe.scorers.base.Scorer`."""
    return get_scorer(scorer)(model, prompts, **kwargs)


def list_tasks() -> list[str]:
    """Names of every registered task."""
    return list(task_modules())


def task_maker(name: str) -> Any:
    """The ``make_task`` function of the task registered as ``name``."""
    modules = task_modules()
    if name not in modules:
        raise UnknownTaskError(unknown_name_message("task", name, modules))
    return importlib.import_module(modules[name]).make_task


def get_task(name: str, **options: Any) -> Task:
    """Build the task registered as ``name`` with ``options`` (no model: see
    :func:`headprobe.tasks.build.build_task` for tasks that size themselves to a model)."""
    return task_maker(name)(**options)


def unknown_name_message(kind: str, name: str, known: Mapping[str, Any] | list[str]) -> str:
    """One line for an unknown name: what was asked for and every registered name."""
    names = ", ".join(known) or "none"
    return f"unknown {kind} {name!r}; registered {kind}s: {names}"


__all__ = [
    "GENERIC_SCORERS",
    "GENERIC_TASKS",
    "HEAD_TYPES",
    "HeadType",
    "UnknownNameError",
    "get_scorer",
    "get_task",
    "head_types",
    "list_scorers",
    "list_tasks",
    "model_loaders",
    "resolve",
    "scan",
    "scorer_modules",
    "step_kinds",
    "task_maker",
    "task_modules",
    "unknown_name_message",
]
