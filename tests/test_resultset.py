"""A result set is written whole or not at all (issue 24): concurrent writers and a full disk."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from headprobe.cli import main
from headprobe.errors import HeadprobeError, ResultSetBusyError, ResultWriteError
from headprobe.headtable import HeadTable
from headprobe.resultset import LOCK_NAME, PUBLISH_LOCK_NAME, STAGING_PREFIX, StagedSet, result_set

REPO = Path(__file__).resolve().parents[1]
LOCKS = {LOCK_NAME, PUBLISH_LOCK_NAME}


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (lock files aside) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in LOCKS}


def _table(spec, seed: int) -> HeadTable:
    grid = np.random.default_rng(seed).random((spec.n_layers, spec.n_heads))
    return HeadTable.from_grid(grid, spec, meta={"scorer": "induction", "seed": seed})


def _no_staging(folder: Path) -> bool:
    return not list(folder.glob(f"{STAGING_PREFIX}*"))


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def test_set_is_published_whole_and_other_content_kept(tmp_path):
    (tmp_path / ".checkpoints").mkdir()
    (tmp_path / "other.csv").write_text("kept\n")
    (tmp_path / "meta.json").write_text("{}\n")
    with result_set(tmp_path) as staged:
        staged.write_text("a.csv", "new a\n")
        staged.write_text("meta.json", '{"seed": 1}\n')
        assert not (tmp_path / "a.csv").exists()  # nothing visible before the block ends
        assert (tmp_path / "meta.json").read_text() == "{}\n"
    assert (tmp_path / "a.csv").read_text() == "new a\n"
    assert json.loads((tmp_path / "meta.json").read_text()) == {"seed": 1}
    assert (tmp_path / "other.csv").read_text() == "kept\n" and (tmp_path / ".checkpoints").is_dir()
    assert _no_staging(tmp_path)


def test_a_subfolder_of_the_set_is_swapped_whole(tmp_path):
    (tmp_path / "duo").mkdir()
    (tmp_path / "duo" / "old.txt").write_text("old")
    with result_set(tmp_path) as staged:
        (staged.path("duo")).mkdir()
        (staged.path("duo") / "new.txt").write_text("new")
    assert sorted(p.name for p in (tmp_path / "duo").iterdir()) == ["new.txt"]
    assert _no_staging(tmp_path)


def test_second_writer_fails_at_once_naming_the_first(tmp_path):
    entered, release = threading.Event(), threading.Event()

    def first():
        with result_set(tmp_path, run="run-A") as staged:
            staged.write_text("meta.json", "{}")
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert entered.wait(10)
        started = time.monotonic()
        with pytest.raises(ResultSetBusyError) as caught, result_set(tmp_path):
            pass
        assert time.monotonic() - started < 1.0  # at once, not after a wait
        message = str(caught.value)
        assert "\n" not in message and f"pid {os.getpid()}" in message and "run-A" in message
        assert "another run is writing" in message
    finally:
        release.set()
        thread.join()
    with result_set(tmp_path) as staged:  # the lock went with its holder
        staged.write_text("meta.json", "{}")


def test_second_writer_may_wait(tmp_path, tiny_llama):
    _, spec = tiny_llama
    entered = threading.Event()

    def first():
        with result_set(tmp_path) as staged:
            staged.write_text("x.txt", "x")
            entered.set()
            time.sleep(0.5)

    thread = threading.Thread(target=first)
    thread.start()
    assert entered.wait(10)
    _table(spec, 7).save(tmp_path, wait=30)
    thread.join()
    assert HeadTable.load(tmp_path).meta["seed"] == 7 and (tmp_path / "x.txt").is_file()


def test_concurrent_saves_never_mix_and_readers_see_whole_sets(tmp_path, tiny_llama):
    """Two writers (different seeds) save into one folder over and over while a reader loads:
    every load sees a meta.json whose seed made the scores beside it; the end is consistent."""
    _, spec = tiny_llama
    tables = {seed: _table(spec, seed) for seed in (1, 2)}
    errors: list[BaseException] = []
    done = threading.Event()

    def writer(seed):
        try:
            for _ in range(4):
                tables[seed].save(tmp_path, wait=60)
        except BaseException as error:
            errors.append(error)

    def reader():
        while not done.is_set():
            try:
                loaded = HeadTable.load(tmp_path, scorer="induction")
            except (FileNotFoundError, ValueError):
                continue  # before the first set is there
            seed = loaded.meta.get("seed")
            if seed is not None:  # pragma: no branch
                expected = tables[seed].data["score"].to_numpy()
                if not np.array_equal(loaded.data["score"].to_numpy(), expected):
                    errors.append(AssertionError(f"meta.json seed {seed} beside other scores"))

    threads = [threading.Thread(target=writer, args=(s,)) for s in (1, 2)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    watcher.join()
    assert not errors, errors[0]
    seed = json.loads((tmp_path / "meta.json").read_text())["seed"]
    expected = tables[seed].data["score"].to_numpy()
    assert np.array_equal(pd.read_parquet(tmp_path / "induction.parquet")["score"], expected)
    assert np.allclose(pd.read_csv(tmp_path / "induction.csv")["score"], expected)
    assert _no_staging(tmp_path)


def _fail_after_first_file(monkeypatch):
    """The file writer raises ENOSPC on the second file of a set (after one was written)."""
    original = StagedSet.write
    calls = {"n": 0}

    def write(self, name, writer):
        calls["n"] += 1
        if calls["n"] > 1:
            Path(self.path(name)).write_bytes(b"half a file")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path(name)))
        return original(self, name, writer)

    monkeypatch.setattr(StagedSet, "write", write)


def test_failed_save_leaves_previous_set_byte_identical(tmp_path, tiny_llama, monkeypatch):
    _, spec = tiny_llama
    _table(spec, 1).save(tmp_path)
    before = _snapshot(tmp_path)
    assert {"induction.csv", "induction.parquet", "induction.html", "plotly.min.js",
            "meta.json"} <= set(before)
    _fail_after_first_file(monkeypatch)
    with pytest.raises(ResultWriteError) as caught:
        _table(spec, 2).save(tmp_path)
    assert isinstance(caught.value, HeadprobeError)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("not saved: the induction table")
    assert "No space left on device" in message and "needed more than" in message
    assert "free" in message and "unchanged" in message
    assert _snapshot(tmp_path) == before
    assert _no_staging(tmp_path)


def test_failed_experiment_save_keeps_previous(tmp_path, monkeypatch):
    import plotly.graph_objects as go

    from headprobe.experiments import ExperimentResult

    def result(value):
        return ExperimentResult(table=pd.DataFrame({"x": [value]}), figure=go.Figure(),
                                summary={"x": value}, meta={"seed": value}, name="ablation")

    result(1).save(tmp_path)
    before = _snapshot(tmp_path)
    _fail_after_first_file(monkeypatch)
    with pytest.raises(ResultWriteError, match="not saved: the ablation experiment"):
        result(2).save(tmp_path)
    assert _snapshot(tmp_path) == before and _no_staging(tmp_path)


SCAN = ["scan", "induction", "--model", "tiny:llama-gqa", "--n", "4", "--batch-size", "4",
        "--quiet"]


def test_cli_disk_full_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    out = tmp_path / "same"
    assert main([*SCAN, "--seed", "0", "--out", str(out)]) == 0
    before = _snapshot(out)
    capsys.readouterr()
    _fail_after_first_file(monkeypatch)
    assert main([*SCAN, "--seed", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("headprobe: error: not saved:")
    assert "No space left on device" in err
    assert _snapshot(out) == before and _no_staging(out)


@pytest.mark.slow
def test_cli_second_writer_fails_naming_the_first(tmp_path):
    """A process holds the folder (mid-save); a CLI scan into it exits 2 with one line naming
    that process; the folder keeps the holder's set only."""
    out = tmp_path / "same"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from headprobe.resultset import result_set\n"
         f"with result_set({str(out)!r}, run='holder-run') as s:\n"
         "    s.write_text('meta.json', '{}')\n"
         "    print('ready', flush=True)\n"
         "    sys.stdin.readline()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "ready"
        scan = subprocess.run([sys.executable, "-m", "headprobe.cli", *SCAN, "--seed", "1",
                               "--out", str(out)], capture_output=True, text=True,
                              env=_env(), timeout=600)
    finally:
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(60)
    assert scan.returncode == 2
    err = scan.stderr.strip().splitlines()
    assert len(err) == 1 and "another run is writing" in err[0]
    assert f"pid {holder.pid}" in err[0] and "holder-run" in err[0]
    assert not (out / "induction.csv").exists()
    assert json.loads((out / "meta.json").read_text()) == {}


