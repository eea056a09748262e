"""Shared data preparation of the causal-scan scorers (activation patching, ablation scans,
attribution patching): a task, its single-token answers and, for patching, prompt pairs.

Not a scorer itself; the scorers are :mod:`headprobe.scorers.activation_patching`,
:mod:`headprobe.scorers.ablation_scan` and :mod:`headprobe.scorers.attribution_patching`.
"""

from __future__ import annotations

from typing import Any, Literal

from headprobe.arch import ModelSpec
from headprobe.errors import TaskError
from headprobe.inputs import fingerprint
from headprobe.scorers.base import ScorerData
from headprobe.tasks.base import Task
from headprobe.tasks.build import build_task as build_registered_task
from headprobe.tasks.pairs import prepare_scan_data, task_items

TASK_HELP = "registered task of the default data (headprobe.tasks), built with n and seed"
PROMPTS = ("None (the registered task named by the task parameter), a task name, a Task, or a "
           "list of TaskItem (prompt, single-token answer and distractor{corrupt})")
Engine = Literal["auto", "fast", "loop"]
ENGINE_HELP = "'auto' (fast scan where supported), 'fast' or 'loop' (one pass per head)"


def task_prompts(*, need_corrupt: bool) -> str:
    """What a task scan's ``prompts`` may be (for :attr:`Scorer.prompts`)."""
    return PROMPTS.format(corrupt=", and a corrupt prompt of equal token length"
                          if need_corrupt else "")


def build_task(model: Any, name: str, n: int, seed: int) -> Task:
    """The registered task ``name`` with ``n`` items and ``seed`` (and ``model``, for tasks
    that filter their words to single tokens of the model)."""
    return build_registered_task(name, model, n=n, seed=seed)


def prepare_task_scan(model: Any, spec: ModelSpec, prompts: Any, n: int, seed: int,
                      params: dict[str, Any], *, need_corrupt: bool) -> ScorerData:
    """``ScorerData`` whose payload is a :class:`Task`.

    ``prompts``: None (the registered task ``params["task"]``), a task name, a :class:`Task`
    or a list of :class:`~headprobe.tasks.base.TaskItem`. The fingerprint covers the tokenized
    prompts, corrupt prompts and answers.

    Raises:
        TaskError / PromptPairError: items without distractors (or corrupt prompts when
            ``need_corrupt``), answers that are not one token, pairs of unequal length.
    """
    if prompts is None or isinstance(prompts, str):
        name = params["task"] if prompts is None else prompts
        task = build_task(model, str(name), n, seed)
        description = f"task {task.name!r}, {len(task)} items, seed {seed}"
    elif isinstance(prompts, Task):
        task = prompts
        description = f"task {task.name!r}, {len(task)} items"
    else:
        items, _ = task_items(prompts)
        task = Task("items", items)
        description = f"{len(task)} user items"
    data = prepare_scan_data(model, task, need_corrupt=need_corrupt)
    if need_corrupt and data.corrupt is None:
        raise TaskError(f"task {task.name!r} has no corrupt prompts; patching needs them")
    digest = fingerprint([*data.clean, *(data.corrupt or []), data.answers, data.distractors])
    return ScorerData(task, digest, len(task), description)


def scan_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The result-specific keys of a scan's metadata worth keeping in the scorer's table."""
    keep = ("task", "mean_ld_clean", "mean_ld_corrupt", "mean_ld_base",
            "shared_prefix_lengths", "alphas", "metric")
    out = {key: meta[key] for key in keep if key in meta}
    out["engine_params"] = dict(meta.get("params", {}))
    return out
