"""KV-cache head budgets: which kv heads keep a full cache and which only sink + recent window.

Methods (``../shared/METHODS.md`` section 9):

- DuoAttention (Xiao et al. 2024, "DuoAttention: Efficient Long-Context LLM Inference with
  Retrieval and Streaming Heads"): a gate ``alpha`` in [0, 1] per (layer, kv head); heads with
  ``alpha > 0.5`` keep full attention, the others are *streaming* heads that keep only the
  first ``sink`` tokens and the ``recent`` most recent ones.
- RazorAttention (Tang et al. 2024, "RazorAttention: Efficient KV Cache Compression Through
  Retrieval Heads"): keep a full cache only for retrieval-like heads, sink + local window for the
  rest.
- HeadKV (Fu et al. 2024, "Not All Heads Matter: A Head-Level KV Cache Compression Method with
  Integrated Retrieval and Reasoning"): a per-head cache budget proportional to a head score.

Here a per-query-head score table (e.g. the ``retrieval`` scorer's) is aggregated to kv heads
(:func:`kv_head_table`, max or mean over the query heads of each group: a kv head is the unit a
cache keeps), each kv head is classified ``full`` or ``streaming`` by a score threshold or a
share of kv heads kept full (:func:`plan_kv_budget`), and the resulting :class:`KVBudgetPlan`
reports the KV memory it saves and is written in three forms:

- headprobe's own JSON (:meth:`KVBudgetPlan.to_json`) and CSV (:meth:`KVBudgetPlan.to_csv`);
- DuoAttention's attention-pattern folder (:meth:`KVBudgetPlan.to_duo_attention`);
- HeadKV's per-head score file (:meth:`KVBudgetPlan.to_headkv`);

each read back by :meth:`KVBudgetPlan.from_json`, :meth:`KVBudgetPlan.from_csv`,
:func:`read_duo_attention` and :func:`read_headkv`. :func:`plan_accuracy` judges a task with the
plan's streaming heads really restricted (:func:`headprobe.interventions.window.
streaming_attention`) against as many random kv heads.

File formats of the serving tools, as read from their public source code (matching our reading
of the format at the commits named; neither project versions these files):

- DuoAttention, ``mit-han-lab/duo-attention`` at commit ``03dca842639c``
  (``duo_attn/utils.py``: ``load_attn_pattern`` / ``save_full_attention_heads``): a folder with
  ``full_attention_heads.tsv``, written by ``numpy.savetxt(..., delimiter="\\t")`` and read by
  ``numpy.loadtxt(..., dtype=float, delimiter="\\t")``: ``L`` lines (layer 0 first), each with
  ``H_kv`` tab-separated floats (kv head 0 first), 1 = full attention, 0 = streaming (values are
  clipped to [0, 1]; DuoAttention's deployment treats ``> 0.5`` as full,
  ``duo_attn/patch/llama.py``); and ``config.json`` holding at least ``sink_size`` and
  ``recent_size`` (integers).
- HeadKV, ``FYYFU/HeadKV`` at commit ``3ec96530a9fd`` (``headkv/snapkv_utils.py``,
  ``ReasonSnapKVCluster``): one JSON object on the file's *first line* (read with
  ``json.loads(file.readline())``), keys ``"<layer>-<head>"`` over every *query* head in
  layer-major order (``"0-0", "0-1", ..., "1-0", ...``), each value a list of per-trial scores
  whose mean is the head's score; the reader takes the values in key order, normalises them by
  their sum and reshapes them to ``[num_hidden_layers, num_attention_heads]``, so every head must
  be present, in that order, and the scores must be non-negative with a positive sum.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from headprobe.arch import ModelSpec
from headprobe.errors import HeadprobeError
from headprobe.headtable import (
    KV_HEAD_UNIT,
    HeadTable,
    atomic_write,
    ensure_output_dir,
    to_jsonable,
    write_json,
)

Aggregate = Literal["max", "mean"]
FULL = "full"
STREAMING = "streaming"
PLAN_FORMAT = "headprobe-kv-budget-plan"
DUO_GATE_FILE = "full_attention_heads.tsv"
DUO_CONFIG_FILE = "config.json"
CSV_COLUMNS = ("layer", "kv_head", "score", "full", "mode", "sink", "window", "budget_tokens")


class KVBudgetError(HeadprobeError, ValueError):
    """A KV-budget plan cannot be built, written or read as asked."""


# ---------------------------------------------------------------------------- aggregation
def kv_head_table(table: HeadTable, aggregate: Aggregate = "max",
                  value: str = "score") -> HeadTable:
    """Aggregate a per-query-head table to one row per (layer, kv head).

    Args:
        table: a per-query-head :class:`HeadTable` (``layer``, ``head``, ``kv_head``,
            ``value``); a kv-head table is returned unchanged.
        aggregate: ``max`` (a kv head is kept when any query head of its group needs it, the
            conservative choice) or ``mean`` over the query heads of the group (NaN skipped).
        value: the column to aggregate into ``score``.

    Returns:
        a kv-head :class:`HeadTable` (``meta["unit"] == "kv_head"``) with ``score`` and
        ``n_query_heads`` (how many query heads each kv head aggregates); metadata of
        ``table`` plus ``aggregate`` and ``aggregated_from``.
    """
    if aggregate not in ("max", "mean"):
        raise KVBudgetError(f"aggregate must be 'max' or 'mean', got {aggregate!r}")
    if table.is_kv:
        return table
    if value not in table.data.columns:
        raise KVBudgetError(f"the table has no column {value!r}; columns: "
                            f"{list(table.data.columns)}")
    grouped = table.data.groupby(["layer", "kv_head"], sort=True)[value]
    scores = grouped.max() if aggregate == "max" else grouped.mean()
    frame = scores.rename("score").reset_index()
    frame["head"] = frame["kv_head"]
    frame["n_query_heads"] = grouped.size().to_numpy()
    meta = {**table.meta, "unit": KV_HEAD_UNIT, "aggregate": aggregate,
            "aggregated_from": {"scorer": table.scorer, "value": value}}
    return HeadTable(frame[["layer", "head", "kv_head", "score", "n_query_heads"]], meta)


# ---------------------------------------------------------------------------- the plan
@dataclass
class KVBudgetPlan:
    """Which kv heads keep a full KV cache and which only sink + recent window.

    Attributes:
        table: a kv-head :class:`HeadTable`: ``layer``, ``head`` (= ``kv_head``), ``kv_head``,
            ``score``, ``full`` (1 full, 0 streaming) and ``mode`` (``"full"`` /
            ``"streaming"``), one row per (layer, kv head) of the model.
        sink: tokens a streaming head keeps at the start of the sequence.
        window: most recent tokens a streaming head keeps (the query's own included).
        n_layers, n_kv_heads, group_size: the model's shape (``group_size`` query heads read
            each kv head).
        rule: how the heads were classified (``{"threshold": t}`` or ``{"full_share": s}``,
            or where it was read from).
        source: the per-query-head table the plan came from, when there was one (its scores
            go into the HeadKV file).
    """

    table: HeadTable
    sink: int
    window: int
    n_layers: int
    n_kv_heads: int
    group_size: int
    rule: dict[str, Any] = field(default_factory=dict)
    source: HeadTable | None = None

    def __post_init__(self) -> None:
        if self.sink < 0 or self.window < 1:
            raise KVBudgetError(f"sink must be >= 0 and window >= 1, got sink={self.sink}, "
                                f"window={self.window}")
        if len(self.table) != self.n_layers * self.n_kv_heads:
            raise KVBudgetError(
                f"the plan table has {len(self.table)} rows; a model of {self.n_layers} layers "
                f"x {self.n_kv_heads} kv heads needs {self.n_layers * self.n_kv_heads}")

    # ------------------------------------------------------------------ access
    @property
    def model(self) -> str:
        return self.table.model

    def gates(self) -> np.ndarray:
        """[L, H_kv] float array: 1.0 where the kv head keeps full attention, else 0.0."""
        return self.table.pivot("full").to_numpy(dtype=float)

    def full_heads(self) -> list[tuple[int, int]]:
        """``(layer, kv head)`` pairs that keep a full cache."""
        rows = self.table.data[self.table.data["full"] == 1]
        return [(int(r.layer), int(r.kv_head)) for r in rows.itertuples()]

    def streaming_heads(self) -> list[tuple[int, int]]:
        """``(layer, kv head)`` pairs restricted to sink + window."""
        rows = self.table.data[self.table.data["full"] == 0]
        return [(int(r.layer), int(r.kv_head)) for r in rows.itertuples()]

    @property
    def n_total(self) -> int:
        return self.n_layers * self.n_kv_heads

    def memory_saved(self, context_length: int) -> float:
        """Share of KV-cache bytes saved at ``context_length`` cached tokens.

        Every kv head of every layer caches ``d_head`` keys and values per token (same dtype),
        so bytes are proportional to cached tokens. A full head caches ``T`` tokens, a
        streaming head ``min(T, sink + window)``::

            saved = n_streaming * (T - min(T, sink + window)) / (n_layers * n_kv_heads * T)

        The baseline is a cache that keeps all ``T`` tokens on every layer (a model's own
        sliding-window layers are not credited separately).
        """
        total = int(context_length)
        if total < 1:
            raise KVBudgetError(f"context_length must be >= 1, got {context_length}")
        kept = min(total, self.sink + self.window)
        return len(self.streaming_heads()) * (total - kept) / (self.n_total * total)

    def cache_bytes(self, context_length: int, d_head: int, bytes_per_value: int = 2,
                    batch: int = 1) -> tuple[int, int]:
        """``(full cache bytes, plan cache bytes)`` at ``context_length`` tokens: keys and
        values (2) x ``d_head`` x ``bytes_per_value`` (2: fp16 / bf16) per cached token, kv head
        and layer, times ``batch``."""
        per_token = 2 * d_head * bytes_per_value * batch
        total = int(context_length)
        kept = min(total, self.sink + self.window)
        n_streaming = len(self.streaming_heads())
        full_bytes = self.n_total * total * per_token
        plan_bytes = ((self.n_total - n_streaming) * total + n_streaming * kept) * per_token
        return full_bytes, plan_bytes

    def summary(self, context_lengths: Sequence[int] = (1024, 4096, 32768)) -> dict[str, Any]:
        """Headline numbers: counts of full / streaming kv heads, sink, window, the rule and the
        memory saved at ``context_lengths``."""
        return {
            "model": self.model, "n_kv_heads_total": self.n_total,
            "n_full": len(self.full_heads()), "n_streaming": len(self.streaming_heads()),
            "sink": self.sink, "window": self.window, "rule": self.rule,
            "memory_saved": {str(t): self.memory_saved(t) for t in context_lengths},
        }

    def __repr__(self) -> str:
        return (f"KVBudgetPlan({self.model!r}: {len(self.full_heads())} full / "
                f"{len(self.streaming_heads())} streaming of {self.n_total} kv heads, "
                f"sink={self.sink}, window={self.window})")

    # ------------------------------------------------------------------ headprobe's formats
    def to_dict(self) -> dict[str, Any]:
        """The JSON payload of :meth:`to_json` (see there)."""
        heads = [{"layer": int(r.layer), "kv_head": int(r.kv_head),
                  "score": _float_or_none(r.score), "full": int(r.full), "mode": str(r.mode)}
                 for r in self.table.data.itertuples()]
        return {
            "format": PLAN_FORMAT, "model": self.model, "n_layers": self.n_layers,
            "n_kv_heads": self.n_kv_heads, "group_size": self.group_size, "sink": self.sink,
            "window": self.window, "rule": self.rule,
            "full_attention_heads": self.gates().astype(int).tolist(),
            "heads": heads, "meta": to_jsonable(self.table.meta),
        }

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write the plan as JSON: ``format`` (``"headprobe-kv-budget-plan"``), ``model``,
        ``n_layers``, ``n_kv_heads``, ``group_size``, ``sink``, ``window``, ``rule``,
        ``full_attention_heads`` ([L][H_kv] 0/1, 1 = full), ``heads`` (one record per kv head:
        ``layer``, ``kv_head``, ``score``, ``full``, ``mode``) and ``meta`` (the table's)."""
        target = Path(path)
        ensure_output_dir(target.parent)
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        atomic_write(target, lambda p: Path(p).write_text(text + "\n"))
        return target

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> KVBudgetPlan:
        """The plan of :meth:`to_dict`."""
        if payload.get("format") != PLAN_FORMAT:
            raise KVBudgetError(f"not a headprobe KV-budget plan (format "
                                f"{payload.get('format')!r}, expected {PLAN_FORMAT!r})")
        frame = pd.DataFrame(payload["heads"])
        frame["score"] = frame["score"].astype(float)
        frame["head"] = frame["kv_head"]
        meta = {**dict(payload.get("meta") or {}), "unit": KV_HEAD_UNIT}
        return cls(HeadTable(frame[["layer", "head", "kv_head", "score", "full", "mode"]], meta),
                   sink=int(payload["sink"]), window=int(payload["window"]),
                   n_layers=int(payload["n_layers"]), n_kv_heads=int(payload["n_kv_heads"]),
                   group_size=int(payload["group_size"]), rule=dict(payload.get("rule") or {}))

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> KVBudgetPlan:
        """Read a plan written by :meth:`to_json`."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write one row per kv head: ``layer``, ``kv_head``, ``score``, ``full`` (1/0),
        ``mode``, ``sink``, ``window`` and ``budget_tokens`` (``sink + window`` for a streaming
        head, empty for a full one: unbounded)."""
        target = Path(path)
        ensure_output_dir(target.parent)
        frame = self.table.data[["layer", "kv_head", "score", "full", "mode"]].copy()
        frame["sink"], frame["window"] = self.sink, self.window
        frame["budget_tokens"] = np.where(frame["full"] == 1, None, self.sink + self.window)
        atomic_write(target, lambda p: frame[list(CSV_COLUMNS)].to_csv(p, index=False))
        return target

    @classmethod
    def from_csv(cls, path: str | os.PathLike[str], group_size: int = 1,
                 model: str = "") -> KVBudgetPlan:
        """Read a plan written by :meth:`to_csv` (the CSV holds no group size or model name:
        pass them)."""
        frame = pd.read_csv(path)
        missing = [c for c in CSV_COLUMNS if c not in frame.columns]
        if missing or frame.empty:
            raise KVBudgetError(f"{path}: not a KV-budget CSV (missing columns {missing})")
        frame["head"] = frame["kv_head"]
        frame["full"] = frame["full"].astype(int)
        table = HeadTable(frame[["layer", "head", "kv_head", "score", "full", "mode"]],
                          {"unit": KV_HEAD_UNIT, "model": model, "scorer": "kv_budget"})
        return cls(table, sink=int(frame["sink"].iloc[0]), window=int(frame["window"].iloc[0]),
                   n_layers=int(frame["layer"].max()) + 1,
                   n_kv_heads=int(frame["kv_head"].max()) + 1, group_size=group_size,
                   rule={"read_from": "csv"})

    # ------------------------------------------------------------------ serving tools' formats
    def to_duo_attention(self, directory: str | os.PathLike[str]) -> Path:
        """Write DuoAttention's attention-pattern folder (layout in the module docstring):
        ``full_attention_heads.tsv`` ([L, H_kv] 0/1 gates, tab-separated, one line per layer,
        ``numpy.savetxt`` default float format) and ``config.json`` (``sink_size`` =
        :attr:`sink`, ``recent_size`` = :attr:`window`)."""
        folder = ensure_output_dir(directory)
        gates = self.gates()
        atomic_write(folder / DUO_GATE_FILE,
                     lambda p: np.savetxt(p, gates, delimiter="\t"))
        write_json(folder / DUO_CONFIG_FILE,
                   {"sink_size": self.sink, "recent_size": self.window,
                    "headprobe_model": self.model, "headprobe_rule": self.rule})
        return folder

    def to_headkv(self, path: str | os.PathLike[str], *,
                  per_head: HeadTable | None = None) -> Path:
        """Write HeadKV's per-head score file (layout in the module docstring): one line, a JSON
        object ``{"<layer>-<head>": [score], ...}`` over every query head, layer-major.

        Args:
            per_head: per-query-head scores to write (default: :attr:`source`, else each kv
                head's plan score repeated for the query heads of its group).

        Raises:
            KVBudgetError: a missing head, a NaN or negative score, or scores summing to 0
                (HeadKV divides by their sum).
        """
        table = per_head if per_head is not None else self.source
        n_heads = self.n_kv_heads * self.group_size
        if table is not None and not table.is_kv:
            grid = table.pivot("score").reindex(index=range(self.n_layers),
                                                columns=range(n_heads)).to_numpy(dtype=float)
        else:
            grid = np.repeat(self.table.pivot("score").to_numpy(dtype=float), self.group_size,
                             axis=1)
        if grid.shape != (self.n_layers, n_heads) or not np.isfinite(grid).all():
            raise KVBudgetError("HeadKV needs a finite score for every (layer, query head); the "
                                "scores have missing or NaN entries (fill them, e.g. with 0)")
        if (grid < 0).any() or grid.sum() <= 0:
            raise KVBudgetError("HeadKV normalises head scores by their sum, so they must be "
                                ">= 0 with a positive sum; pass per_head= with non-negative "
                                "scores (e.g. the retrieval score)")
        payload = {f"{layer}-{head}": [float(grid[layer, head])]
                   for layer in range(self.n_layers) for head in range(n_heads)}
        target = Path(path)
        ensure_output_dir(target.parent)
        text = json.dumps(payload)  # one line: HeadKV reads file.readline()
        atomic_write(target, lambda p: Path(p).write_text(text + "\n"))
        return target


