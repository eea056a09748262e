"""Tests of headprobe.distributed: all-head scans sharded over a local 2-worker Ray cluster equal
the single-process scan; a dying worker is retried; a restarted driver skips finished shards.

The Ray tests start one local Ray instance for the module (``num_cpus=2``) and skip when ray is
not installed; the shard-plan and error tests run without it.
"""

from __future__ import annotations

import json
import sys

import pandas as pd
import pytest
import torch
from conftest import register_task
from test_fastscan import TINY_ITEMS  # shared tiny prompt pairs

from headprobe.checkpoint import CHECKPOINT_DIR
from headprobe.cli import main
from headprobe.distributed import (
    RayNotInstalledError,
    RayScanPool,
    ShardFailedError,
    import_ray,
    plan_shards,
    ray_conditions_judge,
    ray_scan,
    ray_scorer,
)
from headprobe.errors import UsageError
from headprobe.experiments.ablation import ablation_experiment
from headprobe.fastscan import scan_heads
from headprobe.registry import get_scorer
from headprobe.tasks.base import Task

MODEL = "tiny:llama-gqa"
ITEMS = [*TINY_ITEMS, TINY_ITEMS[0], TINY_ITEMS[1]]  # 6 pairs: 3 batches of 2
COLUMNS = ("score", "std", "mean_ld")


def assert_same_table(got, want) -> None:
    """Equal to 1e-6 in every column, same parameters and per-batch prefix lengths."""
    for column in COLUMNS:
        diff = (got.data[column] - want.data[column]).abs().max()
        assert diff <= 1e-6, (column, diff)
        assert got.data[column].isna().equals(want.data[column].isna())
    assert got.data[["layer", "head", "kv_head"]].equals(want.data[["layer", "head", "kv_head"]])
    for key in ("params", "n_prompts", "shared_prefix_lengths", "mean_ld_clean",
                "mean_ld_corrupt", "data_fingerprint", "task", "scorer"):
        assert got.meta[key] == want.meta[key], key


# ---------------------------------------------------------------------------------------------
# Shard plans and errors (no Ray needed)


def test_prompt_shards_are_whole_batches():
    shards = plan_shards(10, [0, 1, 2], shard_by="prompts", batch_size=3, n_layers=3)
    assert [s.rows for s in shards] == [(0, 1, 2), (3, 4, 5), (6, 7, 8), (9,)]
    two = plan_shards(10, [0, 1, 2], shard_by="prompts", batch_size=3, n_layers=3, shards=2)
    assert [s.rows for s in two] == [tuple(range(6)), tuple(range(6, 10))]
    assert all(s.layers == (0, 1, 2) for s in two)


def test_layer_shards_balance_the_rerun_cost():
    """Scanning layer k reruns layers k..L-1: early layers cost more, so groups get fewer."""
    shards = plan_shards(5, range(30), shard_by="layers", batch_size=2, n_layers=30, shards=4)
    groups = [list(s.layers) for s in shards]
    assert [layer for group in groups for layer in group] == list(range(30))  # contiguous
    costs = [sum(30 - k for k in group) for group in groups]
    assert max(costs) - min(costs) <= 30  # within one layer's cost of each other
    assert len(groups[0]) < len(groups[-1])
    assert all(s.rows == tuple(range(5)) for s in shards)
    assert len(plan_shards(5, [1, 2], shard_by="layers", batch_size=2, n_layers=3,
                           num_workers=4)) == 2  # capped at the layer count


def test_bad_shard_options():
    with pytest.raises(UsageError, match="shard_by"):
        plan_shards(4, [0], shard_by="heads", batch_size=2, n_layers=1)
    with pytest.raises(UsageError, match="shards"):
        plan_shards(4, [0], shard_by="prompts", batch_size=2, n_layers=1, shards=0)


def test_missing_ray_says_how_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(RayNotInstalledError, match=r"headprobe\[ray\]"):
        import_ray()
    with pytest.raises(RayNotInstalledError):
        ray_scan(MODEL, ITEMS)
    assert main(["scan", "activation_patching", "--model", MODEL, "--out",
                 str(tmp_path / "x"), "--ray"]) == 2
    assert "pip install 'headprobe[ray]'" in capsys.readouterr().err
    assert main(["ablate", "--task", "induction_copy", "--heads", "0.0", "--n", "2",
                 "--model", MODEL, "--ray"]) == 2
    assert "pip install 'headprobe[ray]'" in capsys.readouterr().err


