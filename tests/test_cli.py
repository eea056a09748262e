"""The ``headprobe`` command line: every subcommand, its errors and its model options."""

import json
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

import headprobe.cli as cli
from headprobe.cli import main, parse_key_values
from headprobe.errors import HeadprobeError


def test_models_lists_packaged(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m-instruct" in out and "gemma3-270m" in out


def test_scorers_lists_registry(capsys):
    assert main(["scorers"]) == 0
    assert "induction" in capsys.readouterr().out


def test_scorers_print_what_they_need(monkeypatch, capsys):
    import headprobe.registry as registry

    scorers = {
        "plain": SimpleNamespace(description="no needs", cheap=True),
        "gen": SimpleNamespace(description="decodes", cheap=False,
                               needs=frozenset({"generation", "gpu"})),
    }
    monkeypatch.setattr(registry, "list_scorers", lambda: list(scorers))
    monkeypatch.setattr(registry, "get_scorer", lambda name: scorers[name])
    assert main(["scorers"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["plain", "no", "needs"]
    assert "not in atlas: slow on CPU" in lines[1] and "needs generation, gpu" in lines[1]


def test_key_values_are_parsed_once_for_every_command():
    assert parse_key_values(["seq_len=8", "factor=1e-5", " flag = True", "name=a=b"]) == {
        "seq_len": 8, "factor": 1e-5, "flag": True, "name": "a=b"}
    for bad in ("seq_len", "=3"):
        with pytest.raises(HeadprobeError, match="--param takes KEY=VALUE"):
            parse_key_values([bad])


def test_scan_writes_table_files(tmp_path, capsys):
    out = tmp_path / "scan"
    code = main(["scan", "previous_token", "--model", "tiny:llama-gqa", "--out", str(out),
                 "--n", "2", "--seed", "1", "--batch-size", "2", "--quiet",
                 "--param", "seq_len=8", "--device", "cpu"])
    assert code == 0
    assert "model tiny-llama-gqa · float32 on cpu" in capsys.readouterr().out
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
        (["scan", "induction", "--model", "tiny:gpt2", "--out", "X", "--n", "0"],
         "--n must be >= 1, got 0"),
        (["scan", "induction", "--model", "tiny:gpt2", "--out", "X", "--batch-size", "0"],
         "--batch-size must be >= 1"),
        (["scan", "induction", "--model", "tiny:gpt2", "--out", "X", "--top", "-2"],
         "--top must be >= 1"),
        (["scan", "induction", "--model", "tiny:gpt2", "--out", "X", "--param", "seq_len"],
         "--param takes KEY=VALUE"),
        (["scan", "induction", "--model", "tiny:gpt2", "--out", "X", "--param", "nope=1"],
         "has no parameter nope"),
        (["scan", "induction", "--model", "tiny:gpt2", "--out", "X", "--n", "1", "--param",
          "seq_len=1"], "seq_len >= 2"),
        (["scan", "induction", "--model", "tiny:gpt2", "--out", "X", "--device", "gpu0"],
         "unknown device"),
        (["atlas", "--model", "tiny:gpt2", "--out", "X", "--n", "0"], "--n must be >= 1"),
        (["ablate", "--model", "tiny:gpt2", "--task", "induction_copy", "--heads", "0.0",
          "--n", "0"], "--n must be >= 1"),
        (["ablate", "--model", "tiny:gpt2", "--task", "nope", "--heads", "0.0"],
         "unknown task"),
        (["ablate", "--model", "tiny:gpt2", "--task", "induction_copy", "--heads", "zero"],
         "LAYER.HEAD"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    (tmp_path / "FILE").write_text("x")
    argv = [str(tmp_path / a) if a in ("X", "FILE") else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("headprobe: error:"), err
    assert message in err
    assert "Traceback" not in err


class _Loaded(HeadprobeError):
    """Raised by the fake loader once it has recorded its arguments."""


@pytest.mark.parametrize(
    "argv",
    [
        ["scan", "induction", "--out", "X"],
        ["atlas", "--out", "X"],
        ["ablate", "--task", "induction_copy", "--heads", "0.0"],
        ["recipe", "recipes/induction.toml", "--out", "X"],
    ],
    ids=["scan", "atlas", "ablate", "recipe"],
)
def test_every_loading_command_passes_dtype_and_device(tmp_path, monkeypatch, capsys, argv):
    argv = [str(tmp_path / a) if a == "X" else a for a in argv]
    calls: list[dict] = []

    def load(spec, **kwargs):
        calls.append({"spec": spec, **kwargs})
        raise _Loaded("loaded")

    monkeypatch.setattr(cli, "_load", load)
    assert main([*argv, "--model", "m", "--dtype", "bfloat16", "--device", "cpu"]) == 2
    assert main([*argv, "--model", "m"]) == 2
    assert calls == [{"spec": "m", "dtype": "bfloat16", "device": "cpu"},
                     {"spec": "m", "dtype": None, "device": None}]
    assert capsys.readouterr().err.count("headprobe: error: loaded") == 2


def test_dtype_reaches_the_loader_and_is_said(tmp_path, monkeypatch, capsys):
    from headprobe.tiny import tiny_model

    calls: list[dict] = []

    def load(spec, **kwargs):  # a bf16 tiny model, whatever load_model does with dtype
        calls.append({"spec": spec, **kwargs})
        model, spec_ = tiny_model("llama-gqa")
        model.original_model.to(torch.bfloat16)
        return model, spec_

    monkeypatch.setattr(cli, "_load", load)
    out = tmp_path / "scan"
    assert main(["scan", "previous_token", "--model", "tiny:llama-gqa", "--dtype", "bfloat16",
                 "--out", str(out), "--n", "2", "--quiet", "--param", "seq_len=8"]) == 0
    assert calls == [{"spec": "tiny:llama-gqa", "dtype": "bfloat16", "device": None}]
    assert "bfloat16 on cpu" in capsys.readouterr().out
    assert len(pd.read_csv(out / "previous_token.csv")) == 12


def test_unknown_dtype_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["scan", "induction", "--out", "X", "--dtype", "int8"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'int8'" in capsys.readouterr().err


def test_atlas_on_tiny(tmp_path):
    out = tmp_path / "atlas"
    assert main(["atlas", "--model", "tiny:llama-gqa", "--out", str(out), "--n", "2",
                 "--quiet"]) == 0
    page = (out / "atlas.html").read_text()
    assert "induction" in page and "scorer-to-scorer correlations" in page
    meta = json.loads((out / "meta.json").read_text())
    # a char-level tiny tokenizer has no one-token capitals: the facts-based DLA is skipped,
    # said in the report, and the other scorers still land
    assert "dla" in meta["skipped"], meta["skipped"]
    assert "token" in meta["skipped"]["dla"]
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


@pytest.mark.parametrize("fresh", [False, True])
def test_scan_resumes_from_its_out_folder_unless_fresh(tmp_path, capsys, monkeypatch, fresh):
    from headprobe.checkpoint import Checkpoint

    out = tmp_path / "scan"
    argv = ["scan", "previous_token", "--model", "tiny:llama-gqa", "--out", str(out), "--n", "4",
            "--batch-size", "1", "--quiet", "--param", "seq_len=8", "--device", "cpu"]
    class Killed(Exception):
        pass

    original = Checkpoint.save

    def dies(self, state, progress=""):
        original(self, state, progress)
        raise Killed

    monkeypatch.setattr(Checkpoint, "save", dies)
    with pytest.raises(Killed):
        main(argv)
    assert (out / ".checkpoints" / "previous_token.pt").is_file()
    monkeypatch.undo()
    capsys.readouterr()
    assert main([*argv, "--fresh"] if fresh else argv) == 0
    printed = capsys.readouterr().out
    if fresh:
        assert "--fresh: discarding checkpoint" in printed and "resuming" not in printed
    else:
        assert "previous_token: resuming" in printed and "batch 1 of 4 done" in printed
    assert not (out / ".checkpoints").exists() and (out / "previous_token.parquet").is_file()