@pytest.mark.slow
def test_cli_two_seeds_started_together_end_consistent(tmp_path, tiny_llama):
    """Two `headprobe scan` runs with different seeds and one --out, started together: each
    exits 0 or loses with one line (exit 2); meta.json's seed is the seed of the scores."""
    from headprobe.registry import get_scorer

    out = tmp_path / "same"
    runs = [subprocess.Popen([sys.executable, "-m", "headprobe.cli", *SCAN, "--seed", str(s),
                              "--out", str(out)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=_env())
            for s in (0, 1)]
    results = [(run.wait(600), run.stderr.read()) for run in runs]
    for run in runs:
        run.stdout.close()
        run.stderr.close()
    assert any(code == 0 for code, _ in results)
    for code, err in results:
        if code != 0:
            lines = err.strip().splitlines()
            assert code == 2 and len(lines) == 1 and "another run is writing" in lines[0]
    meta = json.loads((out / "meta.json").read_text())
    model, _ = tiny_llama
    expected = get_scorer("induction")(model, n=4, seed=meta["seed"], batch_size=4,
                                        progress=False).data["score"].to_numpy()
    assert np.allclose(pd.read_parquet(out / "induction.parquet")["score"], expected, atol=1e-6)
    assert np.allclose(pd.read_csv(out / "induction.csv")["score"], expected, atol=1e-6)
    assert _no_staging(out)
