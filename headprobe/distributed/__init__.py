"""All-head scans sharded over Ray workers (the optional extra ``headprobe[ray]``).

An all-head patching or ablation scan (:mod:`headprobe.fastscan.patching`) is a mean over
prompts of per-prompt effects, computed layer by layer, so its additive sums
(:class:`~headprobe.fastscan.sums.ScanSums`) split two ways:

- ``shard_by="prompts"``: each shard is a run of whole batches of prompts (contiguous rows,
  aligned to ``batch_size``, so every batch is the one the single-process scan runs); the
  shards' sums add up;
- ``shard_by="layers"``: each shard scans a contiguous group of layers of every prompt. A scan
  of layer ``k`` reruns layers ``k..L-1`` only, so layer ``k`` costs about ``L - k`` layer
  passes; the groups are cut to balance that cost, not the number of layers.

:func:`ray_scan` starts one Ray actor per worker (:class:`RayScanPool`), each loading the model
once from its name (``load_model(name, **load_options)``; its torch threads set to its CPU
share, or one GPU each with ``gpus_per_worker=1``). Worker 0 tokenizes the task and, for mean
ablation, computes the pooled mean of ``z`` over *all* prompts (a prompt shard must ablate with
the mean of the whole set, as the unsharded scan does). Shards are handed out one at a time to
whichever worker is free and their sums come back as they finish (``ray.wait``); with a
``checkpoint_dir`` every finished shard's sums are written to the run's
:class:`~headprobe.checkpoint.Checkpoint` at once, so a driver started again with the same
arguments skips them. The merged sums (:func:`~headprobe.fastscan.sums.merge_sums`) give the
table through :func:`~headprobe.fastscan.sums.scan_table`: the same :class:`HeadTable` as
:func:`headprobe.fastscan.scan_heads` (to float32 round-off), its metadata adding
``distributed`` (backend, address, workers, shards, which ran and which were resumed).

A worker process that dies is restarted by Ray (``max_restarts``) and its shard retried
(``max_task_retries``), both ``max_retries``; a shard that still fails lets the shards in
flight finish (and be checkpointed), then raises :class:`ShardFailedError`.

:func:`ray_judge` does the same for an ablation experiment
(:func:`headprobe.experiments.ablation.ablation_experiment` with
``judge=ray_conditions_judge(model_name, ...)``): its
conditions (baseline, target, each random control set) are judged one per free worker, with
the random sets drawn and the means / resample sources computed once by the driver; with a
``checkpoint_dir`` each judged condition is saved at once and a restarted experiment judges
only the missing ones.

Ray is imported only inside the functions here, so ``import headprobe.distributed`` works
without it; asking for a Ray scan without Ray raises :class:`RayNotInstalledError`.

Modules:

- :mod:`headprobe.distributed.shards`: :func:`plan_shards` and :class:`Shard`;
- :mod:`headprobe.distributed.worker`: :class:`ScanWorker`, the actor class;
- :mod:`headprobe.distributed.pool`: :func:`import_ray` and :class:`RayScanPool`;
- :mod:`headprobe.distributed.scan`: :func:`ray_scan` and :func:`ray_scorer`;
- :mod:`headprobe.distributed.experiment`: :func:`ray_judge`.
"""

from __future__ import annotations

from headprobe.distributed.experiment import ray_conditions_judge, ray_judge
from headprobe.distributed.pool import INSTALL_HINT, RayScanPool, import_ray
from headprobe.distributed.scan import RAY_SCORERS, ray_scan, ray_scorer
from headprobe.distributed.shards import SHARD_BY, Shard, ShardBy, plan_shards
from headprobe.distributed.worker import ScanWorker
from headprobe.errors import RayNotInstalledError, ShardFailedError

__all__ = ["INSTALL_HINT", "RAY_SCORERS", "SHARD_BY", "RayNotInstalledError", "RayScanPool",
           "ScanWorker", "Shard", "ShardBy", "ShardFailedError", "import_ray", "plan_shards",
           "ray_conditions_judge", "ray_judge", "ray_scan", "ray_scorer"]
