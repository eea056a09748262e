"""Causal experiments: does ablating a head set hurt a task more than random head sets do?

:func:`ablation_experiment` judges a :class:`~headprobe.tasks.base.Task` on the clean model
(``baseline``), with the target heads ablated (``target``) and with ``n_random`` random head
sets of the same size ablated (``random_0``...), using any method of
:data:`headprobe.interventions.METHODS`. :func:`dose_response` does the same for the top-k
heads of a :class:`~headprobe.headtable.HeadTable` for several k.

Judging (see :mod:`headprobe.tasks.base`):

- ``next_token``: greedy next token at the prompt's last position == the answer's first
  token. Prompts are right-padded into batches with an attention mask and position ids
  (:mod:`headprobe.inputs`), so a padded prompt computes what it computes alone.
- ``contains`` / ``function``: a greedy continuation of ``task.max_new_tokens`` tokens
  (a plain batched loop without KV cache, so every hook sees every step), then
  ``answer.strip() in continuation`` or ``judge_fn(continuation, item)``.

Statistics: accuracy is the share of prompts judged correct; its 95% interval is a
percentile bootstrap over prompts. ``delta`` = accuracy - baseline accuracy, with a *paired*
bootstrap interval (the same resampled prompts for the condition and the baseline). The same
bootstrap draws are used for every condition.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from headprobe.arch import ModelSpec
from headprobe.errors import InterventionError, TaskError
from headprobe.headtable import HeadTable, atomic_write, ensure_output_dir, write_json
from headprobe.inputs import fingerprint, iter_batches, tokenize_prompts
from headprobe.interventions import (
    Head,
    HookList,
    build_hooks,
    cache_resample_source,
    compute_head_means,
    get_method,
    normalize_heads,
)
from headprobe.metrics import final_logits
from headprobe.models import describe_model
from headprobe.runtime.hooks import attached, model_device
from headprobe.tasks.base import Task

RandomFrom = Literal["same_layers", "uniform"]


# ---------------------------------------------------------------------------------------------
# Judging


def format_heads(heads: Sequence[Head]) -> str:
    """``[(18, 6), (17, 3)] -> "17.3,18.6"`` (the CLI's --heads syntax)."""
    return ",".join(f"{layer}.{head}" for layer, head in sorted(heads))


def parse_heads(text: str) -> list[Head]:
    """``"18.6,17.3" -> [(18, 6), (17, 3)]``; :class:`InterventionError` on bad syntax."""
    heads = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        pieces = part.split(".")
        if len(pieces) != 2 or not all(p.lstrip("-").isdigit() for p in pieces):
            raise InterventionError(
                f"cannot read head {part!r}: write heads as LAYER.HEAD, e.g. 18.6,17.3")
        heads.append((int(pieces[0]), int(pieces[1])))
    if not heads:
        raise InterventionError("no heads given: write heads as LAYER.HEAD, e.g. 18.6,17.3")
    return heads


def _check_task(task: Task) -> None:
    if not isinstance(task, Task):
        raise TaskError(f"expected a headprobe Task, got {type(task).__name__}")
    if len(task.items) == 0:
        raise TaskError(f"task {task.name!r} has no prompts")


def judge_task(
    model: Any,
    task: Task,
    *,
    batch_size: int = 8,
    progress: bool = False,
    desc: str = "judging",
) -> np.ndarray:
    """Judge every prompt of ``task`` with the model as it is (hooks attached stay attached).

    Returns:
        [N] bool array, True where the model's output is correct.
    """
    _check_task(task)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    spec = describe_model(model)
    token_lists = tokenize_prompts(model, task.prompts, spec)
    if task.judge == "next_token":
        return _judge_next_token(model, spec, task, token_lists, batch_size, progress, desc)
    texts = greedy_continuations(model, token_lists, task.max_new_tokens, spec=spec,
                                 batch_size=batch_size, progress=progress, desc=desc)
    if task.judge == "contains":
        return np.array([item.answer.strip() in text for item, text in zip(task.items, texts,
                                                                             strict=True)])
    assert task.judge_fn is not None
    return np.array([bool(task.judge_fn(text, item))
                     for item, text in zip(task.items, texts, strict=True)])


def _first_answer_tokens(model: Any, task: Task) -> torch.Tensor:
    ids = []
    for index, item in enumerate(task.items):
        tokens = model.to_tokens(item.answer, prepend_bos=False)[0]
        if tokens.numel() == 0:
            raise TaskError(f"task {task.name!r}: item {index} has an empty answer")
        ids.append(int(tokens[0]))
    return torch.tensor(ids)


def _judge_next_token(model: Any, spec: ModelSpec, task: Task,
                      token_lists: list[torch.Tensor], batch_size: int, progress: bool,
                      desc: str) -> np.ndarray:
    answers = _first_answer_tokens(model, task)
    pad = spec.pad_token_id if spec.pad_token_id is not None else 0
    device = model_device(model)
    correct = np.zeros(len(token_lists), dtype=bool)
    batches = iter_batches(token_lists, batch_size, pad_token_id=pad, padding_side="right",
                           device=device)
    total = -(-len(token_lists) // batch_size)
    for batch in tqdm(batches, total=total, desc=desc, disable=not progress, leave=False):
        with torch.inference_mode():
            logits = model(batch.tokens, **batch.forward_kwargs())
        predicted = final_logits(logits, batch.last).argmax(-1).cpu()
        rows = batch.indices.cpu()
        correct[rows.numpy()] = (predicted == answers[rows]).numpy()
    return correct


def greedy_continuations(
    model: Any,
    token_lists: Sequence[torch.Tensor],
    max_new_tokens: int,
    *,
    spec: ModelSpec | None = None,
    batch_size: int = 8,
    progress: bool = False,
    desc: str = "generating",
) -> list[str]:
    """Greedy continuations (decoded text of the new tokens only), one per prompt.

    A batched loop without KV cache: each step runs the whole right-padded sequence
    (attention mask + position ids) and writes each row's argmax after its last real token.
    Attached hooks therefore act on every step.
    """
    spec = spec or describe_model(model)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    pad = spec.pad_token_id if spec.pad_token_id is not None else 0
    device = model_device(model)
    out: list[str] = [""] * len(token_lists)
    total = -(-len(token_lists) // batch_size)
    batches = iter_batches(token_lists, batch_size, pad_token_id=pad, padding_side="right",
                           device=device)
    for batch in tqdm(batches, total=total, desc=desc, disable=not progress, leave=False):
        size, width = batch.tokens.shape
        tokens = torch.full((size, width + max_new_tokens), pad, dtype=torch.long,
                            device=device)
        tokens[:, :width] = batch.tokens
        lengths = batch.lengths.clone().to(device)
        rows = torch.arange(size, device=device)
        generated = torch.zeros(size, max_new_tokens, dtype=torch.long)
        for step in range(max_new_tokens):
            current = int(lengths.max())
            mask = torch.arange(current, device=device)[None, :] < lengths[:, None]
            positions = (mask.long().cumsum(-1) - 1).clamp_min(0)
            with torch.inference_mode():
                logits = model(tokens[:, :current], attention_mask=mask.long(),
                               position_ids=positions)
            next_ids = logits[rows, lengths - 1].argmax(-1)
            tokens[rows, lengths] = next_ids
            generated[:, step] = next_ids.cpu()
            lengths = lengths + 1
        for row, index in enumerate(batch.indices.tolist()):
            out[index] = model.tokenizer.decode(generated[row].tolist(),
                                                skip_special_tokens=True)
    return out


# ---------------------------------------------------------------------------------------------
# Random head sets


def random_head_sets(
    spec: ModelSpec,
    target: Sequence[Head],
    n_sets: int,
    *,
    random_from: RandomFrom = "same_layers",
    rng: np.random.Generator,
) -> list[list[Head]]:
    """``n_sets`` random head sets of ``len(target)`` heads, disjoint from ``target``.

    ``same_layers``: as many heads in each layer as the target has there, drawn from that
    layer's other heads; when a layer has too few other heads, the rest is drawn from the
    other heads of layers ``min(target layers)..max(target layers)``. ``uniform``: any
    non-target head of the model.
    """
    targets = set(target)
    if random_from not in ("same_layers", "uniform"):
        raise InterventionError(
            f"random_from must be 'same_layers' or 'uniform', got {random_from!r}")
    others = [h for h in spec.all_heads() if h not in targets]
    if n_sets > 0 and len(others) < len(targets):
        raise InterventionError(
            f"cannot draw random sets of {len(targets)} heads disjoint from the target: the "
            f"model has only {len(others)} other heads")
    layers = sorted({layer for layer, _ in targets})
    in_range = [h for h in others if layers[0] <= h[0] <= layers[-1]]
    sets: list[list[Head]] = []
    for _ in range(n_sets):
        if random_from == "uniform":
            picks = rng.choice(len(others), size=len(targets), replace=False)
            sets.append(sorted(others[i] for i in picks))
            continue
        chosen: list[Head] = []
        short = 0
        for layer in layers:
            need = sum(1 for t in targets if t[0] == layer)
            pool = [h for h in others if h[0] == layer]
            take = min(need, len(pool))
            chosen += [pool[i] for i in rng.choice(len(pool), size=take, replace=False)]
            short += need - take
        if short:
            pool = [h for h in in_range if h not in chosen]
            if len(pool) < short:
                pool = [h for h in others if h not in chosen]
            chosen += [pool[i] for i in rng.choice(len(pool), size=short, replace=False)]
        sets.append(sorted(chosen))
    return sets


# ---------------------------------------------------------------------------------------------
# Statistics


def bootstrap_indices(n: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """[n_bootstrap, n] resampling indices from a local generator."""
    return np.random.default_rng(seed).integers(0, n, size=(n_bootstrap, n))


def _interval(values: np.ndarray) -> tuple[float, float]:
    if values.size == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def condition_row(condition: str, heads: Sequence[Head], correct: np.ndarray,
                  baseline: np.ndarray, boot: np.ndarray) -> dict[str, Any]:
    """One table row: accuracy with its bootstrap CI, delta with its paired bootstrap CI."""
    accuracy = float(correct.mean())
    delta = accuracy - float(baseline.mean())
    acc_boot = correct[boot].mean(1) if boot.size else np.array([])
    delta_boot = acc_boot - baseline[boot].mean(1) if boot.size else np.array([])
    ci_low, ci_high = _interval(acc_boot)
    d_low, d_high = _interval(delta_boot)
    return {
        "condition": condition,
        "heads": format_heads(heads),
        "n_heads": len(heads),
        "accuracy": accuracy,
        "delta": delta,
        "ci_low": ci_low,
        "ci_high": ci_high,
        "delta_ci_low": d_low,
        "delta_ci_high": d_high,
        "n": int(correct.size),
    }


# ---------------------------------------------------------------------------------------------
# Experiments


@dataclass
class ExperimentResult:
    """A table, a plotly figure (never shown), a summary and metadata.

    Attributes:
        table: tidy DataFrame, one row per condition (see :func:`ablation_experiment`).
        figure: plotly figure.
        summary: headline numbers.
        meta: model, task, method, seed... (written to ``meta.json``).
        correct: ``{condition: [N] bool}`` per-prompt judgements.
        name: file stem for :meth:`save`.
    """

    table: pd.DataFrame
    figure: Any
    summary: dict[str, Any]
    meta: dict[str, Any]
    correct: dict[str, np.ndarray] = field(default_factory=dict)
    name: str = "ablation"

    def save(self, directory: str | Path) -> Path:
        """Write ``<name>.csv``, ``<name>.html`` and ``meta.json`` (atomically) in ``directory``."""
        return save_experiment(self, directory)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.name})"]
        lines += [f"  {k}: {v}" for k, v in self.summary.items()]
        return "\n".join(lines)


def save_experiment(result: ExperimentResult, directory: str | Path) -> Path:
    """Write ``<name>.csv``, ``<name>.html`` (the figure) and ``meta.json`` into ``directory``."""
    folder = ensure_output_dir(directory)
    table = result.table.copy()
    table.attrs = {}
    atomic_write(folder / f"{result.name}.csv", lambda p: table.to_csv(p, index=False))
    figure = result.figure
    atomic_write(folder / f"{result.name}.html",
                 lambda p: figure.write_html(p, include_plotlyjs="cdn", full_html=True))
    write_json(folder / "meta.json", {**result.meta, "summary": result.summary})
    return folder


class _Runner:
    """Judges conditions with a method, sharing precomputed means / resample sources."""

    def __init__(self, model: Any, task: Task, method: str, options: dict[str, Any],
                 all_heads: Sequence[Head], batch_size: int) -> None:
        self.model, self.task, self.method = model, task, method
        self.batch_size = batch_size
        get_method(method)  # unknown method -> InterventionError before any work
        self.options = dict(options)
        union = sorted(set(all_heads))
        if method == "mean" and "means" not in self.options:
            reference = self.options.pop("reference", None) or task.prompts
            self.options["means"] = compute_head_means(model, union, reference,
                                                       batch_size=batch_size)
        if method == "resample" and "source" not in self.options:
            sources = self.options.pop("sources", None) or _default_sources(task)
            self.options["source"] = cache_resample_source(model, union, sources,
                                                           batch_size=batch_size)
        if method == "resample":
            self.options.setdefault("seed", 0)

    def hooks(self, heads: Sequence[Head]) -> HookList:
        return build_hooks(self.model, heads, self.method, **self.options)

    def judge(self, heads: Sequence[Head] | None) -> np.ndarray:
        context = (nullcontext() if heads is None
                   else attached(self.model, self.hooks(heads)))
        with context:
            return judge_task(self.model, self.task, batch_size=self.batch_size)


def _default_sources(task: Task) -> list[str]:
    """Resample sources: the corrupt prompts when every item has one, else the prompts."""
    corrupt = [item.corrupt_prompt for item in task.items]
    if all(c is not None for c in corrupt):
        return [c for c in corrupt if c is not None]
    return task.prompts


def _meta(model: Any, spec: ModelSpec, task: Task, **extra: Any) -> dict[str, Any]:
    from headprobe import __version__

    token_lists = tokenize_prompts(model, task.prompts, spec)
    return {
        "model": spec.name,
        "model_spec": spec.to_dict(),
        "task": task.name,
        "task_description": task.description,
        "task_meta": task.meta,
        "judge": task.judge,
        "n_prompts": len(task),
        "data_fingerprint": fingerprint(token_lists),
        "headprobe_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **extra,
    }


def _jsonable_options(options: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in options.items():
        if isinstance(value, int | float | str | bool) or value is None:
            out[key] = value
        else:
            out[key] = f"<{type(value).__name__}>"
    return out


@contextmanager
def _progress(total: int, progress: bool, desc: str) -> Iterator[Callable[[str], None]]:
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
    try:
        def step(label: str) -> None:
            bar.set_postfix_str(label)
            bar.update(1)

        yield step
    finally:
        bar.close()


def ablation_experiment(
    model: Any,
    task: Task,
    heads: Sequence[Sequence[int]],
    method: str = "zero",
    n_random: int = 10,
    seed: int = 0,
    random_from: RandomFrom = "same_layers",
    batch_size: int = 8,
    progress: bool = True,
    n_bootstrap: int = 1000,
    method_options: dict[str, Any] | None = None,
) -> ExperimentResult:
    """Ablate ``heads`` and ``n_random`` random head sets of the same size; judge ``task``.

    Args:
        model: a TransformerLens bridge.
        task: the :class:`Task` to judge.
        heads: target ``(layer, head)`` pairs.
        method: a name in :data:`headprobe.interventions.METHODS` (``zero``, ``mean``,
            ``resample``, ``uniform_attention``, ``scale_output``...). ``mean`` uses the task's
            prompts as reference and ``resample`` its corrupt prompts (else its prompts) as
            sources unless ``method_options`` says otherwise.
        n_random: random control sets (see :func:`random_head_sets`).
        seed: seeds the random sets, the bootstrap and resampling.
        random_from: ``same_layers`` or ``uniform``.
        n_bootstrap: bootstrap resamples for the 95% intervals (0: no intervals).
        method_options: extra options of the method (e.g. ``{"factor": 1e-5}``).

    Returns:
        :class:`ExperimentResult` whose table has one row per condition (``baseline``,
        ``target``, ``random_0``..): ``condition``, ``heads`` ("L.H,..."), ``n_heads``,
        ``accuracy``, ``delta`` (accuracy - baseline), ``ci_low`` / ``ci_high`` (accuracy
        95% CI), ``delta_ci_low`` / ``delta_ci_high`` (paired 95% CI of delta), ``n``.
        The summary holds the target delta, the mean random delta and the share of random
        sets whose delta is as low as the target's or lower.
    """
    _check_task(task)
    if n_random < 0:
        raise ValueError(f"n_random must be >= 0, got {n_random}")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    spec = describe_model(model)
    target = normalize_heads(spec, heads)
    rng = np.random.default_rng(seed)
    random_sets = random_head_sets(spec, target, n_random, random_from=random_from, rng=rng)
    started = time.perf_counter()
    options = dict(method_options or {})
    if method == "resample":
        options.setdefault("seed", seed)
    runner = _Runner(model, task, method, options,
                     [h for s in [target, *random_sets] for h in s], batch_size)
    conditions: list[tuple[str, list[Head] | None]] = [("baseline", None), ("target", target)]
    conditions += [(f"random_{i}", s) for i, s in enumerate(random_sets)]
    correct: dict[str, np.ndarray] = {}
    with _progress(len(conditions), progress, f"ablate ({method})") as step:
        for name, condition_heads in conditions:
            correct[name] = runner.judge(condition_heads)
            step(name)
    boot = bootstrap_indices(len(task), n_bootstrap, seed) if n_bootstrap else np.empty((0, 0))
    rows = [condition_row(name, h or [], correct[name], correct["baseline"], boot)
            for name, h in conditions]
    table = pd.DataFrame(rows)
    summary = _summary(table)
    meta = _meta(model, spec, task, experiment="ablation", method=method,
                 method_options=_jsonable_options(options), heads=format_heads(target),
                 n_random=n_random, random_from=random_from, seed=seed,
                 n_bootstrap=n_bootstrap, batch_size=batch_size,
                 random_sets=[format_heads(s) for s in random_sets],
                 timings_s={"total": round(time.perf_counter() - started, 3)})
    figure = _ablation_figure(table, title=f"{method} ablation on {task.name} — {spec.name}")
    return ExperimentResult(table, figure, summary, meta, correct, name="ablation")


def _summary(table: pd.DataFrame) -> dict[str, Any]:
    by = table.set_index("condition")
    random = table[table["condition"].str.startswith("random_")]
    target_delta = float(by.loc["target", "delta"])
    out: dict[str, Any] = {
        "n_prompts": int(by.loc["baseline", "n"]),
        "baseline_accuracy": float(by.loc["baseline", "accuracy"]),
        "target_accuracy": float(by.loc["target", "accuracy"]),
        "target_delta": target_delta,
        "target_delta_ci": [float(by.loc["target", "delta_ci_low"]),
                            float(by.loc["target", "delta_ci_high"])],
        "n_random": len(random),
    }
    if len(random):
        deltas = random["delta"].to_numpy()
        out["mean_random_delta"] = float(deltas.mean())
        out["std_random_delta"] = float(deltas.std(ddof=1)) if len(deltas) > 1 else 0.0
        out["share_random_as_low"] = float((deltas <= target_delta + 1e-12).mean())
    return out


def _ablation_figure(table: pd.DataFrame, title: str) -> Any:
    import plotly.graph_objects as go

    colors = ["#4c78a8" if c == "baseline" else "#e45756" if c == "target" else "#9d9d9d"
              for c in table["condition"]]
    figure = go.Figure(go.Bar(
        x=table["condition"],
        y=table["accuracy"],
        marker_color=colors,
        error_y={"type": "data", "symmetric": False,
                 "array": (table["ci_high"] - table["accuracy"]).fillna(0),
                 "arrayminus": (table["accuracy"] - table["ci_low"]).fillna(0)},
        customdata=table[["heads", "delta"]].to_numpy(),
        hovertemplate="%{x}<br>accuracy %{y:.3f}<br>delta %{customdata[1]:+.3f}"
                      "<br>heads %{customdata[0]}<extra></extra>",
    ))
    figure.update_layout(title=title, yaxis_title="accuracy", yaxis_range=[0, 1.05],
                         xaxis_title="condition")
    return figure


def dose_response(
    model: Any,
    task: Task,
    head_table: HeadTable | Sequence[Sequence[int]],
    ks: Sequence[int] = (1, 2, 4, 8),
    method: str = "zero",
    n_random: int = 5,
    seed: int = 0,
    random_from: RandomFrom = "same_layers",
    batch_size: int = 8,
    progress: bool = True,
    n_bootstrap: int = 1000,
    method_options: dict[str, Any] | None = None,
) -> ExperimentResult:
    """Accuracy as the top-k heads of ``head_table`` are ablated, vs random sets of k heads.

    Args:
        head_table: a :class:`HeadTable` (ranked by score) or an ordered list of heads.
        ks: the k values (each 1..number of ranked heads).
        Other arguments as in :func:`ablation_experiment`.

    Returns:
        :class:`ExperimentResult` (name ``dose_response``) whose table has columns ``k``,
        ``condition`` (``baseline``, ``top_k``, ``random_i``), ``heads``, ``n_heads``,
        ``accuracy``, ``delta``, ``ci_low``, ``ci_high``, ``delta_ci_low``,
        ``delta_ci_high``, ``n``; the baseline row has ``k = 0``. The figure plots accuracy
        against k for the top-k heads and the mean of the random sets (with their range).
    """
    _check_task(task)
    spec = describe_model(model)
    ranking = (head_table.heads() if isinstance(head_table, HeadTable)
               else [tuple(h) for h in head_table])
    ks = sorted({int(k) for k in ks})
    if not ks:
        raise InterventionError("ks is empty: give at least one k, e.g. ks=(1, 2, 4)")
    if ks[0] < 1 or ks[-1] > len(ranking):
        raise InterventionError(
            f"every k must lie in 1..{len(ranking)} (ranked heads); got {ks}")
    rng = np.random.default_rng(seed)
    plan: list[tuple[int, str, list[Head]]] = []
    for k in ks:
        target = normalize_heads(spec, ranking[:k])
        plan.append((k, "top_k", target))
        for i, heads in enumerate(random_head_sets(spec, target, n_random,
                                                   random_from=random_from, rng=rng)):
            plan.append((k, f"random_{i}", heads))
    options = dict(method_options or {})
    if method == "resample":
        options.setdefault("seed", seed)
    started = time.perf_counter()
    runner = _Runner(model, task, method, options, [h for _, _, s in plan for h in s],
                     batch_size)
    boot = bootstrap_indices(len(task), n_bootstrap, seed) if n_bootstrap else np.empty((0, 0))
    correct: dict[str, np.ndarray] = {}
    with _progress(len(plan) + 1, progress, f"dose-response ({method})") as step:
        baseline = runner.judge(None)
        correct["baseline"] = baseline
        step("baseline")
        rows = [{"k": 0, **condition_row("baseline", [], baseline, baseline, boot)}]
        for k, name, heads in plan:
            result = runner.judge(heads)
            correct[f"k{k}_{name}"] = result
            rows.append({"k": k, **condition_row(name, heads, result, baseline, boot)})
            step(f"k={k} {name}")
    table = pd.DataFrame(rows)
    top = table[table["condition"] == "top_k"]
    random = table[table["condition"].str.startswith("random_")]
    summary: dict[str, Any] = {
        "baseline_accuracy": float(baseline.mean()),
        "top_k_accuracy": {int(r.k): float(r.accuracy) for r in top.itertuples()},
        "mean_random_accuracy": {int(k): float(g["accuracy"].mean())
                                 for k, g in random.groupby("k")},
    }
    meta = _meta(model, spec, task, experiment="dose_response", method=method,
                 method_options=_jsonable_options(options), ks=ks, n_random=n_random,
                 random_from=random_from, seed=seed, n_bootstrap=n_bootstrap,
                 batch_size=batch_size, ranking=format_heads(ranking[:ks[-1]]),
                 timings_s={"total": round(time.perf_counter() - started, 3)})
    figure = _dose_figure(table, title=f"{method} dose-response on {task.name} — {spec.name}")
    return ExperimentResult(table, figure, summary, meta, correct, name="dose_response")


def _dose_figure(table: pd.DataFrame, title: str) -> Any:
    import plotly.graph_objects as go

    top = table[table["condition"] == "top_k"]
    random = table[table["condition"].str.startswith("random_")]
    baseline = float(table.loc[table["condition"] == "baseline", "accuracy"].iloc[0])
    figure = go.Figure()
    figure.add_trace(go.Scatter(
        x=top["k"], y=top["accuracy"], mode="lines+markers", name="top-k heads",
        error_y={"type": "data", "symmetric": False,
                 "array": (top["ci_high"] - top["accuracy"]).fillna(0),
                 "arrayminus": (top["accuracy"] - top["ci_low"]).fillna(0)},
        line={"color": "#e45756"}))
    if len(random):
        grouped = random.groupby("k")["accuracy"]
        stats = pd.DataFrame({"mean": grouped.mean(), "min": grouped.min(),
                              "max": grouped.max()}).reset_index()
        figure.add_trace(go.Scatter(
            x=stats["k"], y=stats["mean"], mode="lines+markers", name="random heads (mean)",
            error_y={"type": "data", "symmetric": False,
                     "array": stats["max"] - stats["mean"],
                     "arrayminus": stats["mean"] - stats["min"]},
            line={"color": "#9d9d9d"}))
    figure.add_hline(y=baseline, line_dash="dash", annotation_text="baseline")
    figure.update_layout(title=title, xaxis_title="k (heads ablated)", yaxis_title="accuracy",
                         yaxis_range=[0, 1.05], xaxis_type="log")
    return figure
