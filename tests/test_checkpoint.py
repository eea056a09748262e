"""Tests of headprobe.checkpoint: the store (run keys, atomic writes, cleanup), per-batch resume
of the pattern scorers and ``sink`` (bitwise equal to an uninterrupted run), and a real
``headprobe scan`` subprocess killed with SIGKILL mid-run and started again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from headprobe.checkpoint import (
    CHECKPOINT_DIR,
    LOCK_FILES,
    Checkpoint,
    describe_changes,
    run_key,
    run_key_fields,
)
from headprobe.cli import main
from headprobe.registry import get_scorer

REPO = Path(__file__).resolve().parents[1]


class Interrupted(Exception):
    """Raised by a patched :meth:`Checkpoint.save` to simulate a run killed mid-way."""


def _fields(model_spec, **changes):
    base = dict(name="induction", spec=model_spec, params={"seq_len": 8, "repeats": 2}, seed=0, n=4,
                batch_size=2, fingerprint="abc")
    base.update(changes)
    return run_key_fields(**base)


def _interrupt_after(monkeypatch, k: int) -> list[int]:
    """Make the k-th :meth:`Checkpoint.save` of the run raise after writing; returns the list
    of save counts (one entry per save)."""
    original = Checkpoint.save
    calls: list[int] = []

    def save(self, state, progress=""):
        original(self, state, progress)
        calls.append(len(calls) + 1)
        if len(calls) == k:
            raise Interrupted(f"killed after {k} batches")

    monkeypatch.setattr(Checkpoint, "save", save)
    return calls


# ---------------------------------------------------------------------------------------------
# (a) the store


def test_run_key_depends_on_every_field(tiny_llama):
    _, spec = tiny_llama
    key = run_key(_fields(spec))
    assert key == run_key(_fields(spec))  # stable
    for change in ({"seed": 1}, {"n": 5}, {"batch_size": 4}, {"fingerprint": "abd"},
                   {"params": {"seq_len": 9, "repeats": 2}}, {"name": "previous_token"},
                   {"version": "0.0.0-other"}, {"spec": {**spec.to_dict(), "dtype": "bfloat16"}}):
        assert run_key(_fields(spec, **change)) != key, change
    assert describe_changes(_fields(spec), _fields(spec, seed=3)) == ["seed: 0 -> 3"]


def test_store_roundtrip_resume_message_and_cleanup(tiny_llama, tmp_path):
    _, spec = tiny_llama
    lines: list[str] = []
    store = Checkpoint(tmp_path, "induction", _fields(spec), echo=lines.append)
    assert store.load() is None and not store.path.exists()
    scores = torch.randn(4, 3, 4)
    store.save({"scores": scores, "batches_done": 1, "sums": {"a": torch.ones(2)}},
               progress="batch 1 of 2 done")
    assert store.path == tmp_path / CHECKPOINT_DIR / "induction.pt"
    again = Checkpoint(tmp_path, "induction", _fields(spec), echo=lines.append)
    state = again.load()
    assert torch.equal(state["scores"], scores) and state["batches_done"] == 1
    assert torch.equal(state["sums"]["a"], torch.ones(2))
    assert "resuming" in lines[-1] and "batch 1 of 2 done" in lines[-1]
    again.finish()
    assert not store.path.exists() and not (tmp_path / CHECKPOINT_DIR).exists()


def test_changed_key_starts_afresh_and_names_the_change(tiny_llama, tmp_path):
    _, spec = tiny_llama
    Checkpoint(tmp_path, "induction", _fields(spec)).save({"batches_done": 3}, "batch 3")
    lines: list[str] = []
    changed = _fields(spec, params={"seq_len": 10, "repeats": 2}, seed=2)
    store = Checkpoint(tmp_path, "induction", changed, echo=lines.append)
    assert store.load() is None
    assert not store.path.exists()  # the other run's checkpoint is gone
    assert len(lines) == 1 and "starting afresh" in lines[0]
    assert "params.seq_len: 8 -> 10" in lines[0] and "seed: 0 -> 2" in lines[0]
    assert "repeats" not in lines[0]  # only what changed is named


def test_fresh_discards_and_says_so(tiny_llama, tmp_path):
    _, spec = tiny_llama
    Checkpoint(tmp_path, "induction", _fields(spec)).save({"batches_done": 3}, "batch 3")
    lines: list[str] = []
    store = Checkpoint(tmp_path, "induction", _fields(spec), fresh=True, echo=lines.append)
    assert store.load() is None and not store.path.exists()
    assert "--fresh" in lines[0]


def test_save_is_atomic(tiny_llama, tmp_path, monkeypatch):
    _, spec = tiny_llama
    store = Checkpoint(tmp_path, "induction", _fields(spec), echo=lambda line: None)
    store.save({"batches_done": 1}, "batch 1")
    original = torch.save

    def torn_save(obj, path):  # writes half a file, then dies
        Path(path).write_bytes(b"PK\x03\x04 half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        store.save({"batches_done": 2}, "batch 2")
    monkeypatch.setattr(torch, "save", original)
    assert store.load()["batches_done"] == 1  # the old checkpoint is intact
    left = [p.name for p in store.folder.iterdir() if p.name not in LOCK_FILES]
    assert left == ["induction.pt"]  # no temporary left (the writer's lock files stay)


def test_damaged_file_starts_afresh(tiny_llama, tmp_path):
    _, spec = tiny_llama
    lines: list[str] = []
    store = Checkpoint(tmp_path, "induction", _fields(spec), echo=lines.append)
    store.folder.mkdir()
    store.path.write_bytes(b"not a checkpoint")
    assert store.load() is None and "unreadable" in lines[0]


# ---------------------------------------------------------------------------------------------
# (b) per-batch resume inside one process


def _same(a, b) -> None:
    pd.testing.assert_frame_equal(a.to_frame(), b.to_frame(), check_exact=True)


@pytest.mark.parametrize("name", ["induction", "previous_token", "duplicate_token"])
def test_pattern_scorer_resumes_per_batch_bitwise(name, tiny_llama, tmp_path, monkeypatch):
    model, _ = tiny_llama
    scorer = get_scorer(name)
    assert scorer.resumes_per_batch
    args = dict(n=7, seed=3, batch_size=2, progress=False, seq_len=8)
    reference = scorer(model, **args)

    calls = _interrupt_after(monkeypatch, 2)
    with pytest.raises(Interrupted):
        scorer(model, checkpoint_dir=tmp_path, **args)
    state = torch.load(tmp_path / CHECKPOINT_DIR / f"{name}.pt", weights_only=True)
    assert state["state"]["batches_done"] == 2
    monkeypatch.undo()

    lines: list[str] = []
    counted = _interrupt_after(monkeypatch, 99)
    resumed = scorer(model, checkpoint_dir=tmp_path, echo=lines.append, **args)
    assert calls == [1, 2] and len(counted) == 2  # 4 batches: only the last 2 ran again
    assert any("resuming" in line and "batch 2 of 4 done" in line for line in lines)
    _same(resumed, reference)
    assert resumed.meta["run_key"] == reference.meta["run_key"]
    assert not (tmp_path / CHECKPOINT_DIR).exists()  # removed when the run finished


def test_sink_resumes_per_batch_bitwise(tiny_llama, tmp_path, monkeypatch):
    model, _ = tiny_llama
    scorer = get_scorer("sink")
    assert scorer.resumes_per_batch
    prompts = {"a": ["abc def ghi", "jkl mno", "pqr st uv", "w xyz"],
               "b": ["hello there", "general kenobi", "you are a bold one"]}
    args = dict(batch_size=2, progress=False)
    reference = scorer(model, prompts, **args)
    _interrupt_after(monkeypatch, 3)  # domain a (2 batches) done, 1 of 2 batches of b
    with pytest.raises(Interrupted):
        scorer(model, prompts, checkpoint_dir=tmp_path, **args)
    monkeypatch.undo()
    lines: list[str] = []
    resumed = scorer(model, prompts, checkpoint_dir=tmp_path, echo=lines.append, **args)
    assert any("b: batch 1 of 2 done" in line for line in lines)
    _same(resumed, reference)
    assert resumed.meta["domains"] == reference.meta["domains"]


def test_changed_parameter_restarts_the_scorer(tiny_llama, tmp_path, monkeypatch):
    model, _ = tiny_llama
    scorer = get_scorer("induction")
    _interrupt_after(monkeypatch, 1)
    with pytest.raises(Interrupted):
        scorer(model, n=4, batch_size=2, progress=False, seq_len=8, checkpoint_dir=tmp_path)
    monkeypatch.undo()
    lines: list[str] = []
    table = scorer(model, n=4, batch_size=2, progress=False, seq_len=9,
                   checkpoint_dir=tmp_path, echo=lines.append)
    assert any("starting afresh" in line and "params.seq_len: 8 -> 9" in line for line in lines)
    _same(table, scorer(model, n=4, batch_size=2, progress=False, seq_len=9))


# ---------------------------------------------------------------------------------------------
# (c) a real process, killed with SIGKILL half-way

# Runs the real CLI, only slowed down: each checkpoint save is followed by a pause, so the test
# can kill the process between batches.
_SLOW_CLI = textwrap.dedent("""
    import sys
    import time

    from headprobe.checkpoint import Checkpoint

    _save = Checkpoint.save

    def slow_save(self, state, progress=""):
        _save(self, state, progress)
        time.sleep(0.25)

    Checkpoint.save = slow_save
    from headprobe.cli import main

    raise SystemExit(main(sys.argv[1:]))
