"""Recipe files: the TOML format, its steps and their checks at load time (see
:mod:`headprobe.recipes` for the format)."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headprobe.errors import HeadprobeError, RecipeError, RecipeNameError, ScorerParamError
from headprobe.registry import get_scorer, unknown_name_message
from headprobe.types import Head

STEP_KINDS = ("scan", "ablate", "dose", "kv_budget")
_TOP_KEYS = {"name", "description", "model", "step", "scan", "report"}
_REPORT_KEYS = {"top", "threshold"}
_SCAN_KEYS = {"scorer", "n", "seed", "batch_size", "params", "task", "task_options"}
_CAUSAL_KEYS = {"task", "task_options", "heads_from", "top", "threshold", "rank_by", "heads",
                "method", "method_options", "n_random", "random_from", "seed", "n_bootstrap",
                "batch_size"}
_KV_BUDGET_KEYS = {"from", "threshold", "full_share", "aggregate", "sink", "window",
                   "context_length", "task", "task_options", "n_random", "seed", "n_bootstrap",
                   "batch_size"}
_STEP_KEYS = {"scan": _SCAN_KEYS, "ablate": _CAUSAL_KEYS, "dose": _CAUSAL_KEYS | {"ks"},
              "kv_budget": _KV_BUDGET_KEYS}
_REQUIRED_KEY = {"scan": "scorer", "ablate": "task", "dose": "task", "kv_budget": "from"}
KV_BUDGET_DEFAULTS: dict[str, Any] = {"aggregate": "max", "sink": 4, "window": 32,
                                       "n_random": 5, "n_bootstrap": 1000}
DEFAULT_N_RANDOM = {"ablate": 10, "dose": 5}
# Interventions that need a tensor option cannot be written in a TOML file.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")

Echo = Callable[[str], None]


@dataclass(frozen=True)
class Step:
    """One validated step of a recipe.

    Attributes:
        kind: ``scan``, ``ablate``, ``dose`` or ``kv_budget``.
        name: unique in the recipe; the step's output folder and summary key.
        options: the step's table from the file, without ``kind`` and ``name``.
    """

    kind: str
    name: str
    options: dict[str, Any]


@dataclass
class Recipe:
    """A parsed recipe: what :func:`run_recipe` runs, in order."""

    name: str
    description: str
    model: str
    steps: list[Step]
    report: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def scans(self) -> list[dict[str, Any]]:
        """The scan steps' tables (``scorer``, ``n``, ``seed``, ``batch_size``, ``params``)."""
        return [step.options for step in self.steps if step.kind == "scan"]


# ---------------------------------------------------------------------------------------------
# Loading and validation


def load_recipe(path: str | Path) -> Recipe:
    """Parse and validate a recipe file; :class:`RecipeError` says what is wrong."""
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
                          "\"ablate\", \"dose\" or \"kv_budget\"), or the older [[scan]] "
                          "tables")
    if "scan" in raw:
        for index, table in enumerate(tables):
            if "kind" in table:
                raise RecipeError(f"{where}: [[scan]] step {index} has a kind; write it as "
                                  "[[step]] instead")
        tables = [{"kind": "scan", **table} for table in tables]
    steps: list[Step] = []
    for index, table in enumerate(tables):
        steps.append(_parse_step(table, index, steps, where))
    report = raw.get("report", {})
    if not isinstance(report, dict) or set(report) - _REPORT_KEYS:
        raise RecipeError(f"{where}: [report] may have only {sorted(_REPORT_KEYS)}; "
                          f"got {report!r}")
    if "top" in report:
        _check_int(report["top"], "top", 1, f"{where}: [report]")
    if "threshold" in report:
        _check_number(report["threshold"], "threshold", f"{where}: [report]")
    return Recipe(
        name=str(raw.get("name", path.stem)),
        description=str(raw.get("description", "")),
        model=str(raw.get("model", "smollm2-135m-instruct")),
        steps=steps,
        report=dict(report),
        path=path,
    )


