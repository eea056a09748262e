"""The scorer registry: name -> module. Adding a scorer is one file and one line here.

Scorer modules are imported only when a scorer is asked for, so importing headprobe runs
nothing. Each module defines ``SCORER``, a :class:`headprobe.scorers.base.Scorer`.
"""

from __future__ import annotations

import importlib
from typing import Any

from headprobe.errors import UnknownScorerError
from headprobe.headtable import HeadTable
from headprobe.scorers.base import Scorer

SCORER_MODULES: dict[str, str] = {
    "previous_token": "headprobe.scorers.previous_token",
    "duplicate_token": "headprobe.scorers.duplicate_token",
    "induction": "headprobe.scorers.induction",
    "sink": "headprobe.scorers.sink",
    "dla": "headprobe.scorers.dla",
    "activation_patching": "headprobe.scorers.activation_patching",
    "ablation_scan": "headprobe.scorers.ablation_scan",
    "attribution_patching": "headprobe.scorers.attribution_patching",
    "retrieval": "headprobe.scorers.retrieval",
    "ships": "headprobe.scorers.ships",
    "sahara": "headprobe.scorers.sahara",
    "successor": "headprobe.scorers.successor",
    "temporal": "headprobe.scorers.temporal",
    "conflict": "headprobe.scorers.conflict",
    "ocr": "headprobe.scorers.ocr",
}


def list_scorers() -> list[str]:
    """Names of every registered scorer."""
    return list(SCORER_MODULES)


def get_scorer(name: str) -> Scorer:
    """The scorer registered as ``name``; :class:`UnknownScorerError` if there is none."""
    if name not in SCORER_MODULES:
        known = ", ".join(SCORER_MODULES)
        raise UnknownScorerError(f"unknown scorer {name!r}; registered scorers: {known}")
    scorer = importlib.import_module(SCORER_MODULES[name]).SCORER
    if not isinstance(scorer, Scorer) or scorer.name != name:
        raise TypeError(f"{SCORER_MODULES[name]}.SCORER is not a Scorer named {name!r}")
    return scorer


def scan(model: Any, scorer: str, prompts: Any = None, **kwargs: Any) -> HeadTable:
    """Run the scorer ``scorer`` on ``model``; see :class:`Scorer` for the arguments."""
    return get_scorer(scorer)(model, prompts, **kwargs)
