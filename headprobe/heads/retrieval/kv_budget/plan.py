"""The KV-budget plan: kv-head score tables, :class:`KVBudgetPlan` and building it.

Aggregates per-query-head scores to kv heads (:func:`kv_head_table`) and classifies each kv
head as ``full`` or ``streaming`` (:func:`plan_kv_budget`), as DuoAttention (Xiao et al. 2024)
and RazorAttention (Tang et al. 2024) do; the plan reports the KV memory it saves and reads
and writes headprobe's own JSON and CSV. The serving tools' formats are in
:mod:`headprobe.heads.retrieval.kv_budget.formats`.
"""

from __future__ import annotations

import json
import math
import os
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
from headprobe.types import KVHead

Aggregate = Literal["max", "mean"]
# DuoAttention's attention-pattern folder: its gate file and its config
DUO_GATE_FILE = "full_attention_heads.tsv"
DUO_CONFIG_FILE = "config.json"
FULL = "full"
STREAMING = "streaming"
PLAN_FORMAT = "headprobe-kv-budget-plan"
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

    def full_heads(self) -> list[KVHead]:
        """``(layer, kv head)`` pairs that keep a full cache."""
        rows = self.table.data[self.table.data["full"] == 1]
        return [KVHead(int(r.layer), int(r.kv_head)) for r in rows.itertuples()]

    def streaming_heads(self) -> list[KVHead]:
        """``(layer, kv head)`` pairs restricted to sink + window."""
        rows = self.table.data[self.table.data["full"] == 0]
        return [KVHead(int(r.layer), int(r.kv_head)) for r in rows.itertuples()]

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
        """Write DuoAttention's attention-pattern folder (layout in the
        :mod:`headprobe.heads.retrieval.kv_budget` docstring): ``full_attention_heads.tsv`` ([L,
        H_kv] 0/1 gates, tab-separated, one line per layer, ``numpy.savetxt`` default float format)
        and ``config.json`` (``sink_size`` = :attr:`sink`, ``recent_size`` = :attr:`window`)."""
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
        """Write HeadKV's per-head score file (layout in the
        :mod:`headprobe.heads.retrieval.kv_budget` docstring): one line, a JSON object
        ``{"<layer>-<head>": [score], ...}`` over every query head, layer-major.

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


def _float_or_none(value: Any) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None
