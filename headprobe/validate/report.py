"""The validation figures and HTML page (plotly; figures are built and returned, never shown).

- :func:`case_figure`: one case: the scorer's heatmap with the known heads outlined, beside
  its precision-recall curve (the point at the case's threshold marked).
- :func:`render_report`: the page ``validation.html``: the summary table, the failed cases
  and why, then every case's figure (plotly.js embedded once, so it opens offline).
- :func:`scorer_figures`: for the atlas, per scorer one figure with the PR curve of each of
  its cases saved in a validation folder, AUROC in the legend.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from headprobe.types import Head
from headprobe.validate.metrics import Metrics, score_metrics
from headprobe.validate.store import (
    CASES_FOLDER,
    case_folder_name,
    load_case,
    load_validation,
    parse_known,
)

SUMMARY_COLUMNS = ("head_type", "scorer", "model", "source", "n_known", "n_heads", "threshold",
                   "auroc", "precision", "recall", "top_k_precision", "average_precision",
                   "passed", "failed_floors", "seconds")
CAUSAL_SUMMARY = ("target_delta", "mean_random_delta", "share_random_as_low", "separates")


def _number(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _step_points(metrics: Metrics) -> tuple[np.ndarray, np.ndarray]:
    """The PR curve's points, starting at recall 0 with the first precision, so the step
    area (``line_shape="vh"``) equals the average precision."""
    curve = metrics.curve
    if curve.recall.size == 0:
        return np.zeros(0), np.zeros(0)
    return (np.concatenate([[0.0], curve.recall]),
            np.concatenate([[curve.precision[0]], curve.precision]))


def pr_trace(metrics: Metrics, *, name: str, **line: Any) -> Any:
    """A plotly step trace of the PR curve (recall on x, precision on y)."""
    import plotly.graph_objects as go

    recall, precision = _step_points(metrics)
    return go.Scatter(x=recall, y=precision, mode="lines", line_shape="vh", name=name,
                      line=line or None,
                      hovertemplate="recall %{x:.3f}<br>precision %{y:.3f}<extra></extra>")


def case_figure(grid: np.ndarray, known: Sequence[Head], metrics: Metrics, *, title: str,
                column: str = "score") -> Any:
    """The case's ``[n_layers, n_heads]`` heatmap (known heads outlined in red) beside its PR
    curve (the point at the threshold marked)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    grid = np.asarray(grid, dtype=float)
    figure = make_subplots(rows=1, cols=2, column_widths=[0.58, 0.42], horizontal_spacing=0.14,
                           subplot_titles=(f"{column} (known heads outlined)",
                                           "precision-recall"))
    figure.add_trace(go.Heatmap(
        z=grid, x=list(range(grid.shape[1])), y=list(range(grid.shape[0])),
        colorscale="Viridis", colorbar={"title": column, "x": 0.5, "len": 0.9},
        hovertemplate="L%{y}H%{x}<br>" + column + " %{z:.4g}<extra></extra>"), row=1, col=1)
    figure.add_trace(go.Scatter(
        x=[h for _, h in known], y=[layer for layer, _ in known], mode="markers",
        name="known heads", marker={"symbol": "square-open", "size": 16, "color": "red",
                                    "line": {"width": 3}},
        hovertemplate="known L%{y}H%{x}<extra></extra>"), row=1, col=1)
    figure.add_trace(pr_trace(metrics, name="PR curve", color="#4c78a8"), row=1, col=2)
    if not (math.isnan(metrics.recall) or math.isnan(metrics.precision)):
        figure.add_trace(go.Scatter(
            x=[metrics.recall], y=[metrics.precision], mode="markers",
            name=f"at {column} >= {metrics.threshold:g}",
            marker={"size": 11, "color": "#e45756", "symbol": "diamond"}), row=1, col=2)
    figure.update_yaxes(autorange="reversed", title_text="layer", row=1, col=1)
    figure.update_xaxes(title_text="head", row=1, col=1)
    figure.update_xaxes(title_text="recall", range=[-0.02, 1.02], row=1, col=2)
    figure.update_yaxes(title_text="precision", range=[-0.02, 1.05], row=1, col=2)
    figure.update_layout(
        title=(f"{title}: AUROC {_number(metrics.auroc)} · AP "
               f"{_number(metrics.average_precision)} · precision "
               f"{_number(metrics.precision, 2)} / recall {_number(metrics.recall, 2)} at "
               f"{column} >= {metrics.threshold:g}"),
        height=max(340, 22 * grid.shape[0] + 160), legend={"orientation": "h", "y": -0.18})
    return figure


