"""Tests of headprobe.atlas: the report holds every cheap scorer, and scorers whose needs the
model cannot meet are skipped with a reason (read from the flags, never the name)."""

from __future__ import annotations

import json

import torch

from headprobe.atlas import build_atlas, cheap_scorers
from headprobe.registry import get_scorer, list_scorers
from headprobe.scorers.base import Scorer, ScorerData, ScoreResult


def _images_scorer() -> Scorer:
    """A cheap scorer that needs images; it would score every head 1 if it ran."""

    def prepare(model, spec, prompts, n, seed, params):
        return ScorerData(None, "0", 1, "nothing")

    def compute(model, spec, data, params, batch_size, progress):
        return ScoreResult(torch.ones(spec.n_layers, spec.n_heads))

    return Scorer("needs_images", "a scorer that needs images", "none", prepare, compute,
                  needs=frozenset({"images"}))


def test_cheap_scorers_are_read_from_the_flag():
    cheap = cheap_scorers()
    assert cheap == [name for name in list_scorers() if get_scorer(name).cheap]
    assert {"induction", "previous_token", "duplicate_token", "sink", "dla"} <= set(cheap)
    assert "activation_patching" not in cheap


def test_build_atlas_on_tiny_llama(tiny_llama, tmp_path):
    model, _ = tiny_llama
    result = build_atlas(model, tmp_path, scorers=[*cheap_scorers(), _images_scorer()], n=2,
                         progress=False)
    ran = {table.scorer for table in result.tables}
    # every cheap scorer either ran or was skipped with a reason; on the char-level model the
    # dla default (facts task, word answers) cannot be expressed
    assert ran | set(result.skipped) == {*cheap_scorers(), "needs_images"}
    assert {"induction", "previous_token", "duplicate_token", "sink"} <= ran
    assert "single-token" in result.skipped["dla"]
    assert "image processor" in result.skipped["needs_images"]
    page = result.report.read_text(encoding="utf-8")
    assert result.report.name == "atlas.html"
    for name in ran:
        assert f"<h2>{name}</h2>" in page
        assert (tmp_path / "tables" / name / "meta.json").is_file()
    assert "skipped scorers" in page and "needs_images" in page
    assert page.count("plotly.js v") <= 1  # plotly embedded once
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["kind"] == "atlas" and set(meta["skipped"]) == set(result.skipped)
    assert set(meta["tables"]) == ran and "headprobe_version" in meta


def test_atlas_resumes_skipping_saved_tables(tiny_llama, tmp_path):
    """An atlas that dies at its third scorer, started again, loads the two saved tables (same
    run key) instead of recomputing them; a changed seed recomputes and says what changed."""
    model, _ = tiny_llama
    fail = [True]

    def prepare(model, spec, prompts, n, seed, params):
        return ScorerData(None, "0", 1, "nothing")

    def compute(model, spec, data, params, batch_size, progress):
        if fail[0]:
            raise RuntimeError("killed")
        return ScoreResult(torch.ones(spec.n_layers, spec.n_heads))

    dies = Scorer("dies_once", "fails on its first run", "none", prepare, compute)
    scorers = ["previous_token", "induction", dies]
    try:
        build_atlas(model, tmp_path, scorers=scorers, n=2, progress=False)
    except RuntimeError:
        pass
    else:
        raise AssertionError("the first run should have died")
    saved = json.loads((tmp_path / "tables" / "induction" / "meta.json").read_text())
    assert not (tmp_path / "atlas.html").exists()
    fail[0] = False
    lines: list[str] = []
    result = build_atlas(model, tmp_path, scorers=scorers, n=2, progress=False,
                         echo=lines.append)
    assert [t.scorer for t in result.tables] == ["previous_token", "induction", "dies_once"]
    for name in ("previous_token", "induction"):
        assert any(line.startswith(f"{name}: table already saved") for line in lines)
    assert not any(line.startswith("dies_once: table already") for line in lines)
    reloaded = result.tables[1]
    assert reloaded.meta["created"] == saved["created"]  # loaded, not recomputed
    direct = get_scorer("induction")(model, n=2, progress=False)
    assert reloaded.to_frame()["score"].tolist() == direct.to_frame()["score"].tolist()

    lines.clear()
    build_atlas(model, tmp_path, scorers=["induction"], n=2, seed=1, progress=False,
                echo=lines.append)
    assert any("recomputing" in line and "seed: 0 -> 1" in line for line in lines)
    lines.clear()
    build_atlas(model, tmp_path, scorers=["induction"], n=2, seed=1, progress=False,
                fresh=True, echo=lines.append)
    assert not any("already saved" in line for line in lines)