# ---------------------------------------------------------------------------- classification
def plan_kv_budget(
    table: HeadTable,
    spec: ModelSpec,
    *,
    threshold: float | None = None,
    full_share: float | None = None,
    aggregate: Aggregate = "max",
    value: str = "score",
    sink: int = 4,
    window: int = 32,
) -> KVBudgetPlan:
    """Classify every kv head as ``full`` or ``streaming`` (DuoAttention, Xiao et al. 2024;
    RazorAttention, Tang et al. 2024).

    Args:
        table: per-query-head scores (e.g. the ``retrieval`` scorer's table) or a kv-head table;
            higher = more in need of the full context.
        spec: the model's :class:`ModelSpec` (shape and GQA grouping).
        threshold: kv heads whose aggregated score is ``> threshold`` keep full attention.
        full_share: instead, the ``round(full_share * L * H_kv)`` best kv heads keep full
            attention (ties: lower layer, then lower kv head first). Give exactly one of the
            two. NaN scores count as lowest (streaming).
        aggregate: ``max`` or ``mean`` over the query heads of each group
            (:func:`kv_head_table`).
        value: the table column holding the scores.
        sink, window: what a streaming head keeps (first ``sink`` tokens, ``window`` most
            recent ones).

    Returns:
        the :class:`KVBudgetPlan`; its table's scorer is ``kv_budget``.
    """
    if (threshold is None) == (full_share is None):
        raise KVBudgetError("give exactly one of threshold= (score cut) or full_share= (share "
                            "of kv heads kept full)")
    kv = kv_head_table(table, aggregate, value)
    frame = kv.data.copy()
    expected = spec.n_layers * spec.n_kv_heads
    if len(frame) != expected or frame["kv_head"].max() >= spec.n_kv_heads:
        raise KVBudgetError(
            f"the table covers {len(frame)} kv heads; {spec.name} has {spec.n_layers} layers x "
            f"{spec.n_kv_heads} kv heads = {expected}: give a table of this model")
    scores = frame["score"].astype(float)
    if threshold is not None:
        if not math.isfinite(float(threshold)):
            raise KVBudgetError(f"threshold must be finite, got {threshold}")
        full = (scores > float(threshold)).to_numpy()
        rule: dict[str, Any] = {"threshold": float(threshold)}
    else:
        share = float(full_share)  # type: ignore[arg-type]
        if not 0.0 <= share <= 1.0:
            raise KVBudgetError(f"full_share must lie in [0, 1], got {full_share}")
        n_full = round(share * expected)
        order = scores.fillna(-np.inf).sort_values(ascending=False, kind="stable").index
        full = np.zeros(expected, dtype=bool)
        full[np.asarray(order[:n_full], dtype=int)] = True
        rule = {"full_share": share, "n_full": n_full}
    frame["full"] = full.astype(int)
    frame["mode"] = np.where(full, FULL, STREAMING)
    rule["aggregate"] = aggregate
    meta = {**kv.meta, "scorer": "kv_budget", "source_scorer": table.scorer,
            "model": table.model or spec.name, "sink": sink, "window": window, "rule": rule}
    plan_table = HeadTable(frame, meta)
    return KVBudgetPlan(plan_table, sink=int(sink), window=int(window), n_layers=spec.n_layers,
                        n_kv_heads=spec.n_kv_heads, group_size=spec.group_size, rule=rule,
                        source=None if table.is_kv else table)


