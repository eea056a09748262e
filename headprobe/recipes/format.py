"""Recipe files: the TOML format, its steps and their checks at load time (see
:mod:`headprobe.recipes` for the format)."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headprobe.errors import RecipeError
from headprobe.recipes.steps import (  # re-exported: the record and parser step kinds use
    Step,
    explicit_heads,
    get_step_kind,
    step_kinds,
)

_TOP_KEYS = {"name", "description", "model", "step", "scan", "report", "small"}
_REPORT_KEYS = {"top", "threshold"}
_EVERY_STEP = "*"  # the key of [small] whose options go to every step that writes them
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")

Echo = Callable[[str], None]


@dataclass
class Recipe:
    """A parsed recipe: what :func:`run_recipe` runs, in order."""

    name: str
    description: str
    model: str
    steps: list[Step]
    report: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    small: bool = False

    @property
    def scans(self) -> list[dict[str, Any]]:
        """The scan steps' tables (``scorer``, ``n``, ``seed``, ``batch_size``, ``params``)."""
        return [step.options for step in self.steps if step.kind == "scan"]


# ---------------------------------------------------------------------------------------------
# Loading and validation


def load_recipe(path: str | Path, *, small: bool = False) -> Recipe:
    """Parse and validate a recipe file; :class:`RecipeError` says what is wrong.

    ``small``: apply the file's ``[small]`` table first (the recipe at a test-sized setting;
    see :func:`apply_small`); :class:`RecipeError` when the file has none.
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise RecipeError(f"recipe {path} is not valid TOML: {error}") from error
    where = f"recipe {path}"
    for kind in ("ablate", "dose"):
        if kind in raw:
            raise RecipeError(
                f"{where}: write [[{kind}]] steps as [[step]] tables with kind = \"{kind}\" "
                "(TOML does not keep the order between arrays of different names)")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {unknown}; a recipe may have only "
                          f"{sorted(_TOP_KEYS)}")
    if "step" in raw and "scan" in raw:
        raise RecipeError(f"{where} mixes [[scan]] and [[step]] tables, whose relative order "
                          "TOML does not keep: write every step as [[step]] with a kind")
    tables = raw.get("step", raw.get("scan"))
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict)
                                                             for t in tables):
        raise RecipeError(f"{where} has no steps: add [[step]] tables (kind = \"scan\", "
                          "\"ablate\", \"dose\" or a head type's kind), or the older [[scan]] "
                          "tables")
    if "scan" in raw:
        for index, table in enumerate(tables):
            if "kind" in table:
                raise RecipeError(f"{where}: [[scan]] step {index} has a kind; write it as "
                                  "[[step]] instead")
        tables = [{"kind": "scan", **table} for table in tables]
    if small:
        if "small" not in raw:
            raise RecipeError(f"{where} has no [small] table: add one (step name -> options "
                              "for a test-sized run) to run it small")
        tables = apply_small(tables, raw["small"], where)
    steps: list[Step] = []
    for index, table in enumerate(tables):
        steps.append(_parse_step(table, index, steps, where))
    if "small" in raw and not small:  # a broken [small] is found when the recipe is loaded
        _check_small_names(raw["small"], tables, where)
    report = raw.get("report", {})
    if not isinstance(report, dict) or set(report) - _REPORT_KEYS:
        raise RecipeError(f"{where}: [report] may have only {sorted(_REPORT_KEYS)}; "
                          f"got {report!r}")
    if "top" in report:
        check_int(report["top"], "top", 1, f"{where}: [report]")
    if "threshold" in report:
        check_number(report["threshold"], "threshold", f"{where}: [report]")
    return Recipe(
        name=str(raw.get("name", path.stem)),
        description=str(raw.get("description", "")),
        model=str(raw.get("model", "smollm2-135m-instruct")),
        steps=steps,
        report=dict(report),
        path=path,
        small=small,
    )


def _step_name(table: dict[str, Any]) -> Any:
    """The name a step table gives its step (its ``name``, else its kind's default)."""
    if "name" in table:
        return table["name"]
    kind = step_kinds().get(table.get("kind"))
    if kind is not None and kind.default_name is not None:
        return table.get(kind.default_name)
    return table.get("kind")


def _check_small_names(small: Any, tables: Sequence[dict[str, Any]], where: str) -> None:
    """:class:`RecipeError` unless ``small`` is a table of option tables keyed by step names
    (or ``"*"``)."""
    names = [_step_name(table) for table in tables]
    if not isinstance(small, dict) or not all(isinstance(v, dict) for v in small.values()):
        raise RecipeError(f"{where}: [small] must map step names (or \"*\") to tables of "
                          "options, e.g. [small.induction] n = 4")
    unknown = sorted(set(small) - set(names) - {_EVERY_STEP})
    if unknown:
        raise RecipeError(f"{where}: [small] names no step {unknown}; steps: {names}")


def apply_small(tables: Sequence[dict[str, Any]], small: Any, where: str = "recipe"
                ) -> list[dict[str, Any]]:
    """The step tables with a recipe's ``[small]`` options applied.

    ``small`` maps a step's name to options that replace the step's own; an option whose
    value is a table (``params``, ``task_options``, ``method_options``) is merged key by key
    into the step's table. Its ``"*"`` entry applies to every step that writes the option
    (a table option: every step that has that table), before the per-step entries. The
    result is validated like any step, so a small setting cannot hold what the kind refuses.
    """
    _check_small_names(small, tables, where)
    every = small.get(_EVERY_STEP, {})
    out: list[dict[str, Any]] = []
    for table in tables:
        merged = dict(table)
        for key, value in every.items():
            if key in merged:
                merged[key] = _merged(merged[key], value)
        for key, value in small.get(_step_name(table), {}).items():
            merged[key] = _merged(merged.get(key), value)
        out.append(merged)
    return out


def _merged(old: Any, new: Any) -> Any:
    """``new``, or ``old`` updated with ``new`` when both are tables."""
    if isinstance(old, dict) and isinstance(new, dict):
        return {**old, **new}
    return new


def _parse_step(table: dict[str, Any], index: int, earlier: Sequence[Step],
                where: str) -> Step:
    """Validate step ``index`` given the steps before it; the :class:`Step`."""
    kind = get_step_kind(table.get("kind"), f"{where}: step {index}")
    options = {k: v for k, v in table.items() if k not in ("kind", "name")}
    label = f"{where}: {kind.name} step {index}"
    missing = [key for key in kind.required if key not in options]
    unknown = sorted(set(options) - kind.keys)
    if missing or unknown:
        needs = " and ".join(repr(key) for key in kind.required) or "nothing"
        raise RecipeError(
            f"{label} needs {needs} and may have only {sorted(kind.keys | {'kind', 'name'})}"
            f"; got {sorted(table)}" + (f" (unknown: {unknown})" if unknown else ""))
    default_name = (str(options[kind.default_name]) if kind.default_name is not None
                    else kind.name)
    name = table.get("name", default_name)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RecipeError(f"{label}: name {name!r} must be letters, digits, '_', '.', '-' "
                          "(it names the step's folder)")
    label = f"{where}: step {name!r}"
    if any(step.name == name for step in earlier):
        raise RecipeError(f"{label}: another step before it has the same name; give one of "
                          "them a different name = \"...\"")
    if "seed" in options:
        check_int(options["seed"], "seed", None, label)
    if "batch_size" in options:
        check_int(options["batch_size"], "batch_size", 1, label)
    kind.check(options, earlier, label)
    return Step(kind=kind.name, name=name, options=options)


def check_task(options: dict[str, Any], label: str) -> None:
    """Validate a step's ``task`` (registered) and ``task_options`` (options of its
    ``make_task``)."""
    from headprobe.errors import TaskError, UnknownTaskError
    from headprobe.tasks.build import check_task_options

    task = options["task"]
    task_options = options.get("task_options", {})
    if not isinstance(task_options, dict):
        raise RecipeError(f"{label}: task_options must be a table, e.g. task_options = "
                          "{ n = 48 }")
    if "model" in task_options:
        raise RecipeError(f"{label}: task_options cannot set model: a task that takes one gets "
                          "the recipe's model")
    try:
        check_task_options(task, task_options)
    except (UnknownTaskError, TaskError) as error:
        raise RecipeError(f"{label}: {error}") from None


def table_steps(earlier: Sequence[Step]) -> list[str]:
    """Names of the earlier steps whose result is a head table (scans, ...)."""
    kinds = step_kinds()
    return [step.name for step in earlier if kinds[step.kind].table]


def check_source(source: Any, key: str, earlier: Sequence[Step], label: str) -> None:
    """:class:`RecipeError` unless ``source`` names a step written before this one whose
    result is a head table (a scan, or a head type's table step)."""
    tables = table_steps(earlier)
    match = [step for step in earlier if step.name == source]
    if not match:
        raise RecipeError(f"{label}: {key} = {source!r} names no earlier step; earlier "
                          f"steps with a head table: {tables or 'none'} (a step may only use "
                          "steps written before it)")
    if match[0].name not in tables:
        raise RecipeError(f"{label}: {key} = {source!r} is a {match[0].kind} step; "
                          f"heads come from a step with a head table: {tables or 'none'}")


def check_heads_choice(kind: str, options: dict[str, Any], earlier: Sequence[Step],
                       label: str, *, need_rule: bool) -> int | None:
    """Validate how a step picks heads: exactly one of ``heads`` and ``heads_from`` (with
    ``top``, ``threshold``, ``rank_by``); the number of heads when it is known."""
    if ("heads_from" in options) == ("heads" in options):
        raise RecipeError(f"{label} needs exactly one of heads_from = \"<earlier scan step>\" "
                          "(with top and/or threshold) and heads = \"LAYER.HEAD,...\"")
    if "top" in options:
        check_int(options["top"], "top", 1, label)
    if "threshold" in options:
        check_number(options["threshold"], "threshold", label)
    if "rank_by" in options and not isinstance(options["rank_by"], str):
        raise RecipeError(f"{label}: rank_by must name a column of the heads_from table, got "
                          f"{options['rank_by']!r}")
    if "heads" in options:
        if "top" in options or "threshold" in options or "rank_by" in options:
            raise RecipeError(f"{label}: top, threshold and rank_by pick heads from heads_from; "
                              "with an explicit heads list leave them out")
        return len(explicit_heads(options["heads"], label))
    source = options["heads_from"]
    check_source(source, "heads_from", earlier, label)
    if need_rule and "top" not in options and "threshold" not in options:
        raise RecipeError(f"{label}: say which heads of {source!r} to {kind}: top = K "
                          "and/or threshold = X")
    return options.get("top")


def check_int(value: Any, key: str, minimum: int | None, label: str) -> None:
    """:class:`RecipeError` unless ``value`` is an integer (``>= minimum``)."""
    if not isinstance(value, int) or isinstance(value, bool) or (
            minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise RecipeError(f"{label}: {key} must be an integer{bound}, got {value!r}")


def check_number(value: Any, key: str, label: str) -> None:
    """:class:`RecipeError` unless ``value`` is a number."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise RecipeError(f"{label}: {key} must be a number, got {value!r}")
