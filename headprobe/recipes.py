"""Scripted head-discovery recipes: small TOML files that the CLI runs.

A recipe names a model and an ordered list of steps: scans that score every head, then causal
checks of the best heads of an earlier scan against random head sets of the same size::

    name = "induction-heads"
    description = "..."
    model = "smollm2-135m-instruct"

    [[step]]
    kind = "scan"                  # score every head with one scorer
    scorer = "induction"
    n = 32
    seed = 0
    params = { seq_len = 50 }

    [[step]]
    kind = "ablate"                # headprobe.experiments.ablation_experiment
    name = "induction_ablation"    # the step's folder and summary key (default: its kind)
    task = "induction_copy"
    task_options = { n = 48 }
    heads_from = "induction"       # an earlier scan step (its name: the scorer by default)
    top = 6                        # and/or threshold = 0.5; or heads = "18.6,17.3"
    method = "zero"
    n_random = 10

    [[step]]
    kind = "dose"                  # headprobe.experiments.dose_response
    task = "induction_copy"
    heads_from = "induction"
    ks = [1, 2, 4, 6]              # top defaults to max(ks)

    [[step]]
    kind = "kv_budget"             # headprobe.kv_budget.plan_kv_budget (+ plan_accuracy)
    name = "budget"
    from = "induction"             # an earlier scan step
    full_share = 0.2               # or threshold = 0.1
    sink = 4
    window = 64
    task = "induction_copy"        # optional: measure the plan vs random kv heads
    n_random = 2

    [report]
    top = 10
    threshold = 0.5

Steps run in the order written. One ``[[step]]`` array keeps that order: TOML does not keep
the relative order of arrays of tables with different names, so ``[[ablate]]`` / ``[[dose]]``
arrays are refused with a message saying so. Older files made only of ``[[scan]]`` tables
(no ``kind``) are still read, as scan steps in their order.

Keys of a scan step: ``scorer`` (required), ``name``, ``n``, ``seed``, ``batch_size``,
``params``. Keys of an ``ablate`` / ``dose`` step: ``task`` (required, a registered task),
``task_options``, either ``heads_from`` (with ``top`` and/or ``threshold``; a dose step
defaults to ``top = max(ks)``) or ``heads`` (``"18.6,17.3"`` or ``[[18, 6], [17, 3]]``),
``method`` (:data:`headprobe.interventions.METHODS`; default ``zero``), ``method_options``,
``n_random`` (default 10 for ablate, 5 for dose), ``random_from`` (``same_layers`` or
``uniform``), ``seed``, ``n_bootstrap`` (default 1000), ``batch_size`` and, for ``dose``,
``ks`` (required). Keys of a ``kv_budget`` step: ``from`` (required, an earlier scan step),
exactly one of ``threshold`` (kv heads scoring above it keep a full cache) and ``full_share``
(that share of kv heads, best first, keeps it), ``aggregate`` (``max`` or ``mean`` over the
query heads of a kv group; default ``max``), ``sink`` (default 4), ``window`` (default 32),
``context_length`` (where to report the memory saved; default: the task's longest prompt plus
its new tokens, else 1024, 4096 and 32768 tokens) and, to measure the plan with
:func:`headprobe.kv_budget.plan_accuracy`, ``task`` with ``task_options``, ``n_random``
(default 5), ``seed``, ``n_bootstrap`` and ``batch_size``. A task whose ``make_task`` takes a
``model`` (``niah``, ``ioi``, ``facts``) gets the recipe's model (so ``niah`` lengths count
the model's tokens); ``task_options`` cannot name one. :func:`load_recipe` checks all of this
before any model is loaded and raises :class:`~headprobe.errors.RecipeError` naming the step and
the problem.

Running it writes each step under ``<out>/<step name>/`` (a scan step's name is its scorer
unless it says otherwise) and rewrites ``summary.json`` after every step: the scans' top heads
and counts above the report threshold under ``scans``, the causal steps' headline numbers
(heads used, target delta with its 95% interval, mean and lowest random delta, share of random
sets as low; for dose the accuracy per k) under ``experiments``, a ``kv_budget`` step's plan
(full and streaming kv heads, memory saved, accuracies of the clean model, the plan and the
random kv-head sets with 95% intervals) under ``kv_budgets``, and the order of the steps
under ``steps``. A recipe killed half-way and run again with the same arguments skips the
steps already done under the same run key and resumes the interrupted scan per batch where its
scorer can (:mod:`headprobe.checkpoint`). A causal step's run key covers its parameters, the
heads it used (so a rerun scan that ranks heads differently reruns it), the model and the
task's fingerprint (tokenized prompts, answers and judge); a ``kv_budget`` step's covers its
parameters, the plan's full kv heads, the model and its task's fingerprint. A ``kv_budget``
step writes its plan under ``<out>/<step name>/`` in every format :mod:`headprobe.kv_budget`
knows: ``plan.json``, ``plan.csv``, ``duo_attention/`` and ``headkv.json`` (left out, with the
reason in the summary, when the scores cannot be HeadKV's: negative or NaN), plus
``accuracy.csv`` when it measures a task.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from headprobe.checkpoint import (
    describe_changes,
    run_key,
    run_key_fields,
    saved_table_matches,
)
from headprobe.errors import HeadprobeError, RecipeError
from headprobe.headtable import (
    HeadTable,
    atomic_write,
    ensure_output_dir,
    to_jsonable,
    write_json,
)
from headprobe.registry import get_scorer

STEP_KINDS = ("scan", "ablate", "dose", "kv_budget")
_TOP_KEYS = {"name", "description", "model", "step", "scan", "report"}
_REPORT_KEYS = {"top", "threshold"}
_SCAN_KEYS = {"scorer", "n", "seed", "batch_size", "params"}
_CAUSAL_KEYS = {"task", "task_options", "heads_from", "top", "threshold", "heads", "method",
                "method_options", "n_random", "random_from", "seed", "n_bootstrap",
                "batch_size"}
_KV_BUDGET_KEYS = {"from", "threshold", "full_share", "aggregate", "sink", "window",
                   "context_length", "task", "task_options", "n_random", "seed", "n_bootstrap",
                   "batch_size"}
_STEP_KEYS = {"scan": _SCAN_KEYS, "ablate": _CAUSAL_KEYS, "dose": _CAUSAL_KEYS | {"ks"},
              "kv_budget": _KV_BUDGET_KEYS}
_REQUIRED_KEY = {"scan": "scorer", "ablate": "task", "dose": "task", "kv_budget": "from"}
_KV_BUDGET_DEFAULTS: dict[str, Any] = {"aggregate": "max", "sink": 4, "window": 32,
                                       "n_random": 5, "n_bootstrap": 1000}
_DEFAULT_N_RANDOM = {"ablate": 10, "dose": 5}
# Interventions that need a tensor option cannot be written in a TOML file.
_TENSOR_METHODS = ("add_to_output", "set_pattern")
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
        raise RecipeError(f"{where}: step {index} has kind {kind!r}; kind must be one of "
                          f"{list(STEP_KINDS)}")
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
        get_scorer(options["scorer"])  # unknown scorer -> UnknownScorerError now, not mid-run
        if "n" in options:
            _check_int(options["n"], "n", 1, label)
        if "params" in options and not isinstance(options["params"], dict):
            raise RecipeError(f"{label}: params must be a table, e.g. params = {{ seq_len = 8 }}")
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
    from headprobe.tasks import TASK_MODULES

    task = options["task"]
    if task not in TASK_MODULES:
        raise RecipeError(f"{label}: unknown task {task!r}; registered tasks: "
                          f"{', '.join(TASK_MODULES)}")
    task_options = options.get("task_options", {})
    if not isinstance(task_options, dict):
        raise RecipeError(f"{label}: task_options must be a table, e.g. task_options = "
                          "{ n = 48 }")
    if "model" in task_options:
        raise RecipeError(f"{label}: task_options cannot set model: a task that takes one gets "
                          "the recipe's model")
    make_task = importlib.import_module(TASK_MODULES[task]).make_task
    parameters = inspect.signature(make_task).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        unknown = sorted(set(task_options) - set(parameters))
        if unknown:
            raise RecipeError(f"{label}: task {task!r} has no option {', '.join(unknown)}; its "
                              f"options: {', '.join(parameters) or 'none'}")


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
    from headprobe.interventions import METHODS

    _check_task(options, label)
    methods = [m for m in METHODS if m not in _TENSOR_METHODS]
    method = options.get("method", "zero")
    if method not in methods:
        raise RecipeError(f"{label}: unknown method {method!r}; methods: {', '.join(methods)}")
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
    n_heads: int | None = None
    if "heads" in options:
        if "top" in options or "threshold" in options:
            raise RecipeError(f"{label}: top and threshold pick heads from heads_from; with an "
                              "explicit heads list leave them out")
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


def explicit_heads(value: Any, label: str = "heads") -> list[tuple[int, int]]:
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
        return [(int(p[0]), int(p[1])) for p in value]
    raise RecipeError(f"{label}: heads must be \"LAYER.HEAD,...\" (e.g. \"18.6,17.3\") or "
                      f"[[LAYER, HEAD], ...], got {value!r}")


# ---------------------------------------------------------------------------------------------
# Running


def run_recipe(
    recipe: Recipe,
    model: Any,
    out_dir: str | Path,
    *,
    progress: bool = True,
    echo: Echo = print,
    fresh: bool = False,
) -> dict[str, Any]:
    """Run every step of ``recipe`` on ``model`` in order; save results and ``summary.json``.

    Returns ``{step name: result}``: a :class:`HeadTable` for a scan step, an
    :class:`~headprobe.experiments.ExperimentResult` for an ``ablate`` / ``dose`` step, a
    :class:`KVBudgetStepResult` for a ``kv_budget`` step.

    Resumable: a step whose result is already saved under ``<out_dir>/<step name>/`` with the
    same run key is loaded instead of run (and ``echo`` says so; a scan's key is
    :func:`headprobe.checkpoint.saved_table_matches`'s, a causal step's covers its parameters,
    heads, model and task fingerprint), and a scan whose scorer resumes per batch keeps its
    checkpoint under ``<out_dir>/.checkpoints/``; ``fresh`` recomputes every step.
    """
    folder = ensure_output_dir(out_dir)
    top = int(recipe.report.get("top", 10))
    threshold = recipe.report.get("threshold")
    results: dict[str, Any] = {}
    tables: dict[str, HeadTable] = {}
    summary: dict[str, Any] = {"recipe": recipe.name, "description": recipe.description,
                               "model": recipe.model, "steps": [], "scans": {}}
    for step in recipe.steps:
        if step.kind == "scan":
            table = _run_scan(step, model, folder, progress=progress, echo=echo, fresh=fresh)
            tables[step.name] = results[step.name] = table
            best = table.top(top)[["layer", "head", "score"]]
            entry: dict[str, Any] = {"top": best.to_dict(orient="records")}
            if threshold is not None:
                entry["threshold"] = threshold
                entry["n_above_threshold"] = int((table["score"] > threshold).sum())
            summary["scans"][step.name] = entry
            echo(f"{step.name}: top {top} heads\n{best.to_string(index=False)}")
            if threshold is not None:
                echo(f"{entry['n_above_threshold']} of {len(table)} heads score above "
                     f"{threshold}")
        elif step.kind == "kv_budget":
            result, entry = _run_kv_budget(step, model, folder, tables, progress=progress,
                                           echo=echo, fresh=fresh)
            results[step.name] = result
            summary.setdefault("kv_budgets", {})[step.name] = entry
            echo(_describe_kv_budget(step, entry))
        else:
            result, entry = _run_causal(step, model, folder, tables, progress=progress,
                                        echo=echo, fresh=fresh)
            results[step.name] = result
            summary.setdefault("experiments", {})[step.name] = entry
            echo(_describe_entry(step, entry))
        summary["steps"].append({"name": step.name, "kind": step.kind})
        write_json(folder / "summary.json", summary)  # after every step: nothing lost
    return results


def _run_scan(step: Step, model: Any, folder: Path, *, progress: bool, echo: Echo,
              fresh: bool) -> HeadTable:
    """Run (or load, when already done under the same run key) one scan step."""
    options = step.options
    scorer = get_scorer(options["scorer"])
    run = scorer.plan(model, n=options.get("n"), seed=int(options.get("seed", 0)),
                      batch_size=int(options.get("batch_size", 8)), **options.get("params", {}))
    saved = folder / step.name
    if not fresh and saved_table_matches(saved, run.key, name=scorer.name,
                                         fields=run.key_fields, echo=echo):
        echo(f"{step.name}: step already done (same run key, table in {saved}); skipped")
        return HeadTable.load(saved, scorer=scorer.name)
    table = run.run(progress=progress, checkpoint_dir=folder, fresh=fresh, echo=echo)
    table.save(saved)
    return table


def select_heads(step: Step, tables: Mapping[str, HeadTable]) -> tuple[list[tuple[int, int]],
                                                                        str]:
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
        heads = tables[name].heads(k=top, threshold=threshold)
        parts = ([f"top {top}"] if top is not None else []) + (
            [f"above {threshold}"] if threshold is not None else [])
        source = f"{' and '.join(parts)} heads of {name}"
        if not heads:
            raise RecipeError(f"{label}: no head of {name!r} scores above {threshold}; lower "
                              "the threshold or use top = K")
    if step.kind == "dose" and max(step.options["ks"]) > len(heads):
        raise RecipeError(f"{label}: k = {max(step.options['ks'])} but only {len(heads)} heads "
                          f"({source}); lower ks or the threshold")
    return heads, source


def build_task(name: str, options: Mapping[str, Any], model: Any) -> Any:
    """Build task ``name`` with ``options``, passing ``model`` when its ``make_task`` takes one
    (e.g. ``niah`` then counts context lengths in the model's tokens)."""
    from headprobe.tasks import TASK_MODULES, get_task

    kwargs = dict(options)
    make_task = importlib.import_module(TASK_MODULES[name]).make_task
    if "model" in inspect.signature(make_task).parameters:
        kwargs["model"] = model
    return get_task(name, **kwargs)


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


def _causal_params(step: Step, heads: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """Every parameter of a causal step with its default filled in, and the heads in order."""
    options = step.options
    params: dict[str, Any] = {
        "kind": step.kind,
        "task": options["task"],
        "task_options": dict(options.get("task_options", {})),
        "method": options.get("method", "zero"),
        "method_options": dict(options.get("method_options", {})),
        "n_random": int(options.get("n_random", _DEFAULT_N_RANDOM[step.kind])),
        "random_from": options.get("random_from", "same_layers"),
        "n_bootstrap": int(options.get("n_bootstrap", 1000)),
        "heads": ",".join(f"{layer}.{head}" for layer, head in heads),
    }
    if step.kind == "dose":
        params["ks"] = sorted({int(k) for k in options["ks"]})
    return params


def _saved_step_matches(saved: Path, key: str, name: str, fields: Mapping[str, Any],
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


def _run_causal(step: Step, model: Any, folder: Path, tables: Mapping[str, HeadTable], *,
                progress: bool, echo: Echo, fresh: bool) -> tuple[Any, dict[str, Any]]:
    """Run (or load) one ``ablate`` / ``dose`` step; its result and its summary entry."""
    from headprobe.experiments import ExperimentResult, ablation_experiment, dose_response
    from headprobe.experiments.ablation import ablation_figure
    from headprobe.experiments.dose import dose_figure
    from headprobe.models import describe_model

    options = step.options
    heads, source = select_heads(step, tables)
    task = build_task(options["task"], options.get("task_options", {}), model)
    spec = describe_model(model)
    params = _causal_params(step, heads)
    seed = int(options.get("seed", 0))
    batch_size = int(options.get("batch_size", 8))
    fields = run_key_fields(name=step.name, spec=spec, params=params, seed=seed, n=len(task),
                            batch_size=batch_size, fingerprint=task_fingerprint(model, task))
    key = run_key(fields)
    saved = folder / step.name
    stem = "ablation" if step.kind == "ablate" else "dose_response"
    meta = None if fresh else _saved_step_matches(saved, key, step.name, fields, echo)
    if meta is not None:
        echo(f"{step.name}: step already done (same run key, results in {saved}); skipped")
        table = pd.read_csv(saved / f"{stem}.csv")
        title = f"{params['method']} {step.kind} on {task.name} — {spec.name}"
        figure = ablation_figure(table, title) if step.kind == "ablate" else dose_figure(
            table, title)
        summary = dict(meta.get("summary", {}))
        result = ExperimentResult(table, figure, summary,
                                  {k: v for k, v in meta.items() if k != "summary"}, name=stem)
    else:
        common: dict[str, Any] = {
            "method": params["method"], "n_random": params["n_random"], "seed": seed,
            "random_from": params["random_from"], "batch_size": batch_size,
            "progress": progress, "n_bootstrap": params["n_bootstrap"],
            "method_options": dict(params["method_options"]),
        }
        if step.kind == "ablate":
            result = ablation_experiment(model, task, heads, **common)
        else:
            result = dose_response(model, task, heads, ks=params["ks"], **common)
        result.meta.update({"recipe_step": step.name, "heads_source": source,
                            "run_key": key, "run_key_fields": fields})
        (saved / "meta.json").unlink(missing_ok=True)  # a half-saved result never matches
        result.save(saved)
    entry = {"kind": step.kind, "task": task.name, "method": params["method"],
             "heads": params["heads"], "heads_source": source, "n_prompts": len(task),
             **result.summary}
    # through JSON once, so a fresh and a skipped step give the same entry (int keys...)
    return result, json.loads(json.dumps(to_jsonable(entry)))


def _describe_entry(step: Step, entry: Mapping[str, Any]) -> str:
    """One or two lines for ``echo`` about a finished ``ablate`` / ``dose`` step."""
    head = (f"{step.name}: {entry['method']} {step.kind} of {entry['heads']} "
            f"({entry['heads_source']}) on {entry['task']} ({entry['n_prompts']} prompts)")
    if step.kind == "ablate":
        low, high = entry["target_delta_ci"]
        ci = (f" [{low:+.3f}, {high:+.3f}]" if low is not None and high is not None
              else " (no interval: n_bootstrap = 0)")
        line = (f"baseline {entry['baseline_accuracy']:.3f} · target delta "
                f"{entry['target_delta']:+.3f}{ci}")
        if "mean_random_delta" in entry:
            line += (f" · random delta mean {entry['mean_random_delta']:+.3f}, min "
                     f"{entry['min_random_delta']:+.3f} · share of random sets as low "
                     f"{entry['share_random_as_low']:.2f}")
        return f"{head}\n{line}"
    random = entry.get("mean_random_accuracy", {})
    rows = [f"k={k}: top-k {acc:.3f}" + (f", random mean {random[k]:.3f}" if k in random
                                         else "")
            for k, acc in entry["top_k_accuracy"].items()]
    return f"{head}\nbaseline {entry['baseline_accuracy']:.3f} · " + " · ".join(rows)


# ---------------------------------------------------------------------------------------------
# KV-cache budget steps


@dataclass
class KVBudgetStepResult:
    """What a ``kv_budget`` step gives :func:`run_recipe`'s caller.

    Attributes:
        plan: the :class:`~headprobe.kv_budget.KVBudgetPlan`.
        accuracy: :func:`~headprobe.kv_budget.plan_accuracy`'s table (one row per condition:
            baseline, plan, random_0, ...), or ``None`` when the step names no task.
        summary: the step's entry in ``summary.json`` under ``kv_budgets``.
    """

    plan: Any
    accuracy: pd.DataFrame | None
    summary: dict[str, Any]


def _kv_budget_params(step: Step, plan: Any) -> dict[str, Any]:
    """Every parameter of a ``kv_budget`` step with its default filled in, and the plan's full
    kv heads (so a rerun scan that ranks heads differently reruns the step)."""
    options = step.options
    params: dict[str, Any] = {
        "kind": step.kind, "from": options["from"],
        **{key: options.get(key, default) for key, default in _KV_BUDGET_DEFAULTS.items()},
        "threshold": options.get("threshold"), "full_share": options.get("full_share"),
        "context_length": options.get("context_length"),
        "full_heads": ",".join(f"{layer}.{g}" for layer, g in plan.full_heads()),
    }
    if "task" in options:
        params.update(task=options["task"], task_options=dict(options.get("task_options", {})))
    else:
        params.update(task=None, n_random=None, n_bootstrap=None)
    return params


def _accuracy_entry(table: pd.DataFrame) -> dict[str, Any]:
    """Accuracies with their 95% intervals from :func:`plan_accuracy`'s table."""
    rows = {row["condition"]: row for row in table.to_dict(orient="records")}
    randoms = [row for name, row in rows.items() if name.startswith("random_")]

    def interval(row: Mapping[str, Any], low: str, high: str) -> list[float | None]:
        return [None if pd.isna(row[low]) else float(row[low]),
                None if pd.isna(row[high]) else float(row[high])]

    entry: dict[str, Any] = {
        "baseline_accuracy": float(rows["baseline"]["accuracy"]),
        "baseline_accuracy_ci": interval(rows["baseline"], "ci_low", "ci_high"),
        "plan_accuracy": float(rows["plan"]["accuracy"]),
        "plan_accuracy_ci": interval(rows["plan"], "ci_low", "ci_high"),
        "plan_delta": float(rows["plan"]["delta"]),
        "plan_delta_ci": interval(rows["plan"], "delta_ci_low", "delta_ci_high"),
        "random_accuracies": [float(row["accuracy"]) for row in randoms],
        "random_accuracy_cis": [interval(row, "ci_low", "ci_high") for row in randoms],
    }
    if randoms:
        accuracies = entry["random_accuracies"]
        entry["mean_random_accuracy"] = sum(accuracies) / len(accuracies)
        entry["min_random_accuracy"] = min(accuracies)
        entry["max_random_accuracy"] = max(accuracies)
        entry["share_random_as_high"] = sum(
            a >= entry["plan_accuracy"] for a in accuracies) / len(accuracies)
    return entry


def _write_plan(plan: Any, saved: Path) -> str | None:
    """Write ``plan`` in every format under ``saved``; the reason HeadKV's file was left out,
    or ``None`` when it was written."""
    from headprobe.kv_budget import KVBudgetError

    plan.to_json(saved / "plan.json")
    plan.to_csv(saved / "plan.csv")
    plan.to_duo_attention(saved / "duo_attention")
    try:
        plan.to_headkv(saved / "headkv.json")
    except KVBudgetError as error:
        (saved / "headkv.json").unlink(missing_ok=True)
        return str(error)
    return None


def _run_kv_budget(step: Step, model: Any, folder: Path, tables: Mapping[str, HeadTable], *,
                   progress: bool, echo: Echo, fresh: bool) -> tuple[KVBudgetStepResult,
                                                                   dict[str, Any]]:
    """Run (or load) one ``kv_budget`` step; its result and its summary entry."""
    from headprobe.kv_budget import KVBudgetError, KVBudgetPlan, plan_accuracy, plan_kv_budget
    from headprobe.models import describe_model

    options = step.options
    spec = describe_model(model)
    label = f"step {step.name!r}"
    try:
        plan = plan_kv_budget(tables[options["from"]], spec, threshold=options.get("threshold"),
                              full_share=options.get("full_share"),
                              aggregate=options.get("aggregate", "max"),
                              sink=int(options.get("sink", 4)),
                              window=int(options.get("window", 32)))
    except KVBudgetError as error:
        raise RecipeError(f"{label}: {error}") from error
    params = _kv_budget_params(step, plan)
    task = None
    if "task" in options:
        task = build_task(options["task"], options.get("task_options", {}), model)
    seed = int(options.get("seed", 0))
    batch_size = int(options.get("batch_size", 8))
    fields = run_key_fields(
        name=step.name, spec=spec, params=params, seed=seed if task is not None else None,
        n=len(task) if task is not None else None,
        batch_size=batch_size if task is not None else None,
        fingerprint=task_fingerprint(model, task) if task is not None else None)
    key = run_key(fields)
    saved = folder / step.name
    meta = None if fresh else _saved_step_matches(saved, key, step.name, fields, echo)
    if meta is not None:
        echo(f"{step.name}: step already done (same run key, plan in {saved}); skipped")
        plan = KVBudgetPlan.from_json(saved / "plan.json")
        accuracy = (pd.read_csv(saved / "accuracy.csv") if task is not None else None)
        entry = dict(meta["summary"])
        return KVBudgetStepResult(plan, accuracy, entry), entry
    ensure_output_dir(saved)
    (saved / "meta.json").unlink(missing_ok=True)  # a half-saved result never matches
    headkv_skipped = _write_plan(plan, saved)
    entry: dict[str, Any] = {"kind": step.kind, "from": options["from"], **plan.summary()}
    if headkv_skipped is not None:
        echo(f"{step.name}: HeadKV file not written: {headkv_skipped}")
        entry["headkv_not_written"] = headkv_skipped
    accuracy: pd.DataFrame | None = None
    if task is not None:
        try:
            measured = plan_accuracy(model, task, plan,
                                     n_random=int(options.get("n_random", 5)), seed=seed,
                                     batch_size=batch_size,
                                     n_bootstrap=int(options.get("n_bootstrap", 1000)),
                                     context_length=options.get("context_length"))
        except KVBudgetError as error:
            raise RecipeError(f"{label}: {error}") from error
        accuracy = measured.table
        table = accuracy
        atomic_write(saved / "accuracy.csv", lambda p: table.to_csv(p, index=False))
        entry.update(task=task.name, n_prompts=len(task), n_random=measured.summary["n_random"],
                     **_accuracy_entry(accuracy))
        length: int | None = int(measured.summary["context_length"])
    else:
        length = options.get("context_length")
    if length is not None:
        saved_there = plan.memory_saved(int(length))
        entry.update(context_length=int(length), memory_saved_at_context_length=saved_there)
        entry["memory_saved"] = {str(length): saved_there, **entry["memory_saved"]}
    entry = json.loads(json.dumps(to_jsonable(entry)))  # as a skipped step would read it
    write_json(saved / "meta.json", {"recipe_step": step.name, "run_key": key,
                                     "run_key_fields": fields, "summary": entry})
    return KVBudgetStepResult(plan, accuracy, entry), entry


def _describe_kv_budget(step: Step, entry: Mapping[str, Any]) -> str:
    """One or two lines for ``echo`` about a finished ``kv_budget`` step."""
    saved = " · ".join(f"{float(v):.1%} at {t} tokens" for t, v in entry["memory_saved"].items())
    head = (f"{step.name}: kv budget from {entry['from']}: {entry['n_full']} full / "
            f"{entry['n_streaming']} streaming of {entry['n_kv_heads_total']} kv heads "
            f"(sink {entry['sink']}, window {entry['window']}) · memory saved {saved}")
    if "plan_accuracy" not in entry:
        return head
    low, high = entry["plan_accuracy_ci"]
    ci = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
    line = (f"on {entry['task']} ({entry['n_prompts']} prompts): baseline "
            f"{entry['baseline_accuracy']:.3f} · plan {entry['plan_accuracy']:.3f}{ci}")
    if "mean_random_accuracy" in entry:
        line += (f" · random kv heads mean {entry['mean_random_accuracy']:.3f} (min "
                 f"{entry['min_random_accuracy']:.3f}, max {entry['max_random_accuracy']:.3f})")
    return f"{head}\n{line}"