# ---------------------------------------------------------------------------- readers
def read_duo_attention(directory: str | os.PathLike[str], *, group_size: int = 1,
                       model: str = "") -> KVBudgetPlan:
    """Read a DuoAttention attention-pattern folder (``full_attention_heads.tsv`` +
    ``config.json``, layout in the module docstring) as a plan: gate values (clipped to
    [0, 1] as DuoAttention does) become ``score``; ``> 0.5`` means full (DuoAttention's
    deployment rule)."""
    folder = Path(directory)
    gate_path, config_path = folder / DUO_GATE_FILE, folder / DUO_CONFIG_FILE
    for path in (gate_path, config_path):
        if not path.is_file():
            raise KVBudgetError(f"{path} does not exist: a DuoAttention pattern folder holds "
                                f"{DUO_GATE_FILE} and {DUO_CONFIG_FILE}")
    gates = np.clip(np.atleast_2d(np.loadtxt(gate_path, dtype=float, delimiter="\t")), 0, 1)
    config = json.loads(config_path.read_text())
    n_layers, n_kv = gates.shape
    layers, heads = np.meshgrid(np.arange(n_layers), np.arange(n_kv), indexing="ij")
    full = (gates > 0.5).ravel()
    frame = pd.DataFrame({"layer": layers.ravel(), "head": heads.ravel(),
                          "kv_head": heads.ravel(), "score": gates.ravel(),
                          "full": full.astype(int), "mode": np.where(full, FULL, STREAMING)})
    table = HeadTable(frame, {"unit": KV_HEAD_UNIT, "model": model, "scorer": "kv_budget"})
    return KVBudgetPlan(table, sink=int(config["sink_size"]), window=int(config["recent_size"]),
                        n_layers=n_layers, n_kv_heads=n_kv, group_size=group_size,
                        rule={"read_from": "duo_attention", "threshold": 0.5})