def test_only_the_scan_scorers_shard(tmp_path, capsys):
    with pytest.raises(UsageError, match="cannot be sharded"):
        ray_scorer(get_scorer("induction"), model_name=MODEL)
    assert main(["scan", "induction", "--model", MODEL, "--out", str(tmp_path / "x"),
                 "--ray"]) == 2
    err = capsys.readouterr().err
    assert "activation_patching, ablation_scan" in err and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------
# On a local 2-worker Ray cluster


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(tiny_llama):
    model, _ = tiny_llama
    cache = {}

    def scan(method: str, metric: str):
        if (method, metric) not in cache:
            cache[method, metric] = scan_heads(model, ITEMS, method=method, metric=metric,
                                               batch_size=2, progress=False)
        return cache[method, metric]

    return scan


@pytest.mark.ray
class TestOnPool:
    """Tests sharing one pool of 2 workers (closed after the class, freeing the CPUs)."""

    @pytest.fixture(scope="class")
    def pool(self, cluster):
        with RayScanPool(MODEL, num_workers=2, max_retries=1) as pool:
            yield pool

    @pytest.mark.parametrize("method,metric,shard_by", [
        ("patch", "normalized_logit_diff", "prompts"),
        ("patch", "logit_diff", "layers"),
        ("mean", "logit_diff", "prompts"),
        ("mean", "normalized_logit_diff", "layers"),
    ])
    def test_equals_single_process(self, pool, reference, method, metric, shard_by):
        got = ray_scan(MODEL, ITEMS, pool=pool, method=method, metric=metric,
                       shard_by=shard_by, batch_size=2, progress=False)
        assert_same_table(got, reference(method, metric))
        dist = got.meta["distributed"]
        assert dist["backend"] == "ray" and dist["workers"] == 2
        assert dist["shard_by"] == shard_by and dist["shards"] == 3  # 3 batches / 3 layers
        assert dist["shards_run"] == [0, 1, 2] and dist["shards_resumed"] == []
        assert len(dist["worker_pids"]) == 2  # both workers took shards

    def test_dead_worker_is_restarted_and_its_shard_retried(self, pool, reference, tmp_path):
        marker = tmp_path / "died"
        pids_before = {info["pid"] for info in pool.info()}
        got = ray_scan(MODEL, ITEMS, pool=pool, method="patch", batch_size=2, progress=False,
                       metric="normalized_logit_diff",
                       fault={"shard": 1, "marker": str(marker), "mode": "exit"})
        assert marker.exists()  # the worker running shard 1 did die (os._exit)
        assert_same_table(got, reference("patch", "normalized_logit_diff"))
        pids_after = {info["pid"] for info in pool.info()}
        assert len(pids_after - pids_before) == 1  # one worker is a restarted process

    def test_restarted_driver_skips_finished_shards(self, pool, reference, tmp_path, capsys):
        kwargs = {"pool": pool, "method": "mean", "metric": "logit_diff", "batch_size": 2,
                  "progress": False, "checkpoint_dir": tmp_path, "echo": print}
        with pytest.raises(ShardFailedError, match="shard 2"):  # the driver's run fails
            ray_scan(MODEL, ITEMS, shards=3,
                     fault={"shard": 2, "marker": str(tmp_path / "m"), "mode": "raise"}, **kwargs)
        stored = tmp_path / CHECKPOINT_DIR / "ray_scan.pt"
        assert stored.is_file()
        runs_before = sum(info["shards_run"] for info in pool.info())
        got = ray_scan(MODEL, ITEMS, shards=3, **kwargs)  # a new driver, same arguments
        assert "resuming from checkpoint" in capsys.readouterr().out
        assert sum(info["shards_run"] for info in pool.info()) - runs_before == 1
        assert got.meta["distributed"]["shards_resumed"] == [0, 1]
        assert got.meta["distributed"]["shards_run"] == [2]
        assert_same_table(got, reference("mean", "logit_diff"))
        assert not stored.exists()  # removed once the scan is complete

    def test_ablation_experiment_conditions_on_workers(self, pool, tiny_llama):
        model, _ = tiny_llama
        task = Task("tiny", ITEMS, judge="next_token")
        kwargs = {"heads": [(1, 0), (2, 3)], "method": "mean", "n_random": 4,
                  "n_bootstrap": 50, "batch_size": 2, "progress": False}
        local = ablation_experiment(model, task, **kwargs)
        got = ablation_experiment(model, task, judge=ray_conditions_judge(MODEL, pool=pool),
                                  **kwargs)
        pd.testing.assert_frame_equal(got.table, local.table)
        assert got.correct.keys() == local.correct.keys()
        for name, correct in local.correct.items():
            assert (got.correct[name] == correct).all(), name
        assert got.meta["random_sets"] == local.meta["random_sets"]
        assert got.meta["distributed"]["conditions"] == 6  # baseline, target, 4 random sets
        assert "distributed" not in local.meta

    def test_ablation_conditions_resume_from_the_checkpoint(self, pool, tiny_llama, tmp_path,
                                                            monkeypatch):
        from headprobe.checkpoint import Checkpoint

        model, _ = tiny_llama
        task = Task("tiny", ITEMS, judge="next_token")
        kwargs = {"heads": [(1, 0), (2, 3)], "method": "zero", "n_random": 3,
                  "n_bootstrap": 0, "batch_size": 2, "progress": False}
        judge = ray_conditions_judge(MODEL, pool=pool)
        finish = Checkpoint.finish
        monkeypatch.setattr(Checkpoint, "finish", lambda self: None)  # a driver that died
        first = ablation_experiment(model, task, judge=judge, checkpoint_dir=tmp_path, **kwargs)
        monkeypatch.setattr(Checkpoint, "finish", finish)
        (path,) = (tmp_path / ".checkpoints").glob("ablation_ray.pt")
        record = torch.load(path, weights_only=True)
        assert sorted(record["state"]["correct"]) == sorted(first.correct)
        for name in ("target", "random_1"):  # these two had not come back
            del record["state"]["correct"][name]
        torch.save(record, path)
        lines: list[str] = []
        again = ablation_experiment(model, task, judge=judge, checkpoint_dir=tmp_path,
                                    echo=lines.append, **kwargs)
        meta = again.meta["distributed"]
        assert meta["conditions_run"] == ["target", "random_1"]
        assert meta["conditions_resumed"] == ["baseline", "random_0", "random_2"]
        assert any("resum" in line for line in lines)
        pd.testing.assert_frame_equal(again.table, first.table)
        assert not path.exists()  # finished: removed

    def test_pool_holds_one_model(self, pool):
        with pytest.raises(UsageError, match="pool's workers hold"):
            ray_scan("tiny:gpt2", ITEMS, pool=pool, progress=False)
        assert {info["threads"] for info in pool.info()} == {1}  # its share of the CPUs


