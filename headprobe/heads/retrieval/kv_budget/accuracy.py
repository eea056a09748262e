"""Measuring a KV-budget plan: a task judged with its streaming heads really restricted.

:func:`plan_accuracy` restricts the plan's streaming kv heads to sink + recent window
(:func:`headprobe.interventions.window.streaming_attention`, DuoAttention's streaming heads,
Xiao et al. 2024) and compares the task's accuracy with as many random kv heads restricted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from headprobe.heads.retrieval.kv_budget.plan import KVBudgetError, KVBudgetPlan


@dataclass
class PlanAccuracy:
    """What :func:`plan_accuracy` returns.

    Attributes:
        table: one row per condition (``baseline``, ``plan``, ``random_0``, ...):
            ``condition``, ``heads`` (restricted kv heads as "L.G,..."), ``n_heads``,
            ``accuracy``, ``delta`` (vs baseline), ``ci_low`` / ``ci_high``, ``delta_ci_low`` /
            ``delta_ci_high`` (bootstrap 95%), ``n``.
        summary: ``baseline``, ``plan``, ``random_mean`` accuracies, ``n_streaming``,
            ``context_length`` and ``memory_saved`` there.
        correct: ``{condition: [N] bool}``.
    """

    table: pd.DataFrame
    summary: dict[str, Any]
    correct: dict[str, np.ndarray]


def plan_accuracy(
    model: Any,
    task: Any,
    plan: KVBudgetPlan,
    *,
    n_random: int = 5,
    seed: int = 0,
    batch_size: int = 8,
    n_bootstrap: int = 1000,
    context_length: int | None = None,
) -> PlanAccuracy:
    """Judge ``task`` with the plan's streaming kv heads restricted to sink + window
    (:func:`~headprobe.interventions.window.streaming_attention`) vs ``n_random`` random sets of
    as many kv heads (each a random plan with the same memory), and the clean model.

    Random sets are drawn uniformly from all kv heads of the model with a local
    ``numpy.random.default_rng(seed)`` (they may overlap the plan's heads: with most heads
    streaming, disjoint sets would not exist). A plan without streaming heads judges
    ``plan`` as the clean model and draws no random sets.

    Args:
        task: a :class:`~headprobe.tasks.base.Task` (e.g. ``niah``).
        context_length: where to report ``memory_saved`` (default: the longest prompt plus
            the task's ``max_new_tokens``).
    """
    from headprobe.experiments.judging import check_task, judge_task
    from headprobe.experiments.stats import bootstrap_indices, condition_row, no_bootstrap
    from headprobe.inputs import encode_prompts
    from headprobe.interventions.window import streaming_attention
    from headprobe.models import describe_model
    from headprobe.runtime.hooks import attached

    check_task(task)
    if n_random < 0:
        raise KVBudgetError(f"n_random must be >= 0, got {n_random}")
    spec = describe_model(model)
    if (plan.n_layers, plan.n_kv_heads) != (spec.n_layers, spec.n_kv_heads):
        raise KVBudgetError(
            f"the plan is for {plan.n_layers} layers x {plan.n_kv_heads} kv heads; the model "
            f"has {spec.n_layers} x {spec.n_kv_heads}")
    streaming = plan.streaming_heads()
    all_kv = [(layer, g) for layer in range(spec.n_layers) for g in range(spec.n_kv_heads)]
    rng = np.random.default_rng(seed)
    random_sets = [] if not streaming else [
        sorted(all_kv[i] for i in rng.choice(len(all_kv), size=len(streaming), replace=False))
        for _ in range(n_random)]

    def judge(heads: list[tuple[int, int]]) -> np.ndarray:
        if not heads:
            return judge_task(model, task, batch_size=batch_size)
        hooks = streaming_attention(model, heads, sink=plan.sink, window=plan.window)
        with attached(model, hooks):
            return judge_task(model, task, batch_size=batch_size)

    conditions = [("baseline", []), ("plan", streaming)]
    conditions += [(f"random_{i}", heads) for i, heads in enumerate(random_sets)]
    correct = {name: judge(heads) for name, heads in conditions}
    boot = bootstrap_indices(len(task), n_bootstrap, seed) if n_bootstrap else no_bootstrap()
    table = pd.DataFrame([condition_row(name, heads, correct[name], correct["baseline"], boot)
                          for name, heads in conditions])
    if context_length is None:
        longest = max(len(e) for e in encode_prompts(model, task.prompts, spec))
        context_length = longest + int(task.max_new_tokens)
    randoms = table[table["condition"].str.startswith("random_")]["accuracy"]
    summary = {
        "baseline": float(correct["baseline"].mean()), "plan": float(correct["plan"].mean()),
        "random_mean": float(randoms.mean()) if len(randoms) else None,
        "n_random": len(random_sets), "n_streaming": len(streaming), "n_kv_heads": plan.n_total,
        "sink": plan.sink, "window": plan.window, "context_length": int(context_length),
        "memory_saved": plan.memory_saved(int(context_length)), "n_items": len(task),
    }
    return PlanAccuracy(table, summary, correct)