def _summary_html(table: pd.DataFrame) -> str:
    columns = list(SUMMARY_COLUMNS)
    if table["separates"].notna().any():
        columns += list(CAUSAL_SUMMARY)
    return table[columns].to_html(index=False, float_format="%.3f", na_rep="",
                                  classes="summary")


def render_report(table: pd.DataFrame, outcomes: Sequence[Any], *,
                  title: str = "headprobe validate") -> str:
    """The HTML page: summary table, failures and why, one figure per case.

    ``outcomes``: the run's :class:`~headprobe.validate.run.CaseOutcome` s (their grid,
    metrics and case)."""
    failed = table[~table["passed"].astype(bool)]
    failures = "".join(
        f"<li><b>{html.escape(f'{r.head_type}/{r.scorer}@{r.model}')}</b>: "
        f"{html.escape(str(r.failed_floors))}</li>" for r in failed.itertuples())
    failures_html = (f"<section><h2>failed cases</h2><ul>{failures}</ul></section>"
                     if failures else "<p>every case passed its floors</p>")
    sections = []
    first = True
    for outcome in outcomes:
        case, row = outcome.case, outcome.row
        name = f"{case.head_type}/{case.scorer}@{case.model}"
        facts = (f"<p>{html.escape(case.description)}<br><small>source {case.source}; known "
                 f"{html.escape(row['known'])}; floors {html.escape(row['floors'] or 'none')}; "
                 f"{_number(row['seconds'], 2)} s</small></p>")
        verdict = ("<p><b>passed</b></p>" if row["passed"] else
                   f"<p><b>failed</b>: {html.escape(str(row['failed_floors']))}</p>")
        div = ""
        if outcome.grid is not None and outcome.metrics is not None:
            figure = case_figure(outcome.grid, sorted(case.known), outcome.metrics, title=name,
                                 column=case.column)
            div = figure.to_html(full_html=False, include_plotlyjs=first)
            first = False
        sections.append(f"<section><h2>{html.escape(name)}</h2>{facts}{verdict}{div}</section>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}"
        "table{border-collapse:collapse;font-size:12px}td,th{padding:2px 6px;"
        "border-bottom:1px solid #ddd}section{margin-bottom:2em}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p>{len(table)} cases, {len(failed)} failed; {table.attrs.get('created', '')}; "
        f"headprobe {html.escape(str(table.attrs.get('headprobe_version', '')))}</p>"
        f"<section><h2>summary</h2>{_summary_html(table)}</section>{failures_html}"
        + "".join(sections) + "</body></html>")


def scorer_figures(folder: str | Path) -> dict[str, Any]:
    """``{scorer: figure}`` from a folder written by ``headprobe validate --out``: per
    scorer, the PR curve of each of its saved cases, the legend giving the model, AUROC and
    whether the case passed. Cases whose scores were not saved (errors) are left out."""
    import plotly.graph_objects as go

    root = Path(folder)
    table = load_validation(root)
    figures: dict[str, Any] = {}
    for scorer, rows in table.groupby("scorer", sort=False):
        figure = go.Figure()
        for row in rows.itertuples():
            saved = load_case(root / CASES_FOLDER / case_folder_name(
                row.head_type, row.scorer, row.model, row.key), row.key)
            if saved is None:
                continue
            metrics = score_metrics(saved[0], parse_known(row.known), float(row.threshold))
            verdict = "passed" if row.passed else "FAILED"
            figure.add_trace(pr_trace(metrics, name=f"{row.model} ({row.source}): AUROC "
                                                    f"{_number(metrics.auroc)}, {verdict}"))
        if not figure.data:
            continue
        figure.update_layout(
            title=f"{scorer}: precision-recall on {len(figure.data)} ground-truth model(s)",
            xaxis={"title": "recall", "range": [-0.02, 1.02]},
            yaxis={"title": "precision", "range": [-0.02, 1.05]}, height=360,
            legend={"orientation": "h", "y": -0.25})
        figures[str(scorer)] = figure
    return figures


__all__ = ["case_figure", "pr_trace", "render_report", "scorer_figures"]
