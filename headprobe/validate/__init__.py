"""``headprobe validate``: how well each scorer finds heads of known function.

:mod:`~headprobe.validate.cases` collects the ground-truth cases through the registry (head
types' ``ground_truth``, the generic scorers' planted cases, the hand-set examples);
:mod:`~headprobe.validate.metrics` computes AUROC, precision and recall at the threshold,
top-k precision and the precision-recall curve of one scored grid;
:mod:`~headprobe.validate.run` runs the cases (resumable) into one table;
:mod:`~headprobe.validate.store` keeps each finished case and the table on disk;
:mod:`~headprobe.validate.report` draws the figures and the HTML page;
:mod:`~headprobe.validate.command` is the ``headprobe validate`` subcommand.
"""

from __future__ import annotations

from headprobe.validate.cases import collect_cases, example_case, example_cases, select_cases
from headprobe.validate.metrics import Metrics, score_metrics
from headprobe.validate.run import COLUMNS, validate
from headprobe.validate.store import load_validation

__all__ = ["COLUMNS", "Metrics", "collect_cases", "example_case", "example_cases",
           "load_validation", "score_metrics", "select_cases", "validate"]
