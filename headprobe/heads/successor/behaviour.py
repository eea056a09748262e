"""``successor_behaviour``: successor heads by what they do (Gould et al. 2023, "Successor Heads:
Recurring, Interpretable Attention Heads In The Wild"; the behavioural side).

The weights-only ``successor`` score reads a head's effective OV circuit; this scorer asks
which heads the model needs to *increment*. Every head is mean-ablated (``z`` set to its mean
over every real token of the task's prompts; Wang et al. 2022) on the three
``successor_increment`` kinds:

- ``increment`` ("Days: Monday, Tuesday," -> " Wednesday", distractor: the last item shown),
- ``repeat`` (the same lists, answer: the last item again, distractor: its successor),
- ``facts`` (single-token factual recall, unrelated to succession),

each scored as the normalized logit difference ``nld_<kind> = mean LD(ablated) / mean
LD(clean)`` with ``LD = logit[answer] - logit[distractor]`` (1 = no effect;
:mod:`headprobe.scorers.ablation_scan`), ``drop_<kind> = 1 - nld_<kind>``, and

    score = specific = drop_increment - max(0, drop_repeat, drop_facts)

the drop on incrementing that neither control shares (a head that breaks every task scores
low). It finds Gemma-3-270M's successor head L12H0, which the weights-only score misses
(0.085, near chance). Its data is the three tasks, built with ``n`` items each and ``seed``
(``prompts`` may instead give ``{kind: Task}`` for the three kinds); one all-head scan per
kind (:func:`headprobe.scorers.activation_patching.run_scan`: the fast scan where supported).

The table says which definition it uses: ``meta["definition"] == "behaviour"`` and
``meta["columns"]`` maps every column to its definition (the weights-only table says
``"weights"``). The recipe step ``successor_behaviour``
(:mod:`headprobe.heads.successor.steps`) compares this table with the weights-only one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from headprobe.arch import ModelSpec
from headprobe.errors import ScorerParamError
from headprobe.options import ScanOptions
from headprobe.scorers.activation_patching import run_scan
from headprobe.scorers.base import Scorer, ScorerData, ScoreResult
from headprobe.scorers.params import Params, param
from headprobe.scorers.task_scan import ENGINE_HELP, Engine, prepare_task_scan
from headprobe.tasks.base import Task
from headprobe.tasks.build import build_task

REFERENCE = ('Gould et al. 2023, "Successor Heads: Recurring, Interpretable Attention Heads '
             'In The Wild" (behavioural ranking); Wang et al. 2022 (mean ablation)')
TASK = "successor_increment"
CONTROLS = ("repeat", "facts")
BEHAVIOUR_TASKS = ("increment", *CONTROLS)
BEHAVIOUR_METRIC = "mean ablation, normalized logit diff; drop = 1 - nld"
SPECIFIC = "drop_increment - max(0, drop_repeat, drop_facts)"
DEFINITION = "behaviour"


def column_definitions(method: str = "mean") -> dict[str, str]:
    """``{column: definition}`` of a ``successor_behaviour`` table."""
    out = {"score": f"behaviour: specific = {SPECIFIC}"}
    for kind in BEHAVIOUR_TASKS:
        out[f"nld_{kind}"] = (f"behaviour: {method}-ablated mean LD / clean mean LD on "
                              f"{TASK} kind {kind!r} (1 = no effect)")
        out[f"drop_{kind}"] = f"behaviour: 1 - nld_{kind}"
    return out


@dataclass(frozen=True)
class SuccessorBehaviourParams(Params):
    """Parameters of :data:`SCORER` (``successor_behaviour``)."""

    method: Literal["mean", "zero"] = param("mean", "ablation of each head's z: 'mean' (its "
                                            "mean over the task's tokens) or 'zero'")
    sets: tuple[str, ...] | None = param(None, "ordinal sets of the increment and repeat "
                                         "prompts (None: the task's default sets)")
    engine: Engine = param("auto", ENGINE_HELP)
    heads_per_pass: int | None = param(None, "heads ablated in one batched pass of the fast "
                                       "scan (None: all)", ge=1)


def behaviour_grids(nld: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """From ``{kind: [L, H] nld}`` for the three :data:`BEHAVIOUR_TASKS`: ``nld_<kind>``,
    ``drop_<kind> = 1 - nld_<kind>`` and ``specific`` (:data:`SPECIFIC`), each [L, H]."""
    out: dict[str, np.ndarray] = {}
    for kind in BEHAVIOUR_TASKS:
        grid = np.asarray(nld[kind], dtype=np.float64)
        out[f"nld_{kind}"] = grid
        out[f"drop_{kind}"] = 1.0 - grid
    controls = np.maximum(np.maximum(out["drop_repeat"], out["drop_facts"]), 0.0)
    out["specific"] = out["drop_increment"] - controls
    return out


def _tasks(model: Any, prompts: Any, n: int, seed: int, params: dict[str, Any]
           ) -> dict[str, Task]:
    """The three tasks: built (``prompts`` None) or given as ``{kind: Task}``."""
    if prompts is None:
        sets = {} if params["sets"] is None else {"sets": list(params["sets"])}
        return {kind: build_task(TASK, model, kind=kind, n=n, seed=seed,
                                 **(sets if kind != "facts" else {}))
                for kind in BEHAVIOUR_TASKS}
    if (not isinstance(prompts, Mapping) or set(prompts) != set(BEHAVIOUR_TASKS)
            or not all(isinstance(t, Task) for t in prompts.values())):
        raise ScorerParamError(f"successor_behaviour: prompts must be None or {{kind: Task}} "
                               f"for the kinds {', '.join(BEHAVIOUR_TASKS)}")
    return {kind: prompts[kind] for kind in BEHAVIOUR_TASKS}


def _prepare(model: Any, spec: ModelSpec, prompts: Any, n: int, seed: int,
             params: dict[str, Any]) -> ScorerData:
    tasks = _tasks(model, prompts, n, seed, params)
    prepared = {kind: prepare_task_scan(model, spec, task, n, seed, {"task": TASK},
                                        need_corrupt=False)
                for kind, task in tasks.items()}
    digest = hashlib.sha256("|".join(
        f"{kind}:{data.fingerprint}" for kind, data in prepared.items()).encode()).hexdigest()
    description = "; ".join(f"{kind}: {data.description}" for kind, data in prepared.items())
    return ScorerData(tasks, digest[:16], sum(len(t) for t in tasks.values()), description)


def _compute(model: Any, spec: ModelSpec, data: ScorerData, params: dict[str, Any],
             batch_size: int, progress: bool) -> ScoreResult:
    options = ScanOptions(method=params["method"], metric="normalized_logit_diff",
                          direction="denoising", layers=None, batch_size=batch_size,
                          heads_per_pass=params["heads_per_pass"], progress=progress)
    nld: dict[str, np.ndarray] = {}
    clean: dict[str, float | None] = {}
    for kind, task in data.payload.items():
        table = run_scan(model, task, spec, options, params["engine"])
        nld[kind] = table.pivot().sort_index().sort_index(axis=1).to_numpy()
        clean[kind] = table.meta.get("mean_ld_clean")
    grids = behaviour_grids(nld)
    specific = grids.pop("specific")
    flat = specific.flatten()
    best = int(np.nanargmax(flat))
    meta = {
        "definition": DEFINITION,
        "columns": column_definitions(params["method"]),
        "metric": BEHAVIOUR_METRIC,
        "score_definition": f"specific = {SPECIFIC}",
        "n_items": {kind: len(task) for kind, task in data.payload.items()},
        "mean_ld_clean": clean,
        "best_head": [best // spec.n_heads, best % spec.n_heads],
        "max_score": float(np.nanmax(flat)),
    }
    return ScoreResult(score=specific, columns=grids, meta=meta)


SCORER = Scorer(
    name="successor_behaviour",
    description="successor heads by behaviour: the drop on successor_increment 'increment' "
                "under mean ablation that the 'repeat' and 'facts' controls do not share",
    reference=REFERENCE,
    prepare=_prepare,
    compute=_compute,
    prompts="None (the successor_increment kinds increment, repeat and facts, n items each, "
            "built with seed) or {kind: Task} for those three kinds",
    params=SuccessorBehaviourParams,
    default_n=40,
    cheap=False,
)
