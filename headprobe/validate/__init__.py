"""``headprobe validate``: how well each scorer finds heads of known function.

:mod:`~headprobe.validate.cases` collects the ground-truth cases through the registry (head
types' ``ground_truth``, the generic scorers' planted cases, the hand-set examples);
:mod:`~headprobe.validate.metrics` computes AUROC, precision and recall at the threshold,
top-k precision and the precision-recall curve of one scored grid;
:mod:`~headprobe.validate.run` runs the cases (resumable) into one table;
:mod:`~headprobe.validate.store` keeps each finished case and the table on disk;
:mod:`~headprobe.validate.report` draws the figures and the HTML page;
:mod:`~headprobe.validate.command` is the ``headprobe validate`` subcommand.

The names below are imported when first used (PEP 562), so ``headprobe.cli`` can add the
subcommand without importing pandas or scipy.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "COLUMNS": "headprobe.validate.run:COLUMNS",
    "Metrics": "headprobe.validate.metrics:Metrics",
    "collect_cases": "headprobe.validate.cases:collect_cases",
    "example_case": "headprobe.validate.cases:example_case",
    "example_cases": "headprobe.validate.cases:example_cases",
    "load_validation": "headprobe.validate.store:load_validation",
    "score_metrics": "headprobe.validate.metrics:score_metrics",
    "select_cases": "headprobe.validate.cases:select_cases",
    "validate": "headprobe.validate.run:validate",
}


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'headprobe.validate' has no attribute {name!r}")
    module, _, attribute = _PUBLIC[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


__all__ = list(_PUBLIC)
