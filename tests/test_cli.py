"""The ``headprobe`` command line: every subcommand, its errors and its model options."""

import json
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from conftest import register_task

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
        (["dose", "--model", "tiny:gpt2", "--task", "induction_copy", "--heads", "0.0,0.1",
          "--ks", "1,x"], "--ks takes integers >= 1"),
        (["dose", "--model", "tiny:gpt2", "--task", "induction_copy", "--heads", "0.0,0.1",
          "--ks", "1,0"], "--ks takes integers >= 1"),
        (["dose", "--model", "tiny:gpt2", "--task", "induction_copy", "--heads", "0.0,0.1",
          "--ks", "1,4"], "--ks goes up to 4 but --heads gives 2 heads"),
        (["dose", "--model", "tiny:gpt2", "--task", "nope", "--heads", "0.0", "--ks", "1"],
         "unknown task"),
        (["dose", "--model", "tiny:gpt2", "--task", "induction_copy", "--heads", "0.0",
          "--ks", "1", "--n-random", "-1"], "--n-random must be >= 0"),
        (["dose", "--model", "tiny:gpt2", "--task", "induction_copy", "--heads", "X/none",
          "--ks", "1"], "no such file or folder"),
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


def test_malformed_model_folder_is_one_line_and_exit_2(tmp_path, capsys):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    argv = ["scan", "induction", "--model", str(folder), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("headprobe: error:"), err
    assert f"cannot load the model at {folder}" in err and "Traceback" not in err


class _Loaded(HeadprobeError):
    """Raised by the fake loader once it has recorded its arguments."""


@pytest.mark.parametrize(
    "argv",
    [
        ["scan", "induction", "--out", "X"],
        ["atlas", "--out", "X"],
        ["ablate", "--task", "induction_copy", "--heads", "0.0"],
        ["dose", "--task", "induction_copy", "--heads", "0.0,1.1", "--ks", "1,2"],
        ["recipe", "recipes/induction.toml", "--out", "X"],
    ],
    ids=["scan", "atlas", "ablate", "dose", "recipe"],
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
    assert main([*argv, "--model", "m", "--device-map", '{"model": "cpu"}',
                 "--offload-folder", str(tmp_path / "off")]) == 2
    assert main([*argv, "--model", "m", "--device-map", "auto"]) == 2
    assert calls == [{"spec": "m", "dtype": "bfloat16", "device": "cpu"},
                     {"spec": "m", "dtype": None, "device": None},
                     {"spec": "m", "dtype": None, "device": None,
                      "device_map": {"model": "cpu"}, "offload_folder": str(tmp_path / "off")},
                     {"spec": "m", "dtype": None, "device": None, "device_map": "auto"}]
    assert capsys.readouterr().err.count("headprobe: error: loaded") == 4
    # bad placement options: one line, before anything loads
    assert main([*argv, "--model", "m", "--device-map", "{model: cpu"]) == 2
    assert main([*argv, "--model", "m", "--offload-folder", "x"]) == 2
    err = capsys.readouterr().err
    assert "--device-map is not valid JSON" in err and "--offload-folder needs --device-map" in err
    assert len(calls) == 4


def test_scan_on_a_device_map(tmp_path, capsys):
    """A tiny model with two layers offloaded to disk scans as on one device."""
    disk = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
            "model.layers.2": "disk", "model.norm": "cpu", "lm_head": "cpu"}
    tables = []
    for extra in ([], ["--device-map", json.dumps(disk),
                       "--offload-folder", str(tmp_path / "offload")]):
        out = tmp_path / f"scan{len(tables)}"
        assert main(["scan", "previous_token", "--model", "tiny:llama-gqa", "--out", str(out),
                     "--n", "2", "--quiet", "--param", "seq_len=8", *extra]) == 0
        tables.append(pd.read_csv(out / "previous_token.csv"))
    assert (tables[0]["score"] - tables[1]["score"]).abs().max() <= 1e-6
    meta = json.loads((tmp_path / "scan1" / "meta.json").read_text())
    assert "disk" in json.dumps(meta)


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


@pytest.fixture
def tiny_tasks(monkeypatch):
    """``induction_copy`` mapped (for the test) to prompts answered by the tiny llama's own
    greedy next character (the real task's word answers are several characters there)."""
    import random
    import sys
    import types

    from headprobe.tasks.base import Task, TaskItem
    from headprobe.tiny import tiny_model

    model, _ = tiny_model("llama-gqa")

    def make_task(n: int = 12, seed: int = 0) -> Task:
        rng = random.Random(seed)
        items = []
        for _ in range(n):
            prompt = "".join(rng.choice("abcdefghij") for _ in range(rng.randint(4, 9)))
            with torch.no_grad():
                logits = model(model.to_tokens(prompt))
            items.append(TaskItem(prompt=prompt,
                                  answer=model.tokenizer.decode([int(logits[0, -1].argmax())])))
        return Task("induction_copy", items, judge="next_token")

    module = types.ModuleType("headprobe_test_tiny_induction_copy")
    module.make_task = make_task
    monkeypatch.setitem(sys.modules, module.__name__, module)
    register_task(monkeypatch, "induction_copy", module.__name__)
    return module


def test_recipe_runs(tmp_path, capsys, tiny_tasks):
    out = tmp_path / "recipe"
    assert main(["recipe", "recipes/induction.toml", "--model", "tiny:llama-gqa", "--out",
                 str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["scans"]) == {"induction", "previous_token"}
    assert "n_above_threshold" in summary["scans"]["induction"]
    assert (out / "induction" / "induction.csv").is_file()
    assert [step["name"] for step in summary["steps"]] == [
        "induction", "previous_token", "induction_ablation", "induction_dose"]
    ablation = summary["experiments"]["induction_ablation"]
    induction = pd.read_csv(out / "induction" / "induction.csv")
    best = induction.sort_values("score", ascending=False, kind="stable").head(6)
    assert ablation["heads"] == ",".join(f"{r.layer}.{r.head}" for r in best.itertuples())
    assert ablation["n_prompts"] == 48 and ablation["n_random"] == 10
    assert set(summary["experiments"]["induction_dose"]["top_k_accuracy"]) == {
        "1", "2", "4", "6"}
    assert (out / "induction_ablation" / "ablation.csv").is_file()
    assert (out / "induction_dose" / "dose_response.html").is_file()
    printed = capsys.readouterr().out
    assert "induction_ablation: zero ablate of" in printed and "target delta" in printed


def test_dose_prints_and_writes(tmp_path, monkeypatch, capsys, tiny_tasks):
    from headprobe.headtable import HeadTable
    from headprobe.tiny import tiny_model

    loads: list[dict] = []

    def load(spec, **kwargs):
        loads.append({"spec": spec, **kwargs})
        return tiny_model("llama-gqa")

    monkeypatch.setattr(cli, "_load", load)
    out = tmp_path / "dose"
    argv = ["dose", "--model", "m", "--task", "induction_copy", "--heads", "2.1,0.3,1.2",
            "--ks", "1,3", "--method", "uniform_attention", "--n-random", "2", "--n", "6",
            "--n-bootstrap", "20", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert loads == [{"spec": "m", "dtype": None, "device": None}]
    assert "method uniform_attention" in printed and "float32 on cpu" in printed
    assert "ranked heads (given list): 2.1,0.3,1.2" in printed
    lines = printed.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["k"])
    assert lines[header].split() == ["k", "top_k_accuracy", "mean_random_accuracy"]
    table = pd.read_csv(out / "dose_response.csv")
    for row, k in zip(lines[header + 1:header + 3], (1, 3), strict=True):
        k_text, top_text, random_text = row.split()
        top = table[(table["k"] == k) & (table["condition"] == "top_k")]["accuracy"].iloc[0]
        randoms = table[(table["k"] == k) & table["condition"].str.startswith("random_")]
        assert int(k_text) == k and float(top_text) == pytest.approx(top, abs=5e-4)
        assert float(random_text) == pytest.approx(randoms["accuracy"].mean(), abs=5e-4)
        assert len(randoms) == 2
    assert (out / "dose_response.html").is_file()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["method"] == "uniform_attention" and meta["ks"] == [1, 3]
    assert meta["ranking"] == "0.3,1.2,2.1" and meta["n_prompts"] == 6
    assert "wrote" in printed
    # heads from a saved table: its best max(ks) heads, in order
    _, spec = tiny_model("llama-gqa")
    scores = torch.zeros(spec.n_layers, spec.n_heads)
    scores[0, 1], scores[2, 2], scores[1, 3] = 3.0, 2.0, 1.0
    HeadTable.from_grid(scores, spec, meta={"scorer": "fake"}).save(tmp_path / "table")
    assert main(["dose", "--model", "m", "--task", "induction_copy", "--heads",
                 str(tmp_path / "table"), "--ks", "1,2", "--n-random", "1", "--n", "4",
                 "--n-bootstrap", "0", "--quiet"]) == 0
    assert "ranked heads (top 2 heads of fake" in capsys.readouterr().out


@pytest.mark.real
@pytest.mark.slow
def test_induction_recipe_on_the_real_model(tmp_path, smol, monkeypatch, capsys):
    """The shipped induction recipe end to end: zero-ablating the top 6 induction heads breaks
    copying a repeated word list far more than any of 10 random same-layer head sets does."""
    monkeypatch.setattr(cli, "_load", lambda spec, **kwargs: smol)
    out = tmp_path / "induction"
    assert main(["recipe", "recipes/induction.toml", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    ablation = summary["experiments"]["induction_ablation"]
    assert ablation["baseline_accuracy"] > 0.9
    assert ablation["target_delta"] < -0.5
    assert ablation["target_delta_ci"][1] < 0
    assert ablation["target_delta"] < ablation["min_random_delta"]
    assert ablation["share_random_as_low"] == 0.0
    dose = summary["experiments"]["induction_dose"]
    assert dose["top_k_accuracy"]["6"] < dose["mean_random_accuracy"]["6"]
    # a re-run skips every step
    capsys.readouterr()
    assert main(["recipe", "recipes/induction.toml", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("step already done") == 4
    assert json.loads((out / "summary.json").read_text()) == summary


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
