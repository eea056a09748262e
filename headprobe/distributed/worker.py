"""The Ray actor of a distributed scan: one loaded model that runs shards and conditions.

:class:`ScanWorker` is a plain class (importable by the worker processes); :class:`~headprobe.
distributed.pool.RayScanPool` turns it into a Ray actor at run time. It imports no Ray.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from headprobe.distributed.shards import Shard
from headprobe.types import Head


class ScanWorker:
    """One Ray actor: loads ``model_name`` once and runs shards of scans on it.

    Args:
        model_name: anything :func:`headprobe.catalogue.load_model` takes (``tiny:llama-gqa``,
            ``smollm2-135m-instruct``, a local folder...).
        load_options: keyword arguments of ``load_model`` (``device``, ``dtype``).
        threads: torch intra-op threads (the worker's CPU share).
    """

    def __init__(self, model_name: str, load_options: Mapping[str, Any], threads: int) -> None:
        from headprobe.catalogue import load_model

        torch.set_num_threads(max(1, int(threads)))
        self.model, self.spec = load_model(model_name, **dict(load_options))
        self.shards_run = 0

    def info(self) -> dict[str, Any]:
        """``pid``, torch ``threads``, ``shards_run`` (by this process) and the ``spec``."""
        return {"pid": os.getpid(), "threads": torch.get_num_threads(),
                "shards_run": self.shards_run, "spec": self.spec}

    def prepare(self, task: Any, *, method: str, layers: Sequence[int] | None, batch_size: int,
                fast: bool, n: int, seed: int) -> dict[str, Any]:
        """Tokenize ``task`` (a Task, a list of TaskItem, or a registered task name built with
        ``n`` and ``seed``); for ``method="mean"`` also the pooled mean ``z`` over all prompts.

        Returns ``{"data": ScanData, "spec": ModelSpec, "layers": [...], "mean_z": {layer:
        [H, d_head]} | None}``.
        """
        from headprobe.interventions.means import pooled_head_means
        from headprobe.models import describe_model
        from headprobe.runtime.layers import check_supported
        from headprobe.scorers.task_scan import build_task
        from headprobe.tasks.pairs import prepare_scan_data

        spec = check_supported(self.model) if fast else describe_model(self.model)
        layer_list = sorted(set(spec.check_layers(layers)))
        if isinstance(task, str):
            task = build_task(self.model, task, n, seed)
        data = prepare_scan_data(self.model, task, need_corrupt=method == "patch")
        mean_z = None
        if method == "mean":  # the mean over ALL prompts, as the unsharded scan uses
            mean_z = pooled_head_means(self.model, layer_list, data.clean,
                                       batch_size=batch_size)
        return {"data": data, "spec": self.spec, "layers": layer_list, "mean_z": mean_z}

    def run(self, shard: Shard, data: Any, options: Mapping[str, Any],
            fault: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The :class:`ScanSums` state of ``shard`` (``scan_sums`` of its prompts and layers).

        ``fault`` (testing only): ``{"shard": i, "marker": path, "mode": "exit" | "raise"}``:
        when running shard ``i`` while the file ``marker`` does not exist, create it and then
        kill this process (``os._exit(1)``, a crashed worker) or raise ``RuntimeError``.
        """
        from headprobe.fastscan.patching import scan_sums

        if fault is not None and int(fault["shard"]) == shard.index:
            marker = Path(fault["marker"])
            if not marker.exists():
                marker.touch()
                if fault.get("mode", "exit") == "exit":
                    os._exit(1)
                raise RuntimeError(f"injected fault in shard {shard.index}")
        started = time.perf_counter()
        sums = scan_sums(self.model, data.subset(shard.rows), layers=list(shard.layers),
                         offset=shard.rows[0], progress=False, **dict(options))
        self.shards_run += 1
        return {"index": shard.index, "state": sums.state(), "pid": os.getpid(),
                "seconds": round(time.perf_counter() - started, 3)}

    def judge(self, task: Any, name: str, heads: Sequence[Head] | None,
              setup: Mapping[str, Any]) -> dict[str, Any]:
        """One condition of an ablation experiment: ``task`` judged with ``heads`` ablated
        (``None``: the clean model) by a
        :class:`~headprobe.experiments.runner.ConditionRunner` built from ``setup``
        (``method``, ``options`` with the driver's shared means / resample sources,
        ``all_heads``, ``batch_size``). Returns ``{"name", "correct": [N] bool, "pid"}``."""
        from headprobe.experiments.runner import ConditionRunner

        runner = ConditionRunner(self.model, task, setup["method"], dict(setup["options"]),
                                 setup["all_heads"], setup["batch_size"])
        self.shards_run += 1
        return {"name": name, "correct": runner.judge(None if heads is None else list(heads)),
                "pid": os.getpid()}
