"""Temporal knowledge editing through heads: add another year's head output and see whether the
recalled fact becomes that year's.

Park et al. 2025, "Does Time Have Its Place? Temporal Heads: Where Language Models Recall
Time-specific Information" edit a time-conditioned fact by adding, to each temporal head, ``c``
times that head's attention value activation taken from a prompt with another year
(``c`` = 1..3). Here, for each item of a temporal task (clean prompt at year ``y``, corrupt
prompt at year ``y'``, distractor = the answer at ``y'``)::

    z_h(target, last) <- z_h(target, last) + c * z_h(source, last)

where ``z_h`` [d_head] is head ``h``'s attention output before ``W_O`` (``z_h = A_h V``, the
attention-weighted value activation at the query position), ``source`` the prompt at ``y'``
and ``last`` the final prompt token (:func:`headprobe.interventions.add_to_output` at that
absolute position). The edit *succeeds* when the greedy next token becomes the first token of
the answer at ``y'``. Rates get a 95% percentile bootstrap interval over items; the same edit
on ``n_random`` random head sets of the same size (same layers) is the control.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from headprobe.answers import first_token_id
from headprobe.errors import InterventionError, TaskError
from headprobe.experiments.ablation import ExperimentResult
from headprobe.experiments.controls import RandomFrom, format_heads, random_head_sets
from headprobe.experiments.runner import experiment_meta
from headprobe.experiments.stats import bootstrap_indices, percentile_interval
from headprobe.interventions import add_to_output, normalize_heads
from headprobe.models import describe_model
from headprobe.provenance import Timer
from headprobe.runtime.hooks import attached, capture, model_device
from headprobe.tasks.base import Task, TaskItem
from headprobe.types import Head

REFERENCE = ("Park et al. 2025, 'Does Time Have Its Place? Temporal Heads: Where Language "
             "Models Recall Time-specific Information' (temporal knowledge editing)")


def _tokens(model: Any, text: str) -> torch.Tensor:
    return model.to_tokens(text, prepend_bos=True, truncate=False).to(model_device(model))


def source_outputs(model: Any, prompt: str, heads: Sequence[Head]) -> dict[Head, torch.Tensor]:
    """``{(layer, head): z_h}`` [d_head] at the last token of ``prompt`` (one forward pass)."""
    spec = describe_model(model)
    names = sorted({spec.hooks.at("z", layer) for layer, _ in heads})
    with torch.no_grad(), capture(model, names) as seen:
        model(_tokens(model, prompt))
    return {(layer, head): seen[spec.hooks.at("z", layer)][0, -1, head].float()
            for layer, head in heads}


def edit_hooks(model: Any, values: dict[Head, torch.Tensor], coefficient: float,
               position: int) -> list[Any]:
    """``add_to_output`` hooks adding ``coefficient * values[h]`` to each head's ``z`` at
    absolute ``position``."""
    hooks: list[Any] = []
    for head, vector in values.items():
        hooks += add_to_output(model, [head], vector, coefficient=coefficient,
                               positions=[position])
    return hooks


def edited_next_token(model: Any, item: TaskItem, heads: Sequence[Head], coefficient: float,
                      values: dict[Head, torch.Tensor] | None = None) -> int:
    """The greedy next token of ``item.prompt`` with the edit applied (``values``: the source
    outputs of ``item.corrupt_prompt``, computed when not given)."""
    if item.corrupt_prompt is None:
        raise TaskError(f"item {item.prompt!r} has no corrupt_prompt (the other year's prompt)")
    if values is None:
        values = source_outputs(model, str(item.corrupt_prompt), heads)
    tokens = _tokens(model, str(item.prompt))
    hooks = edit_hooks(model, {h: values[h] for h in heads}, coefficient,
                       int(tokens.shape[-1]) - 1) if coefficient != 0 else []
    with torch.no_grad(), attached(model, hooks):
        logits = model(tokens)
    return int(logits[0, -1].argmax())


def temporal_edit(
    model: Any,
    task: Task,
    heads: Sequence[Sequence[int]],
    *,
    coefficients: Sequence[float] = (1.0, 2.0, 3.0),
    n_random: int = 5,
    seed: int = 0,
    random_from: RandomFrom = "same_layers",
    n_bootstrap: int = 1000,
    progress: bool = True,
) -> ExperimentResult:
    """Edit every item of ``task`` through ``heads`` (and random head sets) at each coefficient.

    Returns:
        :class:`~headprobe.experiments.ExperimentResult` (name ``temporal_edit``) whose table
        has one row per (condition, coefficient): ``condition`` (``target``, ``random_i``),
        ``heads``, ``coefficient``, ``flip_rate`` (next token == the other year's answer) with
        ``flip_ci_low`` / ``flip_ci_high``, ``changed_rate`` (next token != the answer),
        ``n``. Coefficient 0 (no edit) is the baseline row.
    """
    items = [item for item in task.items
             if item.corrupt_prompt is not None and item.distractor is not None]
    if not items:
        raise TaskError(f"task {task.name!r}: no item has a corrupt prompt and a distractor")
    if not coefficients:
        raise InterventionError("give at least one coefficient")
    spec = describe_model(model)
    target = normalize_heads(spec, heads)
    rng = np.random.default_rng(seed)
    sets = [("target", target)] + [
        (f"random_{i}", s) for i, s in enumerate(
            random_head_sets(spec, target, n_random, random_from=random_from, rng=rng))]
    timer = Timer()
    answers = [first_token_id(model, item.answer) for item in items]
    others = [first_token_id(model, str(item.distractor)) for item in items]
    every = sorted({h for _, s in sets for h in s})
    coefs = [0.0, *[float(c) for c in coefficients if float(c) != 0.0]]
    flips: dict[tuple[str, float], np.ndarray] = {}
    changed: dict[tuple[str, float], np.ndarray] = {}
    bar = tqdm(total=len(items), desc="temporal edit", disable=not progress, leave=False)
    try:
        for index, item in enumerate(items):
            values = source_outputs(model, str(item.corrupt_prompt), every)
            base = edited_next_token(model, item, target, 0.0, values)
            for name, head_set in sets:
                for c in coefs:
                    top = base if c == 0.0 else edited_next_token(model, item, head_set, c,
                                                                  values)
                    key = ("baseline" if c == 0.0 else name, c)
                    flips.setdefault(key, np.zeros(len(items), bool))[index] = top == others[index]
                    changed.setdefault(key, np.zeros(len(items), bool))[index] = \
                        top != answers[index]
            bar.update(1)
    finally:
        bar.close()
    timer.lap("edit")
    boot = bootstrap_indices(len(items), n_bootstrap, seed) if n_bootstrap else None
    heads_of = dict(sets) | {"baseline": []}
    rows = []
    for (name, c), flip in flips.items():
        low, high = percentile_interval(flip.astype(float)[boot].mean(1)) if boot is not None \
            else (float("nan"), float("nan"))
        rows.append({"condition": name, "heads": format_heads(heads_of[name]), "coefficient": c,
                     "flip_rate": float(flip.mean()), "flip_ci_low": low, "flip_ci_high": high,
                     "changed_rate": float(changed[(name, c)].mean()), "n": len(items)})
    table = pd.DataFrame(rows)
    summary = _summary(table)
    meta = experiment_meta(
        model, spec, task, name="temporal_edit",
        params={"heads": format_heads(target), "coefficients": coefs[1:], "n_random": n_random,
                "random_from": random_from, "n_bootstrap": n_bootstrap},
        seed=seed, timer=timer, description=f"add c x another year's z of {format_heads(target)}"
                                            f" vs {n_random} random sets on {task.name}",
        random_sets=[format_heads(s) for _, s in sets[1:]], reference=REFERENCE)
    return ExperimentResult(table, edit_figure(table, spec.name), summary, meta,
                            {f"{n}@{c}": v for (n, c), v in flips.items()}, name="temporal_edit")


def _summary(table: pd.DataFrame) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c, rows in table[table["condition"] != "baseline"].groupby("coefficient"):
        target = rows[rows["condition"] == "target"].iloc[0]
        randoms = rows[rows["condition"].str.startswith("random_")]["flip_rate"]
        out[f"c={c:g}"] = {"target_flip_rate": float(target["flip_rate"]),
                           "target_flip_ci": [float(target["flip_ci_low"]),
                                              float(target["flip_ci_high"])],
                           "mean_random_flip_rate": float(randoms.mean()) if len(randoms)
                           else None}
    base = table[table["condition"] == "baseline"]
    out["baseline_flip_rate"] = float(base["flip_rate"].iloc[0]) if len(base) else None
    return out


def edit_figure(table: pd.DataFrame, model_name: str) -> Any:
    """Flip rate vs coefficient, target against random sets (plotly, never shown)."""
    import plotly.graph_objects as go

    figure = go.Figure()
    for name, rows in table[table["condition"] != "baseline"].groupby("condition"):
        target = name == "target"
        figure.add_trace(go.Scatter(
            x=rows["coefficient"], y=rows["flip_rate"], name=str(name), mode="lines+markers",
            line={"color": "#e45756" if target else "#9d9d9d", "width": 3 if target else 1},
            error_y={"type": "data", "symmetric": False,
                     "array": rows["flip_ci_high"] - rows["flip_rate"],
                     "arrayminus": rows["flip_rate"] - rows["flip_ci_low"]} if target else None))
    figure.update_layout(title=f"temporal edit — {model_name}", xaxis_title="coefficient",
                         yaxis_title="share of answers turned to the other year's",
                         yaxis_range=[0, 1.05])
    return figure
