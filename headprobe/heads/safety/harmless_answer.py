"""``harmless_answer``: the answer rate on harmless requests (correct = not refused); the
companion of ``harmful_refusal`` (see :mod:`headprobe.heads.safety.harmful_refusal`)."""

from __future__ import annotations

from typing import Any

from headprobe.heads.safety.harmful_refusal import make_task as _make_refusal_task
from headprobe.tasks.base import Task


def make_task(**options: Any) -> Task:
    """:func:`headprobe.heads.safety.harmful_refusal.make_task` with ``kind="harmless"``."""
    return _make_refusal_task(kind="harmless", **options)
