"""The atlas: every CPU-cheap scorer on one model, in one self-contained HTML report.

The report holds each scorer's L x H heatmap, its top heads, and the scorer-to-scorer
Spearman correlations of head scores. plotly.js is embedded once, so the file opens offline.
Each table is also saved under ``<out>/tables/<scorer>/`` as soon as it is computed, so a run
that dies keeps the finished scorers: started again with the same arguments it skips the
scorers whose table is saved under the same run key and resumes the interrupted one per batch
where that scorer can (:mod:`headprobe.checkpoint`).

Which scorers run is read from their flags, never their names: by default every ``cheap``
scorer; a scorer whose ``needs`` the model cannot meet (images without a processor, a chat
template the tokenizer lacks, a GPU budget on a CPU; see
:func:`headprobe.scorers.base.unmet_needs`) is skipped with the reason, as is one whose default
data the model cannot express (a :class:`~headprobe.errors.HeadprobeError`).
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from headprobe.checkpoint import log_echo, saved_table_matches
from headprobe.errors import HeadprobeError
from headprobe.headtable import HeadTable, ensure_output_dir, json_text
from headprobe.models import describe_model
from headprobe.provenance import Timer, result_meta
from headprobe.registry import get_scorer, list_scorers
from headprobe.resultset import result_set
from headprobe.scorers.base import Scorer


@dataclass
class AtlasResult:
    """What :func:`build_atlas` produced: the tables, the report path, the run time and
    ``{scorer: reason}`` for every scorer skipped."""

    tables: list[HeadTable]
    report: Path
    seconds: float
    skipped: dict[str, str]


def cheap_scorers() -> list[str]:
    """Registered scorers marked cheap enough to run on a CPU in the atlas."""
    return [name for name in list_scorers() if get_scorer(name).cheap]


def build_atlas(
    model: Any,
    out_dir: str | Path,
    *,
    scorers: Sequence[str | Scorer] | None = None,
    n: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
    fresh: bool = False,
    echo: Callable[[str], None] | None = None,
    beside: Mapping[str, Any] | None = None,
) -> AtlasResult:
    """Run ``scorers`` (names or :class:`Scorer` records; default: every cheap one) and write
    ``<out_dir>/atlas.html`` and ``meta.json``. Scorers whose needs the model cannot meet are
    skipped with the reason (listed in the report and in :attr:`AtlasResult.skipped`).

    Resumable: a scorer whose table is already saved under ``<out_dir>/tables/<scorer>/``
    with the same run key (model, parameters, seed, ``n``, batch size, data fingerprint,
    version; :func:`headprobe.checkpoint.saved_table_matches`) is loaded instead of run, and a
    scorer that resumes per batch keeps its checkpoint under ``<out_dir>/.checkpoints/``.
    ``fresh`` recomputes everything; ``echo`` receives the resume lines (default: a log
    record); ``beside``: ``{scorer: plotly figure}`` drawn next to that scorer's heatmap
    (e.g. its validation figure, :func:`headprobe.validate.report.scorer_figures`)."""
    folder = ensure_output_dir(out_dir)
    chosen = [get_scorer(s) if isinstance(s, str) else s
              for s in (scorers if scorers is not None else cheap_scorers())]
    names = [scorer.name for scorer in chosen]
    spec = describe_model(model)
    timer = Timer()
    started = time.perf_counter()
    tables = []
    skipped: dict[str, str] = {}
    say = echo if echo is not None else log_echo
    for scorer in chosen:
        name = scorer.name
        unmet = scorer.unmet(model, spec)
        if unmet:
            skipped[name] = "; ".join(unmet.values())
            continue
        try:
            run = scorer.plan(model, n=n, seed=seed, batch_size=batch_size)
            saved = folder / "tables" / name
            if not fresh and saved_table_matches(saved, run.key, name=name,
                                                 fields=run.key_fields, echo=say):
                say(f"{name}: table already saved in {saved} with the same run key; skipped")
                tables.append(HeadTable.load(saved, scorer=name))
                continue
            table = run.run(progress=progress, checkpoint_dir=folder, fresh=fresh, echo=echo)
        except HeadprobeError as error:  # e.g. a task this model's tokenizer cannot express
            skipped[name] = str(error)
            continue
        table.save(saved)
        tables.append(table)
    seconds = time.perf_counter() - started
    timer.lap("scorers")
    report = folder / "atlas.html"
    page = render_atlas(tables, title=f"headprobe atlas — {spec.name}", seconds=seconds,
                        model_facts=spec.to_dict(), skipped=skipped, beside=beside)
    meta = result_meta(
        kind="atlas", name="atlas", spec=spec, params={"scorers": names, "n": n},
        seed=seed, timer=timer, description="every cheap scorer on one model",
        scorers=names, skipped=skipped, seconds=round(seconds, 2),
        tables={t.scorer: t.meta for t in tables})
    with result_set(folder, what=f"the atlas report for {folder}") as staged:
        staged.write_text(report.name, page)
        staged.write_text("meta.json", json_text(meta))
    return AtlasResult(tables=tables, report=report, seconds=seconds, skipped=skipped)


def render_atlas(tables: Sequence[HeadTable], *, title: str, seconds: float,
                 model_facts: dict[str, Any], skipped: dict[str, str] | None = None,
                 beside: Mapping[str, Any] | None = None) -> str:
    """The atlas HTML page (plotly.js embedded once); ``beside``: a figure per scorer drawn
    next to its heatmap."""
    import plotly.express as px

    skipped_html = "".join(
        f"<li><b>{html.escape(name)}</b>: {html.escape(reason)}</li>"
        for name, reason in (skipped or {}).items())
    if skipped_html:
        skipped_html = f"<section><h2>skipped scorers</h2><ul>{skipped_html}</ul></section>"

    sections = []
    first = True
    for table in tables:
        figure = table.heatmap()
        div = figure.to_html(full_html=False, include_plotlyjs=first)
        first = False
        if beside and table.scorer in beside:
            side = beside[table.scorer].to_html(full_html=False, include_plotlyjs=False)
            div = (f"<div style='display:flex;gap:1em'><div style='flex:1'>{div}</div>"
                   f"<div style='flex:1'>{side}</div></div>")
        top = table.top(10)
        keep = [c for c in top.columns if c in ("layer", "head", "kv_head", "score", "score_std",
                                                 "status")]
        timing = table.meta.get("timings_s", {}).get("total", "?")
        sections.append(
            f"<section><h2>{html.escape(table.scorer)}</h2>"
            f"<p>{html.escape(str(table.meta.get('description', '')))}<br>"
            f"<small>reference: {html.escape(str(table.meta.get('reference', '')))}; "
            f"data: {html.escape(str(table.meta.get('data', '')))}; "
            f"{timing} s</small></p>{div}"
            f"<h3>top heads</h3>{top[keep].to_html(index=False, float_format='%.3f')}</section>"
        )
    correlation_html = ""
    if len(tables) > 1:
        correlations = HeadTable.correlations(tables)
        figure = px.imshow(correlations, text_auto=".2f", zmin=-1, zmax=1,
                           color_continuous_scale="RdBu_r",
                           title="Spearman correlation of head scores between scorers")
        correlation_html = (
            "<section><h2>scorer-to-scorer correlations</h2>"
            + figure.to_html(full_html=False, include_plotlyjs=False)
            + correlations.to_html(float_format="%.3f") + "</section>"
        )
    facts = pd.Series({k: v for k, v in model_facts.items() if not isinstance(v, dict)})
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
        "table{border-collapse:collapse;font-size:13px}td,th{padding:2px 8px;"
        "border-bottom:1px solid #ddd}section{margin-bottom:2.5em}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p>{len(tables)} scorers in {seconds:.1f} s; generated "
        f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}</p>"
        f"<details><summary>model</summary>{facts.to_frame('value').to_html()}</details>"
        + "".join(sections) + correlation_html + skipped_html + "</body></html>"
    )
