"""``validate``: run each scorer on its ground-truth models and measure it against the known heads.

For every :class:`~headprobe.groundtruth.GroundTruthCase`: build the model (once per
``case.model`` id within a run), run the scorer through :func:`headprobe.registry.scan`, read
the ``[n_layers, n_heads]`` grid of ``case.column`` and compute the metrics of
:mod:`headprobe.validate.metrics` against ``case.known``; a case *fails* when a metric falls
below one of its floors (``case.minimum``). With ``causal=True`` a case that names a
``causal_task`` also ablates its known heads and ``n_random`` random same-layer head sets
(:func:`headprobe.experiments.ablation_experiment`): the known heads *separate* when their
accuracy drop is larger than every random set's (a case whose heads do not separate fails).

The result is one long table, one row per case (:data:`COLUMNS`), a pandas DataFrame whose
``attrs`` hold the run's metadata. It is not a :class:`~headprobe.headtable.HeadTable`: a
HeadTable has one row per (layer, head) of one model, a validation table one row per
(scorer, ground-truth model).

Saving (``out``): each finished case is written at once, as its own result set
``<out>/cases/<case folder>/`` (``scores.csv``: the grid; ``meta.json``: the run's numbers),
so a run killed half-way keeps the finished cases and, started again, loads them instead of
running them again (a case is keyed by what its scores depend on: head type, scorer, model,
builders, prompts, parameters; the causal check by the known heads, task, ``n_random`` and
seed too). Thresholds, floors and known heads are applied to the loaded grid, so changing a
floor never reruns a scorer. At the end ``validation.csv``, ``validation.parquet``,
``validation.html`` and ``meta.json`` are written into ``out`` as one result set
(:mod:`headprobe.resultset`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from headprobe import registry
from headprobe.groundtruth import GroundTruthCase
from headprobe.headtable import json_text, to_jsonable
from headprobe.resultset import ensure_folder, result_set
from headprobe.validate.cases import case_id
from headprobe.validate.metrics import Metrics, failed_floors, score_metrics
from headprobe.validate.store import (
    CASES_FOLDER,
    TABLE_NAME,
    case_folder_name,
    format_known,
    load_case,
    save_case,
)
from headprobe.version import headprobe_version

log = logging.getLogger(__name__)

COLUMNS = (
    "head_type", "scorer", "model", "source", "n_known", "n_heads", "n_nan", "threshold",
    "auroc", "precision", "recall", "top_k_precision", "average_precision", "passed",
    "failed_floors", "seconds", "column", "known", "floors", "target_delta",
    "mean_random_delta", "min_random_delta", "share_random_as_low", "separates", "error",
    "description", "key",
)
"""The validation table's columns (see the README's Validation section)."""

CAUSAL_COLUMNS = ("target_delta", "mean_random_delta", "min_random_delta",
                  "share_random_as_low")
DEFAULT_N_RANDOM = 10


@dataclass
class CaseOutcome:
    """One case's run: its table row, and the grid and metrics the report draws.

    Attributes:
        case: the case.
        key: its key (what its scores depend on).
        row: its row of the validation table (:data:`COLUMNS`).
        grid: ``[n_layers, n_heads]`` scores (``None`` when the run failed).
        metrics: the metrics of the grid (``None`` when the run failed).
        resumed: loaded from an earlier run's saved case.
    """

    case: GroundTruthCase
    key: str
    row: dict[str, Any]
    grid: np.ndarray | None = None
    metrics: Metrics | None = None
    resumed: bool = False
    causal: dict[str, Any] = field(default_factory=dict)


def _callable_name(function: Callable[..., Any] | None) -> str | None:
    if function is None:
        return None
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', '?')}"


def _digest(fields: Mapping[str, Any]) -> str:
    return hashlib.sha256(json_text(fields).encode()).hexdigest()[:16]


def case_key(case: GroundTruthCase) -> str:
    """The key of a case's scores: head type, scorer, model id, source, description, the
    builders' names, parameters, ``n``, column and headprobe's version (not the known heads,
    threshold or floors, which are applied to the saved grid)."""
    return _digest({
        "head_type": case.head_type, "scorer": case.scorer, "model": case.model,
        "source": case.source, "description": case.description,
        "build": _callable_name(case.build), "prompts": _callable_name(case.prompts),
        "params": to_jsonable(dict(case.params)), "n": case.n, "column": case.column,
        "version": headprobe_version()})


def causal_key(case: GroundTruthCase, *, n_random: int, seed: int) -> str:
    """The key of a case's causal check: its score key, known heads, task, options,
    ``n_random`` and seed."""
    return _digest({"case": case_key(case), "known": sorted(map(list, case.known)),
                    "task": case.causal_task,
                    "options": to_jsonable(dict(case.causal_options)),
                    "n_random": n_random, "seed": seed})


def _floors_text(minimum: Mapping[str, float]) -> str:
    return ", ".join(f"{name}>={value:g}" for name, value in minimum.items())


def _base_row(case: GroundTruthCase, key: str) -> dict[str, Any]:
    row: dict[str, Any] = {name: math.nan for name in COLUMNS}
    row.update(head_type=case.head_type, scorer=case.scorer, model=case.model,
               source=case.source, n_known=len(case.known), threshold=float(case.threshold),
               column=case.column, known=format_known(list(case.known)),
               floors=_floors_text(case.minimum), description=case.description, key=key,
               separates=None, error=None, failed_floors="", passed=False)
    return row


def case_row(case: GroundTruthCase, key: str, grid: np.ndarray, seconds: float,
             causal: Mapping[str, Any] | None) -> tuple[dict[str, Any], Metrics]:
    """The table row of a case whose scorer gave ``grid``: metrics, floors, causal check."""
    metrics = score_metrics(grid, case.known, case.threshold)
    row = _base_row(case, key)
    row.update(n_heads=metrics.n_heads, n_nan=metrics.n_nan, seconds=round(seconds, 3),
               **metrics.values())
    problems = failed_floors(metrics.values(), case.minimum)
    if metrics.n_known_nan:
        problems.append(f"{metrics.n_known_nan} known head(s) without a score")
    if causal:
        row.update({name: causal.get(name, math.nan) for name in CAUSAL_COLUMNS})
        row["separates"] = bool(causal["separates"])
        if not causal["separates"]:
            problems.append(
                f"causal: ablating the known heads on {case.causal_task} (delta "
                f"{causal['target_delta']:+.3f}) does not hurt more than every random "
                f"same-layer set (lowest {causal.get('min_random_delta', math.nan):+.3f})")
    row["failed_floors"] = "; ".join(problems)
    row["passed"] = not problems
    return row, metrics


def run_causal(model: Any, case: GroundTruthCase, *, n_random: int, seed: int) -> dict[str, Any]:
    """Ablate the known heads and ``n_random`` random same-layer sets on ``case.causal_task``
    (:func:`headprobe.experiments.ablation_experiment`, zero ablation); returns the target
    delta, the mean and lowest random delta, the share of random sets as low, and
    ``separates``: the target delta is below every random set's."""
    from headprobe.experiments import ablation_experiment
    from headprobe.tasks.build import build_task

    options = dict(case.causal_options)
    n = options.pop("n", None)
    task = build_task(str(case.causal_task), model, n=n, seed=seed, **options)
    result = ablation_experiment(model, task, sorted(case.known), n_random=n_random, seed=seed,
                                 progress=False)
    summary = result.summary
    out = {name: float(summary.get(name, math.nan)) for name in CAUSAL_COLUMNS}
    out["separates"] = bool(n_random > 0 and summary["target_delta"]
                            < summary["min_random_delta"] - 1e-12)
    out["n_prompts"] = int(summary["n_prompts"])
    out["baseline_accuracy"] = float(summary["baseline_accuracy"])
    return out


