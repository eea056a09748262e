"""Tasks: small protocols (prompts + how to judge an output) for causal experiments.

One module per task; :data:`TASK_MODULES` maps names to modules, each defining
``make_task(**options) -> Task``. Adding a task is one file and one line.
"""

from __future__ import annotations

import importlib
from typing import Any

from headprobe.tasks.base import Task, TaskItem

TASK_MODULES: dict[str, str] = {
    "facts": "headprobe.tasks.facts",
    "harmful_refusal": "headprobe.tasks.harmful_refusal",
    "harmless_answer": "headprobe.tasks.harmless_answer",
    "induction_copy": "headprobe.tasks.induction_copy",
    "ioi": "headprobe.tasks.ioi",
    "knowledge_conflict": "headprobe.tasks.knowledge_conflict",
    "bracket_copy": "headprobe.tasks.bracket_copy",
    "niah": "headprobe.tasks.niah",
    "ocr_read": "headprobe.tasks.ocr_read",
    "successor_increment": "headprobe.tasks.successor_increment",
    "temporal_facts": "headprobe.tasks.temporal_facts",
}


def list_tasks() -> list[str]:
    return list(TASK_MODULES)


def get_task(name: str, **options: Any) -> Task:
    """Build the task registered as ``name``."""
    from headprobe.errors import UnknownTaskError

    if name not in TASK_MODULES:
        known = ", ".join(TASK_MODULES) or "none"
        raise UnknownTaskError(f"unknown task {name!r}; registered tasks: {known}")
    return importlib.import_module(TASK_MODULES[name]).make_task(**options)


__all__ = ["TASK_MODULES", "Task", "TaskItem", "get_task", "list_tasks"]
