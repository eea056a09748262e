"""Tests of headprobe.validate: the metrics against hand computations, the fast validation of
the hand-set example cases (every one at AUROC 1), a wrong case failing its floor (the CLI
exits 1 naming it), the causal check, resuming a killed run, the HTML page and the atlas's
validation figures."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import mannwhitneyu

from headprobe.cli import main
from headprobe.groundtruth import GroundTruthCase
from headprobe.handset import INDUCTION_HEAD, PREVIOUS_HEAD, copy_circuit
from headprobe.headtable import HeadTable
from headprobe.tasks.base import Task, TaskItem
from headprobe.types import Head
from headprobe.validate import (
    collect_cases,
    example_case,
    example_cases,
    load_validation,
    validate,
)
from headprobe.validate.cases import parse_scorers
from headprobe.validate.metrics import failed_floors, score_metrics, top_k_precision

NAN = math.nan

# Hand-computed example: scored heads 0.9 (known), 0.1, 0.4, 0.4 (known), 0.2; one NaN.
GRID = np.array([[0.9, 0.1, 0.4], [0.4, NAN, 0.2]])
KNOWN = [Head(0, 0), Head(1, 0)]


def test_metrics_match_hand_computation():
    m = score_metrics(GRID, KNOWN, threshold=0.3)
    assert (m.n_heads, m.n_known, m.n_nan, m.n_known_nan) == (6, 2, 1, 0)
    # pairs (known, other): 0.9 beats 3; 0.4 beats 0.1 and 0.2, ties 0.4 (half): 5.5 / 6
    assert m.auroc == pytest.approx(5.5 / 6, abs=1e-12)
    # called at >= 0.3: 0.9, 0.4, 0.4 (two known)
    assert m.precision == pytest.approx(2 / 3) and m.recall == 1.0
    # k = 2: 0.9 (known), then one place for the two heads tied at 0.4 (one known): 1.5 / 2
    assert m.top_k_precision == pytest.approx(0.75)
    assert m.curve.thresholds.tolist() == [0.9, 0.4, 0.2, 0.1]
    assert m.curve.precision == pytest.approx([1.0, 2 / 3, 0.5, 0.4])
    assert m.curve.recall == pytest.approx([0.5, 1.0, 1.0, 1.0])
    # 0.5 * 1 + 0.5 * 2/3
    assert m.average_precision == pytest.approx(0.5 + 1 / 3)


def test_auroc_equals_mann_whitney_u():
    rng = np.random.default_rng(3)
    grid = np.round(rng.random((4, 6)), 1)  # rounded: many ties
    known = [Head(0, 1), Head(2, 3), Head(3, 0), Head(1, 5)]
    mask = np.zeros_like(grid, dtype=bool)
    for layer, head in known:
        mask[layer, head] = True
    u = mannwhitneyu(grid[mask], grid[~mask]).statistic
    assert score_metrics(grid, known, 0.5).auroc == pytest.approx(u / (4 * 20), abs=1e-12)


def test_nan_known_head_counts_as_not_found_and_no_call_is_undefined():
    m = score_metrics(GRID, [*KNOWN, Head(1, 1)], threshold=0.3)
    assert (m.n_nan, m.n_known_nan, m.n_known) == (1, 1, 3)
    assert m.recall == pytest.approx(2 / 3)
    assert m.auroc == pytest.approx(5.5 / 6)  # over scored heads only
    none_called = score_metrics(GRID, KNOWN, threshold=2.0)
    assert math.isnan(none_called.precision) and none_called.recall == 0.0
    assert failed_floors(none_called.values(), {"precision": 0.5, "recall": 0.5}) == [
        "precision undefined (no head called) < 0.50", "recall 0.000 < 0.50"]
    assert failed_floors(score_metrics(GRID, KNOWN, 0.3).values(), {"auroc": 0.9}) == []
    assert math.isnan(score_metrics(np.ones((1, 2)), [Head(0, 0), Head(0, 1)], 0.5).auroc)
    assert top_k_precision(np.array([1.0, 1.0, 1.0]), np.array([True, False, False]), 1) \
        == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="outside the scored grid"):
        score_metrics(GRID, [Head(2, 0)], 0.5)


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    """The hand-set example cases validated and saved in a folder."""
    out = tmp_path_factory.mktemp("validate")
    skipped: dict[str, str] = {}
    cases = example_cases(skipped)
    return cases, validate(cases, out=out, progress=False), out, skipped


def test_the_hand_set_examples_pass_at_auroc_1(fast_run):
    cases, table, _, skipped = fast_run
    assert set(table["source"]) == {"hand-set"} and len(table) == len(cases)
    assert {"induction", "sink", "retrieval", "ships", "successor", "temporal"} <= set(
        table["scorer"])
    assert (table["auroc"] == 1.0).all() and (table["top_k_precision"] == 1.0).all()
    assert table["passed"].all(), table.loc[~table["passed"], "failed_floors"].tolist()
    assert table["error"].isna().all() and table.attrs["n_failed"] == 0
    # the examples that name no head of known function say why
    assert "computed" in skipped["ocr"] and "conflict" in skipped


def test_every_registered_scorer_has_a_fast_ground_truth_case():
    """No scorer escapes validation: each registered scorer has at least one fast case."""
    from headprobe.registry import list_scorers

    covered = {case.scorer for case in collect_cases(fast=True)}
    assert set(list_scorers()) <= covered, sorted(set(list_scorers()) - covered)


@pytest.mark.slow
def test_the_fast_setting_meets_every_floor():
    """Every fast case (planted, trained, hand-set; what ``headprobe validate --fast`` runs)
    meets its floors."""
    cases = collect_cases(fast=True)
    assert {case.source for case in cases} >= {"hand-set", "planted", "trained"}
    table = validate(cases, progress=False)
    assert table["error"].isna().all(), table["error"].dropna().tolist()
    failed = table[~table["passed"]]
    assert failed.empty, [f"{r.scorer}@{r.model}: {r.failed_floors}" for r in failed.itertuples()]


def test_results_are_saved_and_the_page_is_written(fast_run):
    _, table, out, _ = fast_run
    loaded = load_validation(out)
    pd.testing.assert_frame_equal(loaded[["scorer", "auroc", "passed"]],
                                  table[["scorer", "auroc", "passed"]])
    assert json.loads((out / "meta.json").read_text())["n_cases"] == len(table)
    assert (out / "validation.csv").is_file()
    page = (out / "validation.html").read_text(encoding="utf-8")
    assert page.count("plotly.js v") == 1  # embedded once
    for row in table.itertuples():
        assert f"<h2>{row.head_type}/{row.scorer}@{row.model}</h2>" in page
    assert "precision-recall" in page and "known heads" in page
    assert len(list((out / "cases").glob("*/scores.csv"))) == len(table)


def test_atlas_shows_each_scorers_validation_figure_beside_its_heatmap(fast_run):
    from headprobe.atlas import render_atlas
    from headprobe.validate.report import scorer_figures

    _, table, out, _ = fast_run
    figures = scorer_figures(out)
    assert set(figures) == set(table["scorer"])
    frame = pd.DataFrame({"layer": [0, 0], "head": [0, 1], "kv_head": [0, 0],
                          "score": [0.2, 0.9]})
    page = render_atlas([HeadTable(frame, {"scorer": "induction"})], title="t", seconds=0.0,
                        model_facts={}, beside=figures)
    assert "induction: precision-recall on 1 ground-truth model(s)" in page
    assert "display:flex" in page


@pytest.fixture(scope="module")
def induction_case():
    """The induction head type's hand-set example as a case (:func:`example_case`)."""
    from headprobe import registry

    return example_case(registry.resolve(registry.head_types()["induction"].example)())


