"""The Ray workers of a distributed scan: :func:`import_ray`, the actor pool
(:class:`RayScanPool`) and :func:`collect`, which streams work items over its free workers.

Ray is imported only inside the functions here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from headprobe.distributed.worker import ScanWorker
from headprobe.errors import RayNotInstalledError, ShardFailedError, UsageError

INSTALL_HINT = "pip install 'headprobe[ray]'"


def import_ray() -> Any:
    """The ``ray`` module, or :class:`RayNotInstalledError` saying how to install it."""
    try:
        import ray
    except ImportError as error:
        raise RayNotInstalledError(
            f"Ray is not installed; distributed scans need it: {INSTALL_HINT}") from error
    return ray


class RayScanPool:
    """``num_workers`` Ray actors, each holding one loaded copy of ``model_name``; reusable
    across scans (a context manager; :meth:`close` kills the actors and shuts down a Ray
    instance the pool started itself).

    Args:
        model_name: the model each worker loads (:func:`headprobe.catalogue.load_model`).
        num_workers: actors (one model each).
        address: Ray cluster address (``"auto"``, ``"ray://host:10001"``...); ``None``: the
            running Ray instance of this process if any, else a new local one.
        load_options: ``load_model`` keywords (``device``, ``dtype``).
        cpus_per_worker: Ray CPUs per actor; also its torch thread count.
        gpus_per_worker: Ray GPUs per actor (default 1 when ``load_options["device"]`` is a
            CUDA device, else 0); Ray sets ``CUDA_VISIBLE_DEVICES`` so ``"cuda"`` is the
            actor's own GPU.
        max_retries: restarts of a dead actor and retries of its shard (Ray's
            ``max_restarts`` and ``max_task_retries``).
    """

    def __init__(self, model_name: str, *, num_workers: int = 2, address: str | None = None,
                 load_options: Mapping[str, Any] | None = None, cpus_per_worker: float = 1,
                 gpus_per_worker: float | None = None, max_retries: int = 2) -> None:
        if num_workers < 1:
            raise UsageError(f"num_workers must be >= 1, got {num_workers}")
        ray = import_ray()
        self.model_name = model_name
        self.load_options = {key: value for key, value in dict(load_options or {}).items()
                             if value is not None}
        self.address = address
        self.started_ray = False
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
            self.started_ray = True
        device = str(self.load_options.get("device") or "")
        if gpus_per_worker is None:
            gpus_per_worker = 1 if device.startswith("cuda") else 0
        remote = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker,
                            max_restarts=max_retries, max_task_retries=max_retries)(ScanWorker)
        threads = max(1, int(cpus_per_worker))
        self.actors = [remote.remote(model_name, self.load_options, threads)
                       for _ in range(num_workers)]
        self.num_workers = num_workers

    def info(self) -> list[dict[str, Any]]:
        """Each worker's :meth:`ScanWorker.info` (pid, threads, shards run, spec)."""
        ray = import_ray()
        return ray.get([actor.info.remote() for actor in self.actors])

    def close(self) -> None:
        """Kill the actors; shut Ray down if this pool started it."""
        ray = import_ray()
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self.started_ray and ray.is_initialized():
            ray.shutdown()

    def __enter__(self) -> RayScanPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pool_for(pool: RayScanPool | None, model_name: str, **options: Any
             ) -> tuple[RayScanPool, bool]:
    """``pool`` (checked to hold ``model_name``), or a new :class:`RayScanPool` of
    ``model_name`` with ``options``; and whether the caller made it (and must close it).

    Raises:
        UsageError: ``pool`` holds another model.
    """
    if pool is None:
        return RayScanPool(model_name, **options), True
    if pool.model_name != model_name:
        raise UsageError(f"the pool's workers hold {pool.model_name!r}, not {model_name!r}")
    return pool, False


def collect(pool: RayScanPool, todo: Sequence[Any], call: Callable[[Any, Any], Any],
             on_done: Callable[[Any, Any], None], describe: Callable[[Any], str]) -> None:
    """Run the work items ``todo`` on the pool, one per free worker (``call(actor, item)``
    returns the task's object ref), calling ``on_done(item, result)`` as each one finishes;
    after a failure no new item starts, the ones in flight finish, then
    :class:`ShardFailedError` (``describe(item)`` names the item)."""
    ray = import_ray()
    queue = deque(todo)
    inflight: dict[Any, tuple[Any, int]] = {}

    def submit(worker: int) -> None:
        item = queue.popleft()
        inflight[call(pool.actors[worker], item)] = (item, worker)

    for worker in range(min(len(pool.actors), len(queue))):
        submit(worker)
    failure: tuple[Any, BaseException] | None = None
    while inflight:
        ready, _ = ray.wait(list(inflight), num_returns=1)
        item, worker = inflight.pop(ready[0])
        try:
            out = ray.get(ready[0])
        except Exception as error:  # a task error, or an actor dead after its restarts
            failure = failure or (item, error)
            continue
        on_done(item, out)
        if failure is None and queue:
            submit(worker)
    if failure is not None:
        item, error = failure
        lines = str(error).strip().splitlines()
        raise ShardFailedError(
            f"{describe(item)} failed after its retries ({type(error).__name__}: "
            f"{lines[-1] if lines else ''}); the finished parts are checkpointed when a "
            "checkpoint_dir is given: run again to resume") from error