# ---------------------------------------------------------------------------- measurement
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


_HEADKV_KEY = re.compile(r"^(\d+)-(\d+)$")


def read_headkv(path: str | os.PathLike[str], spec: ModelSpec | None = None) -> HeadTable:
    """Read a HeadKV per-head score file (layout in the module docstring) as a per-query-head
    :class:`HeadTable` (scorer ``headkv``): ``score`` is the mean of each head's list (a bare
    number is taken as is), ``n_trials`` the list's length.

    Raises:
        KVBudgetError: a key that is not ``"<layer>-<head>"``, or heads missing for ``spec``.
    """
    first_line = Path(path).read_text().splitlines()[0]
    payload = json.loads(first_line)
    rows = []
    for key, values in payload.items():
        match = _HEADKV_KEY.match(key)
        if match is None:
            raise KVBudgetError(f"{path}: key {key!r} is not '<layer>-<head>'")
        listed = values if isinstance(values, list) else [values]
        rows.append({"layer": int(match[1]), "head": int(match[2]),
                     "score": float(np.mean(listed)), "n_trials": len(listed)})
    frame = pd.DataFrame(rows)
    n_layers, n_heads = int(frame["layer"].max()) + 1, int(frame["head"].max()) + 1
    if spec is not None:
        n_layers, n_heads = spec.n_layers, spec.n_heads
        group = spec.group_size
    else:
        group = 1
    if len(frame) != n_layers * n_heads:
        raise KVBudgetError(f"{path}: {len(frame)} heads, expected {n_layers} x {n_heads}")
    frame["kv_head"] = frame["head"] // group
    meta = {"scorer": "headkv", "model": spec.name if spec is not None else "",
            "read_from": str(path)}
    return HeadTable(frame[["layer", "head", "kv_head", "score", "n_trials"]], meta)


def _float_or_none(value: Any) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None
