"""Tasks: small protocols (prompts + how to judge an output) for causal experiments.

The generic tasks (``facts``, ``ioi``) live here, one module each; head types declare their
own in their folder. Every task is found by name through :mod:`headprobe.registry`
(``make_task(**options) -> Task`` in each module); :func:`headprobe.tasks.build.build_task`
builds one sized to a model.
"""

from __future__ import annotations

from headprobe.registry import get_task, list_tasks, task_modules
from headprobe.tasks.base import Task, TaskItem

__all__ = ["Task", "TaskItem", "get_task", "list_tasks", "task_modules"]
