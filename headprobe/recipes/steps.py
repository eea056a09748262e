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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headprobe.errors import RecipeError

if TYPE_CHECKING:  # pragma: no cover - types only
    from headprobe.headtable import HeadTable
    from headprobe.recipes.format import Step

Echo = Callable[[str], None]

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
        from headprobe.recipes.run import build_task

        return build_task(name, options, self.model)

    def select_heads(self, step: Step) -> tuple[list[tuple[int, int]], str]:
        """The heads ``step`` names (``heads``, or ``heads_from`` with ``top`` / ``threshold``
        / ``rank_by``), best first, and a phrase saying where they came from."""
        from headprobe.recipes.run import select_heads

        return select_heads(step, self.tables)

    def run_key(self, step: Step, params: Mapping[str, Any], task: Any = None,
                seed: int | None = None, batch_size: int | None = None
                ) -> tuple[str, dict[str, Any]]:
        """``(key, fields)`` of a step's run: its name, the model, ``params`` and, with a
        ``task``, its size, fingerprint, ``seed`` and ``batch_size``."""
        from headprobe.checkpoint import run_key, run_key_fields
        from headprobe.models import describe_model
        from headprobe.recipes.run import task_fingerprint

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
        from headprobe.recipes.run import saved_step_matches

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
        raise RecipeError(f"{where}: unknown step kind {name!r}; kind must be one of the "
                          f"registered kinds: {', '.join(kinds)}")
    return kinds[name]


__all__ = ["GENERIC_STEPS", "Echo", "StepContext", "StepKind", "StepOutput", "get_step_kind",
           "step_kinds"]