def test_a_wrong_case_fails_its_floor_and_the_cli_exits_1_naming_it(induction_case, monkeypatch,
                                                                   tmp_path, capsys):
    wrong = dataclasses.replace(induction_case, known=frozenset({Head(0, 1), Head(2, 3)}),
                            model="induction-example-wrong")
    table = validate([wrong], progress=False)
    (row,) = table.itertuples()
    assert not row.passed and row.auroc < 0.5 and row.recall == 0.0
    assert "auroc" in row.failed_floors and "top_k_precision 0.000 < 1.00" in row.failed_floors
    monkeypatch.setattr("headprobe.validate.cases.collect_cases",
                        lambda fast, skipped=None: [wrong])
    status = main(["validate", "--fast", "--quiet", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert status == 1
    assert "FAILED induction/induction@induction-example-wrong (hand-set): auroc" in printed
    assert "0 of 1 cases passed" in printed


def test_unknown_scorers_are_one_line_listing_them(capsys):
    assert main(["validate", "--scorers", "induction,nope,nada", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "'nope', 'nada'" in err and "registered scorers: " in err
    assert parse_scorers(" induction , sink ") == ["induction", "sink"]


def _copy_task(name, model, *, n=None, seed=None, **options):
    """Letters copied by the hand-set induction head: ablating L1H2 breaks every item."""
    items = [TaskItem(prompt=f"NOTE {ctx}. Q? {ctx[i]}", answer=ctx[i + 1])
             for ctx in ("abcdefgh", "hgfedcba") for i in range(0, 7, 2)]
    return Task(name=name, items=items, judge="next_token", max_new_tokens=1)


def test_causal_check_separates_the_known_heads_from_random_sets(induction_case, monkeypatch):
    monkeypatch.setattr("headprobe.tasks.build.build_task", _copy_task)
    right = dataclasses.replace(induction_case, causal_task="induction_copy")
    wrong = dataclasses.replace(right, known=frozenset({Head(2, 0)}),
                                model="induction-example-silenced", minimum={})
    table = validate([right, wrong], causal=True, n_random=3, progress=False)
    good, bad = table.itertuples()
    assert good.separates and good.passed and good.target_delta == -1.0
    assert good.mean_random_delta == 0.0 and good.share_random_as_low == 0.0
    assert not bad.separates and not bad.passed and bad.target_delta == 0.0
    assert "causal: ablating the known heads on induction_copy" in bad.failed_floors
    # without --causal the check does not run
    assert table.attrs["causal"] and validate([right], progress=False)["separates"].isna().all()


def test_a_killed_run_keeps_finished_cases_and_the_rerun_skips_them(tmp_path):
    builds: list[str] = []

    def build():
        builds.append("built")
        return copy_circuit()[0]

    def interrupted(model):
        raise KeyboardInterrupt  # the run is killed while this case runs

    texts = ("abcdefgh" * 2, "hgfedcba" * 2)
    first = GroundTruthCase(
        head_type="induction", scorer="induction", model="copy", source="hand-set",
        build=build, known=frozenset({INDUCTION_HEAD}), description="copy circuit",
        prompts=lambda model: [model.to_tokens(text)[0] for text in texts],
        minimum={"auroc": 1.0})
    second = dataclasses.replace(first, scorer="previous_token", model="copy-2",
                                 known=frozenset({PREVIOUS_HEAD}), prompts=interrupted)
    with pytest.raises(KeyboardInterrupt):
        validate([first, second], out=tmp_path, progress=False)
    assert builds == ["built", "built"]
    assert len(list((tmp_path / "cases").glob("*/meta.json"))) == 1
    said: list[str] = []
    second = dataclasses.replace(second, prompts=first.prompts)
    table = validate([first, second], out=tmp_path, progress=False, echo=said.append)
    assert builds == ["built"] * 3  # only the unfinished case's model was built again
    assert said == [f"induction/induction@copy: scores already saved in "
                    f"{next((tmp_path / 'cases').glob('induction-induction-copy-*'))}; "
                    "not run again"]
    assert table["passed"].all() and (table["auroc"] == 1.0).all()
    # a changed floor is applied to the saved scores without running the scorer again
    strict = dataclasses.replace(first, minimum={"auroc": 1.0, "precision": 1.0}, threshold=0.05)
    again = validate([strict], out=tmp_path, progress=False, echo=said.append)
    assert builds == ["built"] * 3 and not again["passed"].item()
    assert "precision" in again["failed_floors"].item()
