"""All-head scans sharded over Ray workers: :func:`ray_scan` and :func:`ray_scorer`.

Worker 0 prepares the data (and, for mean ablation, the mean ``z`` over all prompts); the shards
of :func:`~headprobe.distributed.shards.plan_shards` go to whichever worker is free, each
finished shard's sums are checkpointed at once, and the merged sums give the same
:class:`HeadTable` as :func:`headprobe.fastscan.scan_heads`.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from headprobe.distributed.pool import RayScanPool, collect, import_ray, pool_for
from headprobe.distributed.shards import SHARD_BY, Shard, ShardBy, plan_shards
from headprobe.errors import UsageError
from headprobe.types import DEFAULT_EPS

# the registered scorers whose compute is an all-head fast scan (ray_scorer / --ray)
RAY_SCORERS = ("activation_patching", "ablation_scan")


def ray_scan(
    model_name: str,
    task: Any,
    *,
    address: str | None = None,
    num_workers: int = 2,
    shard_by: ShardBy = "prompts",
    shards: int | None = None,
    method: str = "patch",
    metric: str = "normalized_logit_diff",
    direction: str = "denoising",
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    heads_per_pass: int | None = None,
    eps: float | None = None,
    fused: bool = True,
    engine: Literal["fast", "loop"] = "fast",
    n: int = 8,
    seed: int = 0,
    load_options: Mapping[str, Any] | None = None,
    cpus_per_worker: float = 1,
    gpus_per_worker: float | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_name: str = "ray_scan",
    fresh: bool = False,
    echo: Callable[[str], None] | None = None,
    progress: bool = True,
    max_retries: int = 2,
    pool: RayScanPool | None = None,
    fault: Mapping[str, Any] | None = None,
) -> Any:
    """:func:`headprobe.fastscan.scan_heads` (or, ``engine="loop"``, ``loop_scan``) of
    ``model_name`` on ``task``, sharded over Ray workers; the same :class:`HeadTable`.

    Args:
        model_name: what each worker loads with ``load_model(model_name, **load_options)``.
        task: a :class:`~headprobe.tasks.base.Task`, a list of ``TaskItem``, or a registered
            task name (built on a worker with ``n`` and ``seed``).
        address: Ray address; ``None``: this process's Ray instance, else a new local one.
        num_workers: actors, one model each (ignored with ``pool``).
        shard_by: ``prompts`` (whole batches) or ``layers`` (cost-balanced layer groups).
        shards: number of shards (:func:`plan_shards`; default one per batch for prompts).
        method, metric, direction, layers, batch_size, heads_per_pass, eps, fused: as
            :func:`~headprobe.fastscan.scan_heads` (``fused``: the attention kernel of layers
            the fast scan leaves alone).
        engine: ``fast`` (the fast scan) or ``loop`` (one pass per head), as the scorers'
            ``engine`` parameter.
        load_options: ``load_model`` keywords (``device``, ``dtype``).
        cpus_per_worker, gpus_per_worker, max_retries: see :class:`RayScanPool`.
        checkpoint_dir: keep each finished shard's sums in ``<dir>/.checkpoints/
            <checkpoint_name>.pt`` (keyed by the model, parameters, shard plan and data
            fingerprint); a run started again skips them; removed when the scan completes.
        fresh: discard a stored checkpoint.
        echo: receives the checkpoint's "resuming" lines (default: a log record).
        progress: a tqdm bar over shards on the driver.
        pool: an open :class:`RayScanPool` of ``model_name`` to reuse (not closed here).
        fault: testing only, passed to :meth:`ScanWorker.run` to make one shard's worker die
            (or raise) once.

    Returns:
        The :class:`HeadTable` of ``scan_heads``; ``meta["distributed"]`` holds ``backend``,
        ``address``, ``workers``, ``shard_by``, ``shards``, ``shards_run``,
        ``shards_resumed``, ``worker_pids`` and ``shard_seconds``.

    Raises:
        RayNotInstalledError: ``ray`` is not importable.
        ShardFailedError: a shard failed after ``max_retries`` retries.
    """
    from tqdm.auto import tqdm

    from headprobe.checkpoint import Checkpoint, run_key_fields
    from headprobe.fastscan.patching import check_scan_args, scan_params
    from headprobe.fastscan.sums import ScanSums, merge_sums, scan_table
    from headprobe.inputs import fingerprint
    from headprobe.provenance import Timer

    eps = DEFAULT_EPS if eps is None else eps
    direction = check_scan_args(method, metric, direction, eps)
    if engine not in ("fast", "loop"):
        raise UsageError(f"engine must be 'fast' or 'loop', got {engine!r}")
    fast = engine == "fast"
    if shard_by not in SHARD_BY:
        raise UsageError(f"shard_by must be 'prompts' or 'layers', got {shard_by!r}")
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}")
    ray = import_ray()
    timer = Timer()
    pool, own_pool = pool_for(pool, model_name, num_workers=num_workers, address=address,
                              load_options=load_options, cpus_per_worker=cpus_per_worker,
                              gpus_per_worker=gpus_per_worker, max_retries=max_retries)
    try:
        prepared = ray.get(pool.actors[0].prepare.remote(
            task, method=method, layers=layers, batch_size=batch_size, fast=fast, n=n,
            seed=seed))
        timer.lap("prepare")
        data, spec, layer_list = prepared["data"], prepared["spec"], prepared["layers"]
        chunk = (spec.n_heads if heads_per_pass is None
                 else max(1, min(heads_per_pass, spec.n_heads)))
        params = scan_params(method, metric, direction, layer_list, chunk, fast, eps)
        plan = plan_shards(len(data), layer_list, shard_by=shard_by, batch_size=batch_size,
                           n_layers=spec.n_layers, shards=shards, num_workers=pool.num_workers)
        digest = fingerprint(data.clean + (data.corrupt or []))
        checkpoint = None
        parts: dict[int, ScanSums] = {}
        if checkpoint_dir is not None:
            key_params = {**params, "shard_by": shard_by,
                          "shards": [[shard.rows[0], shard.rows[-1], list(shard.layers)]
                                     for shard in plan]}
            checkpoint = Checkpoint(checkpoint_dir, checkpoint_name, run_key_fields(
                name=checkpoint_name, spec=spec, params=key_params, seed=None, n=len(data),
                batch_size=batch_size, fingerprint=digest), fresh=fresh, echo=echo)
            state = checkpoint.load() or {}
            parts = {int(index): ScanSums.from_state(sums)
                     for index, sums in dict(state.get("shards", {})).items()}
        resumed = sorted(parts)
        todo = [shard for shard in plan if shard.index not in parts]
        options = {"method": method, "metric": metric, "direction": direction,
                   "batch_size": batch_size, "heads_per_pass": chunk, "fast": fast, "eps": eps,
                   "fused": fused, "mean_z": prepared["mean_z"]}
        data_ref = ray.put(data)
        pids: set[int] = set()
        seconds: dict[int, float] = {}
        bar = tqdm(total=len(plan), initial=len(resumed), desc=f"ray scan ({shard_by})",
                   disable=not progress, leave=False)

        def on_done(shard: Shard, out: dict[str, Any]) -> None:
            parts[shard.index] = ScanSums.from_state(out["state"])
            pids.add(int(out["pid"]))
            seconds[shard.index] = float(out["seconds"])
            if checkpoint is not None:
                checkpoint.save({"shards": {str(index): sums.state()
                                            for index, sums in parts.items()}},
                                progress=f"{len(parts)} of {len(plan)} shards")
            bar.update(1)

        try:
            collect(pool, todo,
                    lambda actor, shard: actor.run.remote(shard, data_ref, options, fault),
                    on_done, Shard.describe)
        finally:
            bar.close()
        timer.lap("compute")
        sums = merge_sums(parts[shard.index] for shard in plan)
        table = scan_table(
            sums, spec, metric=metric, params=params, fingerprint=digest, task=data.name,
            batch_size=batch_size, timer=timer,
            distributed={"backend": "ray", "address": address or "local",
                         "workers": pool.num_workers, "shard_by": shard_by,
                         "shards": len(plan), "shards_run": [s.index for s in todo],
                         "shards_resumed": resumed, "worker_pids": sorted(pids),
                         "shard_seconds": [seconds.get(s.index) for s in plan]})
        if checkpoint is not None:
            checkpoint.finish()
        return table
    finally:
        if own_pool:
            pool.close()


def ray_scorer(scorer: Any, **options: Any) -> Any:
    """``scorer`` (``activation_patching`` or ``ablation_scan``) with its scan run by
    :func:`ray_scan` (``options``: its keywords, e.g. ``model_name``, ``address``,
    ``num_workers``, ``shard_by``, ``load_options``, ``checkpoint_dir``); the scorer's own
    preparation, parameters and table, ``meta["distributed"]`` added. The scan's choices come
    from the scorer module's ``scan_options`` (the scorers themselves know no Ray).

    Raises:
        UsageError: another scorer.
        RayNotInstalledError: ``ray`` is not importable.
    """
    if scorer.name not in RAY_SCORERS:
        raise UsageError(f"--ray runs the all-head scans only ({', '.join(RAY_SCORERS)}); "
                         f"scorer {scorer.name!r} cannot be sharded over Ray")
    import_ray()
    module = importlib.import_module(scorer.compute.__module__)
    from headprobe.scorers.activation_patching import scan_result, use_fast

    def sharded(model: Any, spec: Any, data: Any, params: dict[str, Any], batch_size: int,
                progress: bool) -> Any:
        scan = module.scan_options(params, batch_size, progress)
        engine = "fast" if use_fast(spec, params["engine"]) else "loop"
        table = ray_scan(task=data.payload, engine=engine, **scan.kwargs(), **dict(options))
        return scan_result(table)

    return dataclasses.replace(scorer, compute=sharded)