def _parse_step(table: dict[str, Any], index: int, earlier: Sequence[Step],
                where: str) -> Step:
    """Validate step ``index`` given the steps before it; the :class:`Step`."""
    kind = table.get("kind")
    if kind not in STEP_KINDS:
        raise RecipeNameError(f"{where}: step {index}: "
                              + unknown_name_message("step kind", str(kind), list(STEP_KINDS)))
    options = {k: v for k, v in table.items() if k not in ("kind", "name")}
    allowed = _STEP_KEYS[kind]
    label = f"{where}: {kind} step {index}"
    required = _REQUIRED_KEY[kind]
    unknown = sorted(set(options) - allowed)
    if required not in options or unknown:
        raise RecipeError(
            f"{label} needs {required!r} and may have only {sorted(allowed | {'kind', 'name'})}"
            f"; got {sorted(table)}" + (f" (unknown: {unknown})" if unknown else ""))
    if kind == "scan":
        default_name = str(options["scorer"])
        scorer = get_scorer(options["scorer"])  # unknown scorer: UnknownScorerError now
        if "n" in options:
            _check_int(options["n"], "n", 1, label)
        if "params" in options and not isinstance(options["params"], dict):
            raise RecipeError(f"{label}: params must be a table, e.g. params = {{ seq_len = 8 }}")
        try:  # through the scorer's typed record, as a direct call would
            scorer.check_params(options.get("params", {}))
        except ScorerParamError as error:
            raise RecipeError(f"{label}: {error}") from None
        if "task" in options:  # the scan's prompts: a registered task instead of its default
            _check_task(options, label)
        elif "task_options" in options:
            raise RecipeError(f"{label}: task_options needs a task")
    else:
        default_name = kind
    name = table.get("name", default_name)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RecipeError(f"{label}: name {name!r} must be letters, digits, '_', '.', '-' "
                          "(it names the step's folder)")
    label = f"{where}: step {name!r}"
    if any(step.name == name for step in earlier):
        raise RecipeError(f"{label}: another step before it has the same name; give one of "
                          "them a different name = \"...\"")
    for key in ("seed",):
        if key in options:
            _check_int(options[key], key, None, label)
    if "batch_size" in options:
        _check_int(options["batch_size"], "batch_size", 1, label)
    if kind == "kv_budget":
        _check_kv_budget(options, earlier, label)
    elif kind != "scan":
        _check_causal(kind, options, earlier, label)
    return Step(kind=kind, name=name, options=options)


def _check_task(options: dict[str, Any], label: str) -> None:
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


def _scan_source(source: Any, key: str, earlier: Sequence[Step], label: str) -> None:
    """:class:`RecipeError` unless ``source`` names a scan step written before this one."""
    scans = [step.name for step in earlier if step.kind == "scan"]
    match = [step for step in earlier if step.name == source]
    if not match:
        raise RecipeError(f"{label}: {key} = {source!r} names no earlier step; earlier "
                          f"scan steps: {scans or 'none'} (a step may only use steps "
                          "written before it)")
    if match[0].kind != "scan":
        raise RecipeError(f"{label}: {key} = {source!r} is a {match[0].kind} step; "
                          f"heads come from a scan step: {scans or 'none'}")


def _check_kv_budget(options: dict[str, Any], earlier: Sequence[Step], label: str) -> None:
    """Validate the keys of a ``kv_budget`` step (see the module docstring)."""
    _scan_source(options["from"], "from", earlier, label)
    if ("threshold" in options) == ("full_share" in options):
        raise RecipeError(f"{label} needs exactly one of threshold = X (kv heads scoring above "
                          "X keep a full cache) and full_share = S (that share of kv heads "
                          "does)")
    if "threshold" in options:
        _check_number(options["threshold"], "threshold", label)
    if "full_share" in options:
        share = options["full_share"]
        _check_number(share, "full_share", label)
        if not 0.0 <= float(share) <= 1.0:
            raise RecipeError(f"{label}: full_share must lie in [0, 1], got {share!r}")
    if options.get("aggregate", "max") not in ("max", "mean"):
        raise RecipeError(f"{label}: aggregate must be 'max' or 'mean', got "
                          f"{options['aggregate']!r}")
    for key, minimum in (("sink", 0), ("window", 0), ("context_length", 1), ("n_random", 0),
                         ("n_bootstrap", 0)):
        if key in options:
            _check_int(options[key], key, minimum, label)
    if "task" in options:
        _check_task(options, label)
    else:
        stray = sorted({"task_options", "n_random", "n_bootstrap", "batch_size"} & set(options))
        if stray:
            raise RecipeError(f"{label}: {', '.join(stray)} only apply with task = \"...\" "
                              "(the task the plan is measured on)")