class _Models:
    """The ground-truth models of one run, each built once per ``case.model`` id."""

    def __init__(self) -> None:
        self.built: dict[str, Any] = {}

    def get(self, case: GroundTruthCase) -> Any:
        if case.model not in self.built:
            self.built[case.model] = case.build()
        return self.built[case.model]


def score_case(case: GroundTruthCase, model: Any) -> np.ndarray:
    """The scorer's ``[n_layers, n_heads]`` grid of ``case.column`` on ``model``."""
    prompts = case.prompts(model) if case.prompts is not None else None
    table = registry.scan(model, case.scorer, prompts, n=case.n, progress=False,
                          **dict(case.params))
    if case.column not in table.data.columns:
        raise KeyError(f"the {case.scorer} table has no column {case.column!r}; columns: "
                       f"{', '.join(map(str, table.data.columns))}")
    return table.pivot(case.column).to_numpy(dtype=float)


def _run_one(case: GroundTruthCase, key: str, models: _Models, *, folder: Path | None,
             causal: bool, n_random: int, seed: int, fresh: bool,
             echo: Callable[[str], Any]) -> CaseOutcome:
    want_causal = causal and case.causal_task is not None
    ckey = causal_key(case, n_random=n_random, seed=seed) if want_causal else None
    saved = None if (folder is None or fresh) else load_case(folder, key)
    started = time.perf_counter()
    try:
        if saved is not None:
            grid, meta = saved
            seconds = meta.get("row", {}).get("seconds")
            seconds = math.nan if seconds is None else float(seconds)
            found = meta.get("causal") or {}
            causal_result = found if want_causal and found.get("key") == ckey else None
            resumed = True
            echo(f"{case_id(case)}: scores already saved in {folder}; not run again")
        else:
            model = models.get(case)
            started = time.perf_counter()  # the scorer's time, not the model's build
            grid = score_case(case, model)
            seconds = time.perf_counter() - started
            causal_result, resumed = None, False
        if want_causal and causal_result is None:
            model = models.get(case)
            causal_started = time.perf_counter()
            causal_result = {"key": ckey, **run_causal(model, case, n_random=n_random,
                                                       seed=seed)}
            causal_result["seconds"] = round(time.perf_counter() - causal_started, 3)
            resumed = False  # something new to save
        row, metrics = case_row(case, key, grid, seconds, causal_result if want_causal else None)
    except Exception as error:  # one case's failure is a failed row, not a lost run
        log.debug("validation case %s failed", case_id(case), exc_info=True)
        row = _base_row(case, key)
        message = str(error).splitlines()[0] if str(error) else ""
        row.update(error=f"{type(error).__name__}: {message}",
                   failed_floors=f"error: {type(error).__name__}: {message}",
                   seconds=round(time.perf_counter() - started, 3))
        return CaseOutcome(case, key, row)
    outcome = CaseOutcome(case, key, row, grid=grid, metrics=metrics, resumed=resumed,
                          causal=dict(causal_result or {}))
    if folder is not None and not resumed:
        save_case(folder, key=key, name=case_id(case), grid=grid, row=row,
                  causal=outcome.causal)
    return outcome


