"""Does ablating a head set hurt a task more than random head sets of the same size do?

:func:`ablation_experiment` judges a :class:`~headprobe.tasks.base.Task` on the clean model
(``baseline``), with the target heads ablated (``target``) and with ``n_random`` random head
sets of the same size ablated (``random_0``...), using any method of
:data:`headprobe.interventions.METHODS`. Statistics: :mod:`headprobe.experiments.stats`.
With ``judge=`` the conditions are judged elsewhere, e.g. on Ray workers
(:func:`headprobe.distributed.ray_conditions_judge`, one condition per free worker), with the
same random sets and the means / resample sources computed once here; the harness does not
import the judge's machinery (it sits in a higher layer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from headprobe.arch import ModelSpec
from headprobe.checkpoint import Checkpoint, run_key_fields
from headprobe.experiments.controls import (
    RandomFrom,
    control_sets,
    format_heads,
)
from headprobe.experiments.judging import check_task
from headprobe.experiments.matching import (
    MatchOn,
    match_gaps,
    match_summary,
    with_match_columns,
)
from headprobe.experiments.runner import (
    ConditionRunner,
    experiment_meta,
    jsonable_options,
    progress_steps,
)
from headprobe.experiments.stats import (
    ablation_summary,
    bootstrap_indices,
    condition_row,
    no_bootstrap,
)
from headprobe.headtable import json_text, stage_plotlyjs
from headprobe.inputs import encode_prompts, fingerprint
from headprobe.interventions import normalize_heads
from headprobe.models import describe_model
from headprobe.provenance import Timer
from headprobe.resultset import result_set
from headprobe.tasks.base import Task
from headprobe.types import Head

# Judges an ablation experiment's conditions somewhere else (Ray workers, ...): called with
# keywords task, conditions ([(name, heads or None)]), method, options (the runner's, with the
# means / resample sources computed once), all_heads, batch_size, progress and checkpoint
# (a Checkpoint or None); returns ({condition: [N] bool correct}, meta of the run).
ConditionsJudge = Callable[..., tuple[dict[str, np.ndarray], dict[str, Any]]]

@dataclass
class ExperimentResult:
    """A table, a plotly figure (never shown), a summary and metadata.

    Attributes:
        table: tidy DataFrame, one row per condition (see :func:`ablation_experiment`).
        figure: plotly figure.
        summary: headline numbers.
        meta: model, task, method, seed... (written to ``meta.json``).
        correct: ``{condition: [N] bool}`` per-prompt judgements.
        name: file stem for :meth:`save`.
    """

    table: pd.DataFrame
    figure: Any
    summary: dict[str, Any]
    meta: dict[str, Any]
    correct: dict[str, np.ndarray] = field(default_factory=dict)
    name: str = "ablation"

    def save(self, directory: str | Path) -> Path:
        """Write ``<name>.csv``, ``<name>.html`` and ``meta.json`` (atomically) in ``directory``."""
        return save_experiment(self, directory)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.name})"]
        lines += [f"  {k}: {v}" for k, v in self.summary.items()]
        return "\n".join(lines)


def save_experiment(result: ExperimentResult, directory: str | Path, *,
                    wait: float = 0.0) -> Path:
    """Write ``<name>.csv``, ``<name>.html`` (the figure, loading the shared
    ``plotly.min.js`` beside it: works offline) and ``meta.json`` into ``directory`` as one
    result set (:func:`headprobe.resultset.result_set`: whole or not at all, ``meta.json``
    last; ``wait`` seconds for another writer, default 0: fail at once)."""
    table = result.table.copy()
    table.attrs = {}
    figure = result.figure
    with result_set(directory, wait=wait, run=result.meta.get("run_key"),
                    what=f"the {result.name} experiment for {directory}") as staged:
        staged.write(f"{result.name}.csv", lambda p: table.to_csv(p, index=False))
        stage_plotlyjs(staged)
        staged.write(f"{result.name}.html", lambda p: figure.write_html(
            p, include_plotlyjs="directory", full_html=True))
        staged.write_text("meta.json", json_text({**result.meta, "summary": result.summary}))
    return Path(directory)


def ablation_experiment(
    model: Any,
    task: Task,
    heads: Sequence[Sequence[int]],
    method: str = "zero",
    n_random: int = 10,
    seed: int = 0,
    random_from: RandomFrom = "same_layers",
    batch_size: int = 8,
    progress: bool = True,
    n_bootstrap: int = 1000,
    method_options: dict[str, Any] | None = None,
    judge: ConditionsJudge | None = None,
    checkpoint_dir: str | Path | None = None,
    fresh: bool = False,
    echo: Callable[[str], Any] | None = None,
    match: MatchOn | None = None,
) -> ExperimentResult:
    """Ablate ``heads`` and ``n_random`` random head sets of the same size; judge ``task``.

    Args:
        model: a TransformerLens bridge.
        task: the :class:`Task` to judge.
        heads: target ``(layer, head)`` pairs.
        method: a name in :data:`headprobe.interventions.METHODS` (``zero``, ``mean``,
            ``resample``, ``uniform_attention``, ``scale_output``...). ``mean`` uses the task's
            prompts as reference and ``resample`` its corrupt prompts (else its prompts) as
            sources unless ``method_options`` says otherwise.
        n_random: random control sets (see :func:`random_head_sets`).
        seed: seeds the random sets, the bootstrap and resampling.
        random_from: ``same_layers``, ``uniform`` or ``matched`` (with ``match``).
        n_bootstrap: bootstrap resamples for the 95% intervals (0: no intervals).
        method_options: extra options of the method (e.g. ``{"factor": 1e-5}``).
        judge: judge the conditions elsewhere (a :data:`ConditionsJudge`, e.g.
            :func:`headprobe.distributed.ray_conditions_judge` for Ray workers); its meta is
            kept as ``meta["distributed"]``. ``None``: in this process.
        checkpoint_dir, fresh, echo: with ``judge``, keep each judged condition in a
            checkpoint under ``checkpoint_dir`` (a restarted experiment judges only the
            missing ones; ``fresh`` starts over, ``echo`` prints the checkpoint's messages).
        match: with ``random_from = "matched"``: the per-head score and tolerance the random
            sets are matched on (:class:`~headprobe.experiments.matching.MatchOn`).

    Returns:
        :class:`ExperimentResult` whose table has one row per condition (``baseline``,
        ``target``, ``random_0``..): ``condition``, ``heads`` ("L.H,..."), ``n_heads``,
        ``accuracy``, ``delta`` (accuracy - baseline), ``ci_low`` / ``ci_high`` (accuracy
        95% CI), ``delta_ci_low`` / ``delta_ci_high`` (paired 95% CI of delta), ``n``.
        The summary holds the target delta, the mean and lowest random delta and the share
        of random sets whose delta is as low as the target's or lower. With matched sets the
        table also has ``match_scores`` (each row's heads' scores, in sorted head order),
        ``match_score_mean`` and ``match_gap`` (a set's largest difference to its target
        head), and the summary a ``match`` entry (:func:`~headprobe.experiments.matching.
        match_summary`).
    """
    check_task(task)
    if n_random < 0:
        raise ValueError(f"n_random must be >= 0, got {n_random}")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    spec = describe_model(model)
    target = normalize_heads(spec, heads)
    rng = np.random.default_rng(seed)
    random_sets, matched = control_sets(spec, target, n_random, random_from=random_from,
                                        match=match, rng=rng)
    timer = Timer()
    options = dict(method_options or {})
    if method == "resample":
        options.setdefault("seed", seed)
    runner = ConditionRunner(model, task, method, options,
                             [h for s in [target, *random_sets] for h in s], batch_size)
    timer.lap("prepare")
    conditions: list[tuple[str, list[Head] | None]] = [("baseline", None), ("target", target)]
    conditions += [(f"random_{i}", s) for i, s in enumerate(random_sets)]
    correct: dict[str, np.ndarray] = {}
    extra: dict[str, Any] = {}
    checkpoint = None
    if judge is not None:
        if checkpoint_dir is not None:
            checkpoint = _conditions_checkpoint(
                model, spec, task, checkpoint_dir, fresh=fresh, echo=echo, seed=seed,
                batch_size=batch_size,
                params={"method": method, "method_options": jsonable_options(options),
                        "heads": format_heads(target), "random_from": random_from,
                        "random_sets": [format_heads(s) for s in random_sets],
                        **({"match": match.describe()} if match is not None else {})})
        correct, extra["distributed"] = judge(
            task=task, conditions=conditions, method=method, options=runner.options,
            all_heads=[h for s in [target, *random_sets] for h in s], batch_size=batch_size,
            progress=progress, checkpoint=checkpoint)
    else:
        with progress_steps(len(conditions), progress, f"ablate ({method})") as step:
            for name, condition_heads in conditions:
                correct[name] = runner.judge(condition_heads)
                step(name)
    timer.lap("judge")
    boot = bootstrap_indices(len(task), n_bootstrap, seed) if n_bootstrap else no_bootstrap()
    rows = [condition_row(name, h or [], correct[name], correct["baseline"], boot)
            for name, h in conditions]
    table = pd.DataFrame(rows)
    summary = ablation_summary(table)
    params = {"method": method, "method_options": jsonable_options(options),
              "heads": format_heads(target), "n_random": n_random, "random_from": random_from,
              "n_bootstrap": n_bootstrap, "batch_size": batch_size}
    if match is not None:
        table = with_match_columns(table, match, [h for _, h in conditions],
                                   [None, None, *match_gaps(match, matched)])
        summary["match"] = match_summary(match, matched)
        params["match"] = match.describe()
    meta = experiment_meta(
        model, spec, task, name="ablation", params=params, seed=seed, timer=timer,
        description=f"{method} ablation of {format_heads(target)} vs {n_random} random "
                    f"{random_from} head sets on {task.name}"
                    + (f" (matched on {match.label} within {match.tolerance:g})"
                       if match is not None else ""),
        random_sets=[format_heads(s) for s in random_sets], **extra)
    figure = ablation_figure(table, title=f"{method} ablation on {task.name} — {spec.name}")
    if checkpoint is not None:
        checkpoint.finish()
    return ExperimentResult(table, figure, summary, meta, correct, name="ablation")


def _conditions_checkpoint(model: Any, spec: ModelSpec, task: Task, folder: str | Path, *,
                           fresh: bool, echo: Callable[[str], Any] | None, seed: int,
                           batch_size: int, params: dict[str, Any]) -> Checkpoint:
    """The checkpoint of the conditions judged by a ``judge`` in ``folder``, keyed by the
    model, the method and the head sets, the seed and the task's prompts."""
    digest = fingerprint(encode_prompts(model, task.prompts, spec))
    return Checkpoint(folder, "ablation_ray", run_key_fields(
        name="ablation_ray", spec=spec, params=params, seed=seed, n=len(task),
        batch_size=batch_size, fingerprint=digest), fresh=fresh, echo=echo)


def ablation_figure(table: pd.DataFrame, title: str) -> Any:
    """Bar chart of accuracy per condition with 95% intervals (plotly, never shown)."""
    import plotly.graph_objects as go

    colors = ["#4c78a8" if c == "baseline" else "#e45756" if c == "target" else "#9d9d9d"
              for c in table["condition"]]
    figure = go.Figure(go.Bar(
        x=table["condition"],
        y=table["accuracy"],
        marker_color=colors,
        error_y={"type": "data", "symmetric": False,
                 "array": (table["ci_high"] - table["accuracy"]).fillna(0),
                 "arrayminus": (table["accuracy"] - table["ci_low"]).fillna(0)},
        customdata=table[["heads", "delta"]].to_numpy(),
        hovertemplate="%{x}<br>accuracy %{y:.3f}<br>delta %{customdata[1]:+.3f}"
                      "<br>heads %{customdata[0]}<extra></extra>",
    ))
    figure.update_layout(title=title, yaxis_title="accuracy", yaxis_range=[0, 1.05],
                         xaxis_title="condition")
    return figure