def _check_causal(kind: str, options: dict[str, Any], earlier: Sequence[Step],
                  label: str) -> None:
    """Validate the keys of an ``ablate`` / ``dose`` step (see the module docstring)."""
    from headprobe.errors import InterventionError
    from headprobe.experiments.runner import check_method_options
    from headprobe.interventions import experiment_methods

    _check_task(options, label)
    methods = experiment_methods()
    method = options.get("method", "zero")
    if method not in methods:
        raise RecipeNameError(f"{label}: " + unknown_name_message("method", method, methods))
    method_options = options.get("method_options", {})
    if not isinstance(method_options, dict):
        raise RecipeError(f"{label}: method_options must be a table, e.g. method_options = "
                          "{ factor = 0.5 }")
    try:
        check_method_options(method, method_options)
    except InterventionError as error:
        raise RecipeError(f"{label}: {error}") from error
    for key in ("n_random", "n_bootstrap"):
        if key in options:
            _check_int(options[key], key, 0, label)
    random_from = options.get("random_from", "same_layers")
    if random_from not in ("same_layers", "uniform"):
        raise RecipeError(f"{label}: random_from must be 'same_layers' or 'uniform', got "
                          f"{random_from!r}")
    if ("heads_from" in options) == ("heads" in options):
        raise RecipeError(f"{label} needs exactly one of heads_from = \"<earlier scan step>\" "
                          "(with top and/or threshold) and heads = \"LAYER.HEAD,...\"")
    if "top" in options:
        _check_int(options["top"], "top", 1, label)
    if "threshold" in options:
        _check_number(options["threshold"], "threshold", label)
    if "rank_by" in options and not isinstance(options["rank_by"], str):
        raise RecipeError(f"{label}: rank_by must name a column of the heads_from table, got "
                          f"{options['rank_by']!r}")
    n_heads: int | None = None
    if "heads" in options:
        if "top" in options or "threshold" in options or "rank_by" in options:
            raise RecipeError(f"{label}: top, threshold and rank_by pick heads from heads_from; "
                              "with an explicit heads list leave them out")
        n_heads = len(explicit_heads(options["heads"], label))
    else:
        source = options["heads_from"]
        _scan_source(source, "heads_from", earlier, label)
        if kind == "ablate" and "top" not in options and "threshold" not in options:
            raise RecipeError(f"{label}: say which heads of {source!r} to ablate: top = K "
                              "and/or threshold = X")
        n_heads = options.get("top")
    if kind == "dose":
        ks = options.get("ks")
        if (not isinstance(ks, list) or not ks
                or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1
                           for k in ks)):
            raise RecipeError(f"{label}: a dose step needs ks = [1, 2, 4, ...] (integers >= 1), "
                              f"got {ks!r}")
        if n_heads is not None and max(ks) > n_heads:
            raise RecipeError(f"{label}: k = {max(ks)} is more than the {n_heads} heads the "
                              "step takes; lower ks or raise top")


def _check_int(value: Any, key: str, minimum: int | None, label: str) -> None:
    """:class:`RecipeError` unless ``value`` is an integer (``>= minimum``)."""
    if not isinstance(value, int) or isinstance(value, bool) or (
            minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise RecipeError(f"{label}: {key} must be an integer{bound}, got {value!r}")


def _check_number(value: Any, key: str, label: str) -> None:
    """:class:`RecipeError` unless ``value`` is a number."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise RecipeError(f"{label}: {key} must be a number, got {value!r}")


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
