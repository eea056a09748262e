"""Memory heads and context heads: each head's push toward the memorised or the in-context answer.

Method (Jin et al. 2024, "Cutting Off the Head Ends the Conflict: A Mechanism for Interpreting
and Mitigating Knowledge Conflicts in Language Models" (PH3); Yu, Merullo & Pavlick 2023,
"Characterizing Mechanisms for Factual Recall in Language Models"; direct logit attribution
as in Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits").
On the conflict prompts of the ``knowledge_conflict`` task ("... the capital of France is
London. ... the capital of France is") every head gets two numbers, both signed so that

    **positive = memory head** (pushes toward the memorised answer, " Paris"),
    **negative = context head** (pushes toward the in-context answer, " London"):

- ``dla``: direct logit attribution of the head's output at the last position onto
  ``W_U[memory] - W_U[context]`` (the final norm's scale frozen, Gemma's post-attention norm
  applied; exact: the components sum to the measured logit difference, see
  :mod:`headprobe.scorers.dla`), mean over prompts. It is the head's total direct push.
- ``path``: path patching of the head to the logits (Wang et al. 2022; Goldowsky-Dill et al.
  2023; :func:`headprobe.patching.path.path_patch_senders` with receivers ``"end"``): the
  conflict run with this head's output replaced by its output on the no-conflict prompt (the
  same prompt whose context states the memorised answer; every other head frozen to its
  conflict value, MLPs recomputed unless ``freeze_mlps``), and

      path = LD(conflict) - LD(conflict, this head's output from the no-conflict run),
      LD = logit[memory] - logit[context],

  mean over prompts. It is the part of the head's effect that the conflicting context causes:
  a context head that copies " London" copies " Paris" on the no-conflict prompt, so patching
  raises LD and its ``path`` is negative; a head whose push toward the memorised answer grows
  when the context disagrees has a positive ``path``.

``score`` is ``path`` (PH3 ranks heads by path patching; ``score_by="dla"`` uses ``dla``),
``context_score = -score`` (so that ``HeadTable.heads(column="context_score")`` ranks context
heads first), and ``role`` is ``memory`` / ``context`` by the sign of ``score``. The metadata
hold the Spearman correlation between the ``dla`` and ``path`` rankings, the overlap of their
top-10 memory and context heads, the baseline logit differences and context / memory answer
rates, and the task's filter counts.

Cost: one forward for DLA and, for ``path``, one forward per head per batch (L x H x N / batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from headprobe.answers import single_token_id
from headprobe.arch import ModelSpec
from headprobe.errors import TaskError
from headprobe.inputs import encode_prompts, fingerprint
from headprobe.patching.engine import PatchingEngine
from headprobe.patching.path import path_patch_senders
from headprobe.scorers.base import Scorer, ScorerData, ScoreResult, ScorerParamError
from headprobe.scorers.dla import as_task, attribute_tokens
from headprobe.scorers.params import Params, param
from headprobe.tasks.base import Task

REFERENCE = ("Jin et al. 2024, Cutting Off the Head Ends the Conflict: A Mechanism for "
             "Interpreting and Mitigating Knowledge Conflicts in Language Models (PH3); Yu, "
             "Merullo & Pavlick 2023, Characterizing Mechanisms for Factual Recall in Language "
             "Models")

TOP_OVERLAP = 10


def conflict_answer_ids(model: Any, task: Task) -> tuple[torch.Tensor, torch.Tensor]:
    """[N] memory-answer ids and [N] context-answer ids of a knowledge-conflict task.

    Raises:
        TaskError: an item is not a conflict item (no ``memory_answer`` / ``context_answer``
            in its meta), has no corrupt prompt, or an answer is not a single token.
    """
    memory, context = [], []
    for index, item in enumerate(task.items):
        meta = item.meta
        if "memory_answer" not in meta or "context_answer" not in meta:
            raise TaskError(f"item {index} ({item.prompt!r}) is not a knowledge-conflict item: "
                            "its meta needs memory_answer and context_answer (build it with "
                            "headprobe.heads.conflict.knowledge_conflict)")
        if item.corrupt_prompt is None:
            raise TaskError(f"item {index} ({item.prompt!r}) has no corrupt (no-conflict) "
                            "prompt; path patching needs one")
        memory.append(single_token_id(model, meta["memory_answer"],
                                      what=f"item {index} memory answer"))
        context.append(single_token_id(model, meta["context_answer"],
                                       what=f"item {index} context answer"))
    return torch.tensor(memory, dtype=torch.long), torch.tensor(context, dtype=torch.long)


@dataclass(frozen=True)
class ConflictParams(Params):
    """Parameters of :data:`SCORER` (``conflict``)."""

    score_by: Literal["path", "dla"] = param("path", "'path' (default, PH3) or 'dla': which "
                                             "column is the score")
    path: bool = param(True, "run path patching (one forward per head per batch); False: DLA "
                       "only")
    freeze_mlps: bool = param(False, "path patching: freeze MLPs to the conflict run (direct "
                              "paths only)")
    split: Literal["all", "a", "b"] = param("all", "default task: 'all' facts, or the fixed half "
                                            "'a' or 'b' (find heads on one half, test them on "
                                            "the other)")
    relations: str | tuple[str, ...] = param("all", "default task: relation name(s) or 'all'")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.score_by == "path" and not self.path:
            raise ScorerParamError("score_by='path' needs path=True (or use score_by='dla')")


def _prepare(model: Any, spec: ModelSpec, prompts: Any, n: int, seed: int,
             params: dict[str, Any]) -> ScorerData:
    if prompts is None:
        from headprobe.heads.conflict.knowledge_conflict import make_task

        task = make_task(target="context", n=n, seed=seed, model=model, split=params["split"],
                         relations=params["relations"])
        description = (f"knowledge_conflict task ({params['relations']}, split "
                       f"{params['split']}), {len(task)} items, seed {seed}")
    else:
        task = as_task(prompts)
        description = f"task {task.name!r}, {len(task)} items"
    memory, context = conflict_answer_ids(model, task)
    clean = encode_prompts(model, task.prompts, spec)
    corrupt = encode_prompts(model, [item.corrupt_prompt for item in task.items], spec)
    digest = fingerprint([*clean, *corrupt, memory, context])
    return ScorerData((task, clean, corrupt, memory, context), digest, len(task), description)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 3:
        return float("nan")
    return float(spearmanr(a[keep], b[keep]).statistic)


def _top(grid: np.ndarray, k: int, sign: int) -> list[tuple[int, int]]:
    flat = np.where(np.isfinite(grid), sign * grid, -np.inf).ravel()
    order = np.argsort(-flat, kind="stable")[:k]
    width = grid.shape[1]
    return [(int(i // width), int(i % width)) for i in order if np.isfinite(flat[i])]


def ranking_agreement(dla: np.ndarray, path: np.ndarray, k: int = TOP_OVERLAP
                      ) -> dict[str, Any]:
    """Agreement of two [L, H] head scores: Spearman correlation over heads, and the share of
    the top-``k`` memory (most positive) and context (most negative) heads they share."""
    out: dict[str, Any] = {"spearman_dla_path": _spearman(dla.ravel(), path.ravel()),
                           "top_k": k}
    for role, sign in (("memory", 1), ("context", -1)):
        a, b = set(_top(dla, k, sign)), set(_top(path, k, sign))
        out[f"top_{role}_overlap"] = len(a & b) / k
    return out


def _compute(model: Any, spec: ModelSpec, data: ScorerData, params: dict[str, Any],
             batch_size: int, progress: bool) -> ScoreResult:
    task, clean, _corrupt, memory, context = data.payload
    attribution = attribute_tokens(model, spec, clean, memory, context, prompts=task.prompts,
                                   batch_size=batch_size, progress=progress)
    dla = attribution.heads.mean(0).numpy()  # [L, H]
    path = np.full_like(dla, np.nan)
    meta: dict[str, Any] = {
        "sign": "positive = memory head (pushes logit[memory] - logit[context] up), negative = "
                "context head",
        "dla_decomposition_error": attribution.summary()["max_abs_error"],
        "conflict_logit_diff": float(attribution.measured.mean()),
        "task_meta": {k: v for k, v in task.meta.items() if k in ("counts", "split", "seed")},
    }
    engine = None
    if params["path"]:
        engine = PatchingEngine(model, task.prompts,
                                [item.corrupt_prompt for item in task.items], memory, context,
                                batch_size=batch_size)
        table = path_patch_senders(engine, "end", metric="logit_diff", direction="noising",
                                   freeze_mlps=params["freeze_mlps"], progress=progress)
        path = -table.pivot("effect").to_numpy(dtype=np.float64)
        baseline = engine.baseline("logit_diff")
        meta["no_conflict_logit_diff"] = baseline["corrupt"]
        meta["path_timings"] = table.meta.get("timings")
        meta.update(ranking_agreement(dla, path))
    final = engine.clean_final if engine is not None else None
    if final is not None:
        predicted = final.argmax(-1).cpu()
        meta["context_answer_rate"] = float((predicted == context).double().mean())
        meta["memory_answer_rate"] = float((predicted == memory).double().mean())
    score = path if params["score_by"] == "path" else dla
    role = np.where(score > 0, "memory", np.where(score < 0, "context", "none"))
    meta["score"] = params["score_by"]
    return ScoreResult(
        score=torch.from_numpy(score),
        columns={"dla": dla, "path": path, "context_score": -score, "role": role,
                 "dla_std": attribution.heads.std(0, unbiased=False).numpy()},
        meta=meta,
    )


SCORER = Scorer(
    name="conflict",
    description="memory (+) vs context (-) heads on counterfactual-context prompts: DLA onto "
                "W_U[memory] - W_U[context] and path patching to the logits (conflict vs "
                "no-conflict)",
    reference=REFERENCE,
    prepare=_prepare,
    compute=_compute,
    prompts="None (the knowledge_conflict task, context target, of the split and relations "
            "parameters), a Task, or a list of TaskItem with corrupt (no-conflict) prompts and "
            "meta memory_answer / context_answer",
    params=ConflictParams,
    default_n=48,
    cheap=False,
    needs=frozenset({"pairs"}),
)