""")


def test_killed_scan_subprocess_resumes(tmp_path):
    out = tmp_path / "scan"
    args = ["scan", "induction", "--model", "tiny:llama-gqa", "--device", "cpu", "--out",
            str(out), "--n", "64", "--batch-size", "2", "--seed", "1", "--quiet",
            "--param", "seq_len=8"]
    script = tmp_path / "slow_cli.py"
    script.write_text(_SLOW_CLI)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    checkpoint = out / CHECKPOINT_DIR / "induction.pt"
    process = subprocess.Popen([sys.executable, str(script), *args], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    done = 0
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            if checkpoint.is_file():
                try:
                    done = torch.load(checkpoint, weights_only=True)["state"]["batches_done"]
                except Exception:  # a torn read: read again on the next poll
                    continue
                if done >= 3:
                    break
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, process.stdout.read().decode()
    assert 3 <= done < 32
    assert not (out / "induction.parquet").exists()  # it really died half-way

    restarted = subprocess.run([sys.executable, "-m", "headprobe.cli", *args], cwd=REPO,
                               env=env, capture_output=True, text=True, timeout=300)
    assert restarted.returncode == 0, restarted.stderr
    resumed_at = [line for line in restarted.stdout.splitlines() if "resuming" in line]
    assert len(resumed_at) == 1, restarted.stdout
    k = int(resumed_at[0].split("(batch ")[1].split(" of 32")[0])
    assert k >= done  # it continued from (at least) what the killed run had checkpointed
    assert not checkpoint.exists()

    reference = tmp_path / "reference"
    assert main([*args[:7], str(reference), *args[8:]]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out / "induction.parquet"),
                                  pd.read_parquet(reference / "induction.parquet"),
                                  check_exact=True)
