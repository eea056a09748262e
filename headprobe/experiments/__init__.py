"""Causal experiments: does ablating a head set hurt a task more than random head sets do?

:func:`ablation_experiment` judges a :class:`~headprobe.tasks.base.Task` on the clean model,
with the target heads ablated and with random head sets of the same size ablated;
:func:`dose_response` does the same for the top-k heads of a
:class:`~headprobe.headtable.HeadTable` for several k.

Modules: :mod:`~headprobe.experiments.judging` (is an output right: next-token and
generation judges), :mod:`~headprobe.experiments.controls` (head syntax, random control
sets), :mod:`~headprobe.experiments.matching` (control sets matched on another per-head
score), :mod:`~headprobe.experiments.stats` (accuracy, paired bootstrap, summaries),
:mod:`~headprobe.experiments.runner` (conditions under one method, metadata),
:mod:`~headprobe.experiments.ablation` and :mod:`~headprobe.experiments.dose`.
"""

from __future__ import annotations

from headprobe.experiments.ablation import (
    ExperimentResult,
    ablation_experiment,
    ablation_figure,
    save_experiment,
)
from headprobe.experiments.controls import (
    RandomFrom,
    format_heads,
    parse_heads,
    random_head_sets,
)
from headprobe.experiments.dose import dose_figure, dose_response
from headprobe.experiments.judging import (
    answer_first_tokens,
    check_task,
    greedy_continuations,
    judge_task,
)
from headprobe.experiments.matching import MatchedSet, MatchOn, matched_head_sets
from headprobe.experiments.stats import bootstrap_indices, condition_row

__all__ = [
    "ExperimentResult",
    "MatchOn",
    "MatchedSet",
    "RandomFrom",
    "ablation_experiment",
    "ablation_figure",
    "answer_first_tokens",
    "bootstrap_indices",
    "check_task",
    "condition_row",
    "dose_figure",
    "dose_response",
    "format_heads",
    "greedy_continuations",
    "judge_task",
    "matched_head_sets",
    "parse_heads",
    "random_head_sets",
    "save_experiment",
]
