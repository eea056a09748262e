"""Recipe step kinds as a registry: what a ``kind = "..."`` step may hold and what it does.

A :class:`StepKind` is one record: its options (allowed and required), a checker run when the
recipe is loaded (before any model), a runner, what it writes under ``<out>/<step name>/``
and where its entry goes in ``summary.json``. The generic kinds ``scan``, ``ablate`` and
``dose`` live in :mod:`headprobe.recipes.generic`; a head type adds its own through
``HeadType.steps`` (``{kind: "module:ATTRIBUTE"}`` naming a :class:`StepKind`, found with
:func:`headprobe.registry.step_kinds` and :func:`headprobe.registry.resolve`), so this module
and the recipe runner know no head type by name.

A runner gets the :class:`Step` and a :class:`StepContext` (the model, the output folder, the
head tables of earlier steps, ...) and returns a :class:`StepOutput`. It is resumable by
contract: when ``<out>/<step name>/`` already holds its result under the same run key
(:meth:`StepContext.saved_meta`), it loads it instead of recomputing, unless ``ctx.fresh``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headprobe.checkpoint import describe_changes
from headprobe.errors import HeadprobeError, RecipeError, RecipeNameError
from headprobe.types import Head

if TYPE_CHECKING:  # pragma: no cover - types only
    from headprobe.headtable import HeadTable

Echo = Callable[[str], None]


@dataclass(frozen=True)
class Step:
    """One validated step of a recipe.

    Attributes:
        kind: a registered step kind (:func:`headprobe.recipes.steps.step_kinds`).
        name: unique in the recipe; the step's output folder and summary key.
        options: the step's table from the file, without ``kind`` and ``name``.
    """

    kind: str
    name: str
    options: dict[str, Any]


def explicit_heads(value: Any, label: str = "heads") -> list[Head]:
    """A step's ``heads``: ``"18.6,17.3"`` or ``[[18, 6], [17, 3]]`` -> ``[(18, 6), (17, 3)]``.

    :class:`RecipeError` (prefixed with ``label``) for any other form.
    """
    from headprobe.experiments import parse_heads

    if isinstance(value, str):
        try:
            return parse_heads(value)
        except HeadprobeError as error:
            raise RecipeError(f"{label}: {error}") from error
    if (isinstance(value, list) and value
            and all(isinstance(p, list) and len(p) == 2
                    and all(isinstance(x, int) and not isinstance(x, bool) for x in p)
                    for p in value)):
        return [Head(int(p[0]), int(p[1])) for p in value]
    raise RecipeError(f"{label}: heads must be \"LAYER.HEAD,...\" (e.g. \"18.6,17.3\") or "
                      f"[[LAYER, HEAD], ...], got {value!r}")

# The kinds every recipe may use, whatever the head types: ``{kind: "module:ATTRIBUTE"}``.
GENERIC_STEPS: dict[str, str] = {
    "scan": "headprobe.recipes.generic:SCAN",
    "ablate": "headprobe.recipes.generic:ABLATE",
    "dose": "headprobe.recipes.generic:DOSE",
}


@dataclass(frozen=True)
class StepOutput:
    """What a step's runner returns.

    Attributes:
        result: what :func:`~headprobe.recipes.run_recipe` returns under the step's name; a
            :class:`~headprobe.headtable.HeadTable` when the kind's ``table`` is true (later
            steps then take heads from it with ``heads_from`` / ``from``).
        entry: the step's JSON-able entry in ``summary.json`` (under the kind's ``section``).
        line: what ``echo`` prints when the step is done (may span lines).
    """

    result: Any
    entry: dict[str, Any]
    line: str


@dataclass
class StepContext:
    """What a runner may use besides its step.

    Attributes:
        model: the recipe's model (a TransformerBridge).
        folder: the run's output folder; the step writes under ``folder / step.name``.
        tables: the head tables of the earlier table steps, by step name.
        results: every earlier step's result, by step name.
        report: the recipe's ``[report]`` table (``top``, ``threshold``).
        progress: show progress bars.
        echo: where one-line messages go.
        fresh: recompute even when a result with the same run key is saved.
    """

    model: Any
    folder: Path
    tables: dict[str, HeadTable] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    report: Mapping[str, Any] = field(default_factory=dict)
    progress: bool = True
    echo: Echo = print
    fresh: bool = False

    def build_task(self, name: str, options: Mapping[str, Any]) -> Any:
        """Task ``name`` with ``options``, given the model when its ``make_task`` takes one."""
        return build_task(name, options, self.model)

    def select_heads(self, step: Step) -> tuple[list[Head], str]:
        """The heads ``step`` names (``heads``, or ``heads_from`` with ``top`` / ``threshold``
        / ``rank_by``), best first, and a phrase saying where they came from."""
        return select_heads(step, self.tables)

    def run_key(self, step: Step, params: Mapping[str, Any], task: Any = None,
                seed: int | None = None, batch_size: int | None = None
                ) -> tuple[str, dict[str, Any]]:
        """``(key, fields)`` of a step's run: its name, the model, ``params`` and, with a
        ``task``, its size, fingerprint, ``seed`` and ``batch_size``."""
        from headprobe.checkpoint import run_key, run_key_fields
        from headprobe.models import describe_model
        fields = run_key_fields(
            name=step.name, spec=describe_model(self.model), params=dict(params),
            seed=seed, n=len(task) if task is not None else None, batch_size=batch_size,
            fingerprint=task_fingerprint(self.model, task) if task is not None else None)
        return run_key(fields), fields

    def saved_meta(self, step: Step, key: str, fields: Mapping[str, Any]
                   ) -> dict[str, Any] | None:
        """The ``meta.json`` saved under the step's folder when it holds run ``key`` (and
        ``fresh`` is off), else ``None``; says which fields changed when another run is saved
        there."""
        if self.fresh:
            return None
        return saved_step_matches(self.folder / step.name, key, step.name, fields, self.echo)


@dataclass(frozen=True)
class StepKind:
    """One recipe step kind.

    Attributes:
        name: the ``kind = "..."`` value.
        keys: every option the step may have (besides ``kind`` and ``name``).
        required: the options it must have.
        check: ``check(options, earlier_steps, label)`` at load time; raises
            :class:`~headprobe.errors.RecipeError` (messages start with ``label``). The
            generic checks (keys, ``name``, ``seed``, ``batch_size``) are already done.
        run: ``run(step, ctx) -> StepOutput``.
        section: the ``summary.json`` table that holds its entries, by step name.
        saves: the files it always writes under ``<out>/<step name>/``, as
            :meth:`str.format_map` patterns over its options (e.g. ``"{scorer}.csv"``).
        table: its result is a :class:`~headprobe.headtable.HeadTable` that later steps may
            take heads from.
        default_name: the option whose value names a step that sets no ``name`` (``None``:
            the kind).
        summary: one line for documentation: what the step does.
    """

    name: str
    keys: frozenset[str]
    required: tuple[str, ...]
    check: Callable[[dict[str, Any], Sequence[Step], str], None]
    run: Callable[[Step, StepContext], StepOutput]
    section: str
    saves: tuple[str, ...] = ()
    table: bool = False
    default_name: str | None = None
    summary: str = ""

    def saved_files(self, step: Step) -> list[str]:
        """The files a finished ``step`` of this kind has written under its folder."""
        return [pattern.format_map(step.options) for pattern in self.saves]


def select_heads(step: Step, tables: Mapping[str, HeadTable]) -> tuple[list[Head], str]:
    """The heads an ``ablate`` / ``dose`` step uses, best first, and where they came from.

    From ``heads``, or from the table of the scan step ``heads_from``: its ``top`` best heads
    and/or those scoring above ``threshold`` (a dose step without either takes
    ``max(ks)``). :class:`RecipeError` when that leaves no head, or fewer than a dose needs.
    """
    options = step.options
    label = f"step {step.name!r}"
    if "heads" in options:
        heads = explicit_heads(options["heads"], label)
        source = "given list"
    else:
        name = options["heads_from"]
        top = options.get("top")
        threshold = options.get("threshold")
        if step.kind == "dose" and top is None and threshold is None:
            top = max(options["ks"])
        column = options.get("rank_by", "score")
        if column not in tables[name].data.columns:
            raise RecipeError(f"{label}: rank_by = {column!r} is not a column of {name!r}; its "
                              f"columns: {', '.join(map(str, tables[name].data.columns))}")
        heads = tables[name].heads(k=top, threshold=threshold, column=column)
        parts = ([f"top {top}"] if top is not None else []) + (
            [f"above {threshold}"] if threshold is not None else [])
        by = "" if column == "score" else f" by {column}"
        source = f"{' and '.join(parts)} heads of {name}{by}"
        if not heads:
            raise RecipeError(f"{label}: no head of {name!r} scores above {threshold}{by}; "
                              "lower the threshold or use top = K")
    if step.kind == "dose" and max(step.options["ks"]) > len(heads):
        raise RecipeError(f"{label}: k = {max(step.options['ks'])} but only {len(heads)} heads "
                          f"({source}); lower ks or the threshold")
    return heads, source


def build_task(name: str, options: Mapping[str, Any], model: Any) -> Any:
    """Build task ``name`` with ``options``, passing ``model`` when its ``make_task`` takes one
    (e.g. ``niah`` then counts context lengths in the model's tokens)."""
    from headprobe.tasks.build import build_task as build_registered_task

    return build_registered_task(name, model, **options)


def task_fingerprint(model: Any, task: Any) -> str:
    """sha256 prefix of a task as ``model`` sees it: tokenized prompts, answers, judge."""
    from headprobe.inputs import encode_prompts, fingerprint
    from headprobe.models import describe_model

    prompts = fingerprint(encode_prompts(model, task.prompts, describe_model(model)))
    payload = {"name": task.name, "prompts": prompts, "judge": task.judge,
               "max_new_tokens": task.max_new_tokens,
               "answers": [item.answer for item in task.items],
               "distractors": [item.distractor for item in task.items]}
    text = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def saved_step_matches(saved: Path, key: str, name: str, fields: Mapping[str, Any],
                        echo: Echo) -> dict[str, Any] | None:
    """The saved ``meta.json`` of step ``name`` when it holds run ``key``, else ``None``.

    :func:`headprobe.experiments.save_experiment` writes ``meta.json`` last and the step's old
    one is removed before saving, so a matching ``meta.json`` means complete files. A result
    saved under another key makes ``echo`` say which fields changed.
    """
    meta_path = saved / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if meta.get("run_key") == key and meta.get("recipe_step") == name:
        return meta
    if meta.get("run_key_fields") is not None:
        changed = describe_changes(meta["run_key_fields"], fields) or ["run key"]
        echo(f"{name}: the saved result in {saved} is from a different run "
             f"(changed: {'; '.join(changed)}); recomputing")
    return None


def step_kinds() -> dict[str, StepKind]:
    """``{kind: StepKind}``: the generic kinds, then those every head type adds."""
    from headprobe.registry import resolve
    from headprobe.registry import step_kinds as head_type_steps

    targets = dict(GENERIC_STEPS)
    for name, target in head_type_steps().items():
        if name in targets:
            raise TypeError(f"recipe step kind {name!r} is declared twice")
        targets[name] = target
    kinds: dict[str, StepKind] = {}
    for name, target in targets.items():
        kind = resolve(target)
        if not isinstance(kind, StepKind) or kind.name != name:
            raise TypeError(f"{target} is not a StepKind named {name!r}")
        kinds[name] = kind
    return kinds


def get_step_kind(name: Any, where: str = "recipe") -> StepKind:
    """The step kind ``name``; a one-line :class:`RecipeError` listing every registered kind
    when there is none."""
    kinds = step_kinds()
    if not isinstance(name, str) or name not in kinds:
        raise RecipeNameError(f"{where}: unknown step kind {name!r}; kind must be one of the "
                              f"registered kinds: {', '.join(kinds)}")
    return kinds[name]


__all__ = ["GENERIC_STEPS", "Echo", "Step", "StepContext", "StepKind", "StepOutput", "build_task",
           "explicit_heads", "get_step_kind", "saved_step_matches", "select_heads", "step_kinds",
           "task_fingerprint"]