@pytest.mark.ray
def test_cli_scan_on_ray_equals_the_scorer(cluster, tiny_llama, tmp_path, monkeypatch, capsys):
    import types

    module = types.ModuleType("headprobe_test_tiny_pairs")
    module.make_task = lambda n=6, seed=0: Task("tiny_pairs", ITEMS[:n])
    monkeypatch.setitem(sys.modules, module.__name__, module)
    register_task(monkeypatch, "tiny_pairs", module.__name__)
    out = tmp_path / "ablation"
    argv = ["scan", "ablation_scan", "--model", MODEL, "--out", str(out), "--n", "6",
            "--batch-size", "2", "--param", "task=tiny_pairs", "--quiet"]
    assert main([*argv, "--ray", "--ray-workers", "2", "--shard-by", "layers"]) == 0
    printed = capsys.readouterr().out
    assert "sharding over 2 Ray workers by layers" in printed
    meta = json.loads((out / "meta.json").read_text())
    assert meta["distributed"]["shard_by"] == "layers" and meta["distributed"]["workers"] == 2
    assert not (out / CHECKPOINT_DIR).exists()
    got = pd.read_csv(out / "ablation_scan.csv")
    model, _ = tiny_llama
    want = get_scorer("ablation_scan")(model, n=6, batch_size=2, progress=False,
                                       task="tiny_pairs")
    assert meta["params"] == want.meta["params"]
    assert meta["run_key"] == want.meta["run_key"]  # the same run as without --ray
    merged = got.merge(want.data, on=["layer", "head"], suffixes=("", "_want"))
    for column in COLUMNS:
        assert (merged[column] - merged[f"{column}_want"]).abs().max() <= 1e-6