def validation_meta(outcomes: Sequence[CaseOutcome], *, causal: bool, n_random: int,
                    seed: int, seconds: float, **extra: Any) -> dict[str, Any]:
    """The run's metadata (the table's ``attrs`` and ``meta.json``)."""
    import torch

    failed = [case_id(o.case) for o in outcomes if not o.row["passed"]]
    return {"kind": "validation", "name": TABLE_NAME, "n_cases": len(outcomes),
            "n_failed": len(failed), "failed": failed,
            "scorers": sorted({o.case.scorer for o in outcomes}),
            "causal": causal, "n_random": n_random, "seed": seed,
            "seconds": round(seconds, 2), "headprobe_version": headprobe_version(),
            "torch_version": torch.__version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"), **extra}


def save_validation(folder: Path, table: pd.DataFrame, outcomes: Sequence[CaseOutcome]) -> Path:
    """Write ``validation.csv``, ``.parquet``, ``.html`` and ``meta.json`` into ``folder``
    as one result set; returns the HTML page's path."""
    from headprobe.validate.report import render_report

    frame = table.copy()
    frame.attrs = {}  # parquet would embed attrs; meta.json is the one place for them
    page = render_report(table, outcomes)
    with result_set(folder, what=f"the validation table for {folder}") as staged:
        staged.write(f"{TABLE_NAME}.csv", lambda p: frame.to_csv(p, index=False))
        staged.write(f"{TABLE_NAME}.parquet", lambda p: frame.to_parquet(p, index=False))
        staged.write_text(f"{TABLE_NAME}.html", page)
        staged.write_text("meta.json", json_text(table.attrs))
    return folder / f"{TABLE_NAME}.html"


def validate(
    cases: Sequence[GroundTruthCase],
    *,
    out: str | Path | None = None,
    causal: bool = False,
    progress: bool = True,
    n_random: int = DEFAULT_N_RANDOM,
    seed: int = 0,
    fresh: bool = False,
    echo: Callable[[str], Any] | None = None,
) -> pd.DataFrame:
    """Measure each case's scorer against its known heads (see the module docstring).

    Args:
        cases: the cases (:func:`headprobe.validate.cases.collect_cases`).
        out: folder for the cases, the table and the HTML page (``None``: nothing saved).
        causal: also run each case's causal check (cases with a ``causal_task``).
        progress: a tqdm bar over the cases.
        n_random: random same-layer head sets of the causal check.
        seed: seeds the causal check (random sets, task items, bootstrap).
        fresh: ignore cases saved in ``out`` by an earlier run.
        echo: receives the "already saved" lines (default: a log record).

    Returns:
        One row per case (:data:`COLUMNS`); ``attrs``: the run's metadata, with
        ``attrs["report"]`` the HTML page when ``out`` is given. Failed cases have
        ``passed`` False and say why in ``failed_floors`` (an exception in a case becomes
        its ``error``; the other cases still run).
    """
    from tqdm.auto import tqdm

    say = echo if echo is not None else log.info
    root = ensure_folder(out) if out is not None else None
    models = _Models()
    outcomes: list[CaseOutcome] = []
    started = time.perf_counter()
    bar = tqdm(list(cases), desc="validate", disable=not progress, leave=False)
    try:
        for case in bar:
            bar.set_postfix_str(case_id(case))
            key = case_key(case)
            folder = None if root is None else root / CASES_FOLDER / case_folder_name(
                case.head_type, case.scorer, case.model, key)
            outcomes.append(_run_one(case, key, models, folder=folder, causal=causal,
                                     n_random=n_random, seed=seed, fresh=fresh, echo=say))
    finally:
        bar.close()
    table = pd.DataFrame([o.row for o in outcomes], columns=list(COLUMNS))
    table.attrs = validation_meta(outcomes, causal=causal, n_random=n_random, seed=seed,
                                  seconds=time.perf_counter() - started)
    if root is not None:
        table.attrs["report"] = str(save_validation(root, table, outcomes))
    return table


__all__ = ["COLUMNS", "CaseOutcome", "case_key", "case_row", "causal_key", "run_causal",
           "save_validation", "score_case", "validate"]
