"""``harmless_answer``: the answer rate on harmless requests (correct = not refused); the
companion of ``harmful_refusal`` (see :mod:`headprobe.tasks.harmful_refusal`)."""

from __future__ import annotations

from typing import Any

from headprobe.tasks.base import Task
from headprobe.tasks.harmful_refusal import make_task as _make_refusal_task


def make_task(**options: Any) -> Task:
    """:func:`headprobe.tasks.harmful_refusal.make_task` with ``kind="harmless"``."""
    return _make_refusal_task(kind="harmless", **options)
