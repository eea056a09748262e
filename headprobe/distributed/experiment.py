"""The conditions of an ablation experiment judged on Ray workers (:func:`ray_judge`).

The driver draws the random control sets and computes the means / resample sources once; each
condition (baseline, target, each random set) is judged on one free worker. With a
checkpoint (:class:`headprobe.checkpoint.Checkpoint`, built by the experiment from its run
key) each judged condition is saved at once, and a restarted experiment judges only the
conditions still missing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from headprobe.checkpoint import Checkpoint
from headprobe.distributed.pool import RayScanPool, collect, import_ray, pool_for
from headprobe.types import Head


def ray_judge(
    model_name: str,
    task: Any,
    conditions: Sequence[tuple[str, Sequence[Head] | None]],
    *,
    method: str,
    options: Mapping[str, Any],
    all_heads: Sequence[Head],
    batch_size: int = 8,
    pool: RayScanPool | None = None,
    address: str | None = None,
    num_workers: int = 2,
    load_options: Mapping[str, Any] | None = None,
    cpus_per_worker: float = 1,
    gpus_per_worker: float | None = None,
    max_retries: int = 2,
    progress: bool = True,
    checkpoint: Checkpoint | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The conditions of an ablation experiment (:func:`headprobe.experiments.ablation.
    ablation_experiment`: baseline, target, random control sets) judged on Ray workers, one
    condition at a time per free worker.

    Args:
        task: the :class:`~headprobe.tasks.base.Task`.
        conditions: ``(name, heads)``; ``heads`` ``None`` is the clean model.
        method, options, all_heads, batch_size: of the driver's
            :class:`~headprobe.experiments.runner.ConditionRunner` (``options`` holding the
            means / resample sources it computed once, so every worker ablates with them).
        checkpoint: keep each judged condition (``{"correct": {name: [N] bool}}``); the
            conditions it already holds are not judged again (``meta["conditions_resumed"]``).
            Finished (removed) by the caller once the result is saved or returned.
        Other arguments: as :func:`ray_scan`.

    Returns:
        ``({name: [N] bool}, distributed meta)``.
    """
    from tqdm.auto import tqdm

    ray = import_ray()
    pool, own_pool = pool_for(pool, model_name, num_workers=num_workers, address=address,
                              load_options=load_options, cpus_per_worker=cpus_per_worker,
                              gpus_per_worker=gpus_per_worker, max_retries=max_retries)
    try:
        task_ref = ray.put(task)
        setup_ref = ray.put({"method": method, "options": dict(options),
                             "all_heads": [tuple(h) for h in all_heads],
                             "batch_size": batch_size})
        state = checkpoint.load() if checkpoint is not None else None
        names = {name for name, _ in conditions}
        correct: dict[str, Any] = {name: torch.as_tensor(value).numpy().astype(bool)
                                   for name, value in dict((state or {}).get("correct", {})).items()
                                   if name in names}
        resumed = [name for name, _ in conditions if name in correct]
        todo = [condition for condition in conditions if condition[0] not in correct]
        pids: set[int] = set()
        bar = tqdm(total=len(conditions), initial=len(resumed), desc=f"ray ablate ({method})",
                   disable=not progress, leave=False)

        def on_done(condition: tuple[str, Any], out: dict[str, Any]) -> None:
            correct[out["name"]] = out["correct"]
            pids.add(int(out["pid"]))
            if checkpoint is not None:
                checkpoint.save({"correct": {name: torch.as_tensor(value)
                                             for name, value in correct.items()}},
                                progress=f"{len(correct)} of {len(conditions)} conditions")
            bar.update(1)

        try:
            collect(pool, todo,
                    lambda actor, c: actor.judge.remote(task_ref, c[0], c[1], setup_ref),
                    on_done, lambda c: f"condition {c[0]}")
        finally:
            bar.close()
        meta = {"backend": "ray", "address": address or "local", "workers": pool.num_workers,
                "conditions": len(conditions), "conditions_run": [c[0] for c in todo],
                "conditions_resumed": resumed, "worker_pids": sorted(pids)}
        return correct, meta
    finally:
        if own_pool:
            pool.close()


def ray_conditions_judge(model_name: str, **ray_options: Any) -> Callable[..., Any]:
    """The ``judge=`` of :func:`headprobe.experiments.ablation.ablation_experiment` that judges
    its conditions on Ray workers: :func:`ray_judge` with ``model_name`` (the name the model
    was loaded from) and ``ray_options`` (``pool`` or ``address`` / ``num_workers`` /
    ``load_options``, ``cpus_per_worker``, ``gpus_per_worker``, ``max_retries``) bound."""
    return functools.partial(ray_judge, model_name, **ray_options)
