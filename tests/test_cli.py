import json

import pandas as pd
import pytest

from headprobe.cli import main


def test_models_lists_packaged(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m-instruct" in out and "gemma3-270m" in out


def test_scorers_lists_registry(capsys):
    assert main(["scorers"]) == 0
    assert "induction" in capsys.readouterr().out


def test_scan_writes_table_files(tmp_path, capsys):
    out = tmp_path / "scan"
    code = main(["scan", "previous_token", "--model", "tiny:llama-gqa", "--out", str(out),
                 "--n", "2", "--seed", "1", "--batch-size", "2", "--quiet",
                 "--param", "seq_len=8"])
    assert code == 0
    for name in ("previous_token.csv", "previous_token.parquet", "previous_token.html",
                 "meta.json"):
        assert (out / name).is_file()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["params"]["seq_len"] == 8 and meta["seed"] == 1
    assert len(pd.read_csv(out / "previous_token.csv")) == 12


@pytest.mark.parametrize(
    "argv,message",
    [
        (["scan", "nope", "--model", "tiny:gpt2", "--out", "X"], "unknown scorer"),
        (["scan", "induction", "--model", "no-such-model", "--out", "X"], "unknown model"),
        (["scan", "induction", "--model", "tiny:bert", "--out", "X", "--n", "1"], "causal"),
        (["scan", "induction", "--model", "tiny:gpt2", "--out", "FILE"], "is a file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    (tmp_path / "FILE").write_text("x")
    argv = [str(tmp_path / a) if a in ("X", "FILE") else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("headprobe: error:") and message in err
    assert "Traceback" not in err


def test_atlas_on_tiny(tmp_path):
    out = tmp_path / "atlas"
    assert main(["atlas", "--model", "tiny:llama-gqa", "--out", str(out), "--n", "2",
                 "--quiet"]) == 0
    page = (out / "atlas.html").read_text()
    assert "induction" in page and "scorer-to-scorer correlations" in page
    meta = json.loads((out / "meta.json").read_text())
    # a char-level tiny tokenizer has no one-token capitals: the facts-based DLA is skipped,
    # said in the report, and the other scorers still land
    for name, reason in meta["skipped"].items():
        assert name in page and reason
    assert "plotly" in page.lower()
    assert (out / "tables" / "sink" / "sink.parquet").is_file()
    assert set(json.loads((out / "meta.json").read_text())["tables"]) >= {"induction", "sink"}


def test_recipe_runs(tmp_path, capsys):
    out = tmp_path / "recipe"
    assert main(["recipe", "recipes/induction.toml", "--model", "tiny:llama-gqa", "--out",
                 str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["scans"]) == {"induction", "previous_token"}
    assert "n_above_threshold" in summary["scans"]["induction"]
    assert (out / "induction" / "induction.csv").is_file()
