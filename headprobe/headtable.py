"""``HeadTable``: the one result type every scorer returns.

A HeadTable wraps a long pandas DataFrame with one row per (layer, head): columns ``layer``,
``head``, ``kv_head`` (the key/value head the query head reads under grouped-query
attention), ``score`` and any scorer-specific columns. Metadata (model, scorer, parameters,
data fingerprint, seed, headprobe version, timings) lives in ``DataFrame.attrs`` and is
written to a ``meta.json`` sidecar by :meth:`HeadTable.save`.

Units. A table is per *query head* (``meta["unit"]`` absent or ``"head"``, the default) or per
*key/value head* (``meta["unit"] == "kv_head"``: one row per (layer, kv head), built by
:meth:`HeadTable.from_kv_grid`; its ``head`` column holds the kv head index and equals
``kv_head``). Under grouped-query attention a kv head is the unit a KV cache keeps or drops
(DuoAttention, Xiao et al. 2024; RazorAttention, Tang et al. 2024), so KV-budget plans
(the retrieval head type's ``kv_budget``) are kv-head tables. ``save``, ``load``, ``pivot``
([L, H_kv]), ``heatmap`` (x axis ``kv head``), ``top`` and ``join`` work in both units;
``join`` refuses to mix them.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from headprobe.arch import ModelSpec
from headprobe.errors import HeadprobeError
from headprobe.resultset import StagedSet, ensure_folder, read_lock, result_set
from headprobe.types import Head, KVHead

REQUIRED_COLUMNS = ("layer", "head", "kv_head", "score")
HEAD_UNIT = "head"
KV_HEAD_UNIT = "kv_head"
UNITS = (HEAD_UNIT, KV_HEAD_UNIT)


class TableUnitError(HeadprobeError, ValueError):
    """Tables of different units (query heads vs kv heads) were combined, or a kv-head table
    has rows whose ``head`` differs from ``kv_head``."""


class HeadTable:
    """Per-(layer, head) scores with metadata.

    Attributes:
        data: the long DataFrame (``layer``, ``head``, ``kv_head``, ``score``, ...), sorted by
            layer then head; ``data.attrs`` holds the metadata.
    """

    def __init__(self, data: pd.DataFrame, meta: Mapping[str, Any] | None = None) -> None:
        missing = [c for c in REQUIRED_COLUMNS if c not in data.columns]
        if missing:
            raise ValueError(f"a HeadTable needs columns {REQUIRED_COLUMNS}; missing {missing}")
        data = data.sort_values(["layer", "head"], kind="stable").reset_index(drop=True)
        data.attrs = dict(meta if meta is not None else data.attrs)
        consistent = bool((data["head"] == data["kv_head"]).all())
        if data.attrs.get("unit") == KV_HEAD_UNIT and not consistent:
            raise TableUnitError(
                "a kv-head table (meta['unit'] == 'kv_head') must have head == kv_head in "
                "every row; build it with HeadTable.from_kv_grid")
        self.data = data

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_grid(
        cls,
        scores: Any,
        spec: ModelSpec,
        *,
        columns: Mapping[str, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> HeadTable:
        """Build from an [L, H] score grid (tensor or array) plus [L, H] extra columns."""
        return cls(_grid_frame(scores, spec, columns, kv=False), meta)

    @classmethod
    def from_kv_grid(
        cls,
        scores: Any,
        spec: ModelSpec,
        *,
        columns: Mapping[str, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> HeadTable:
        """A kv-head table from an [L, H_kv] score grid plus [L, H_kv] extra columns.

        Rows are (layer, kv head) with ``head == kv_head`` (the kv head index);
        ``meta["unit"]`` is set to ``"kv_head"`` and ``meta["group_size"]`` to the number of
        query heads that read each kv head (``spec.group_size``).
        """
        meta = {**dict(meta or {}), "unit": KV_HEAD_UNIT, "group_size": spec.group_size}
        return cls(_grid_frame(scores, spec, columns, kv=True), meta)

    # ------------------------------------------------------------------ access
    @property
    def meta(self) -> dict[str, Any]:
        return self.data.attrs

    @property
    def scorer(self) -> str:
        return str(self.meta.get("scorer", "score"))

    @property
    def model(self) -> str:
        return str(self.meta.get("model", ""))

    @property
    def unit(self) -> str:
        """``"head"`` (one row per query head) or ``"kv_head"`` (one per key/value head)."""
        return KV_HEAD_UNIT if self.meta.get("unit") == KV_HEAD_UNIT else HEAD_UNIT

    @property
    def is_kv(self) -> bool:
        """True for a kv-head table (:meth:`from_kv_grid`)."""
        return self.unit == KV_HEAD_UNIT

    @property
    def _noun(self) -> str:
        return "kv heads" if self.is_kv else "heads"

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, column: str) -> pd.Series:
        return self.data[column]

    def __repr__(self) -> str:
        top = self.top(5)[["layer", "head", "score"]].to_string(index=False)
        return (f"HeadTable({self.scorer}, model={self.model!r}, {len(self)} {self._noun})"
                f"\ntop 5:\n{top}")

    def _repr_html_(self) -> str:
        title = (f"<b>HeadTable</b> {self.scorer} &middot; {self.model} &middot; {len(self)} "
                 f"{self._noun}")
        return title + self.top(10).to_html(index=False)

    def to_frame(self) -> pd.DataFrame:
        """A copy of the long DataFrame (metadata in ``attrs``)."""
        out = self.data.copy()
        out.attrs = dict(self.meta)
        return out

    def top(self, k: int = 10, by: str = "score", ascending: bool = False) -> pd.DataFrame:
        """The ``k`` best heads by ``by`` (highest first unless ``ascending``)."""
        return self.data.sort_values(by, ascending=ascending, kind="stable").head(k).reset_index(
            drop=True
        )

    def heads(self, k: int | None = None, threshold: float | None = None,
              column: str = "score") -> list[Head] | list[KVHead]:
        """Top heads as ``(layer, head)`` pairs: the ``k`` best and/or those above threshold,
        ranked by ``column`` (default ``score``; e.g. Sahara's ``set_rank``).

        In a kv-head table the pairs are :class:`~headprobe.types.KVHead` ``(layer, kv_head)``."""
        if column not in self.data.columns:
            raise KeyError(f"no column {column!r} in this table; columns: "
                           f"{', '.join(map(str, self.data.columns))}")
        frame = self.data.sort_values(column, ascending=False, kind="stable")
        frame = frame[frame[column].notna()]
        if threshold is not None:
            frame = frame[frame[column] > threshold]
        if k is not None:
            frame = frame.head(k)
        kind = KVHead if self.is_kv else Head
        return [kind(int(r.layer), int(r.head)) for r in frame.itertuples()]

    def pivot(self, value: str = "score") -> pd.DataFrame:
        """An L x H grid of ``value`` (index ``layer``, columns ``head``); L x H_kv (columns
        are kv heads) in a kv-head table."""
        return self.data.pivot(index="layer", columns="head", values=value)

    def heatmap(self, value: str = "score", title: str | None = None, **imshow_kwargs: Any) -> Any:
        """A plotly heatmap of ``value`` over layers x heads (returned, never shown)."""
        import plotly.express as px

        grid = self.pivot(value)
        signed = bool((grid.to_numpy() < 0).any() and (grid.to_numpy() > 0).any())
        if signed:  # effects and attributions: diverging colours, white at zero
            imshow_kwargs.setdefault("color_continuous_scale", "RdBu_r")
            imshow_kwargs.setdefault("color_continuous_midpoint", 0.0)
        figure = px.imshow(
            grid,
            labels={"x": "kv head" if self.is_kv else "head", "y": "layer", "color": value},
            aspect="auto",
            color_continuous_scale=imshow_kwargs.pop("color_continuous_scale", "Viridis"),
            title=title or f"{self.scorer} — {self.model}",
            **imshow_kwargs,
        )
        figure.update_layout(height=max(300, 18 * grid.shape[0] + 120))
        return figure

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike[str], *, wait: float = 0.0,
             extra: Mapping[str, Callable[[str], Any]] | None = None) -> Path:
        """Write ``<scorer>.parquet``, ``.csv``, ``.html`` (heatmap), the shared
        ``plotly.min.js`` and ``meta.json`` as one result set.

        Through :func:`headprobe.resultset.result_set`: every file is written into a staging
        folder and moved into place together under the folder's lock, ``meta.json`` removed
        first and renamed in last, so a ``meta.json`` present means every file beside it
        belongs to it (what a resumed atlas or recipe relies on,
        :func:`headprobe.checkpoint.saved_table_matches`), and a failed save leaves the
        previous set untouched. ``plotly.min.js`` is one copy per folder (the html loads it from
        beside itself, so it works offline), rewritten only when plotly's bundle changed.

        ``wait``: seconds to wait for another writer of ``directory`` (default 0: fail at
        once with :class:`~headprobe.errors.ResultSetBusyError`). ``extra``: more files of the
        same set, ``{file name: write(path)}`` (e.g. a recipe step's merged csv).

        Raises:
            ResultWriteError: disk full or permission lost midway (one line; nothing changed).
        """
        name = self.scorer
        frame = self.to_frame()
        frame.attrs = {}  # parquet would embed attrs; meta.json is the one place for them
        figure = self.heatmap()
        with result_set(directory, wait=wait, run=self.meta.get("run_key"),
                        what=f"the {name} table for {directory}") as staged:
            staged.write(f"{name}.parquet", lambda p: frame.to_parquet(p, index=False))
            staged.write(f"{name}.csv", lambda p: frame.to_csv(p, index=False))
            stage_plotlyjs(staged)
            staged.write(f"{name}.html", lambda p: figure.write_html(
                p, include_plotlyjs="directory", full_html=True))
            for extra_name, write in (extra or {}).items():
                staged.write(extra_name, write)
            staged.write_text("meta.json", json_text(self.meta))
        return Path(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], scorer: str | None = None) -> HeadTable:
        """Read a table written by :meth:`save`."""
        folder = Path(directory)
        with read_lock(folder):  # never between another writer's renames
            meta_path = folder / "meta.json"
            meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
            name = scorer or meta.get("scorer")
            if name is None:
                found = sorted(folder.glob("*.parquet"))
                if len(found) != 1:
                    raise FileNotFoundError(f"{folder}: say which scorer to load; found {found}")
                name = found[0].stem
            path = folder / f"{name}.parquet"
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist")
            data = pd.read_parquet(path)
        return cls(data, meta)

    # ------------------------------------------------------------------ combining
    @staticmethod
    def join(tables: Sequence[HeadTable], value: str = "score") -> pd.DataFrame:
        """One wide table: ``layer``, ``head``, ``kv_head`` and one column per scorer.

        All tables must have the same unit (query heads or kv heads); the wide table's
        ``attrs["unit"]`` says which.

        Raises:
            TableUnitError: a query-head table joined with a kv-head table.
        """
        if not tables:
            raise ValueError("join needs at least one HeadTable")
        units = {t.unit for t in tables}
        if len(units) > 1:
            listing = ", ".join(f"{t.scorer}: {t.unit}" for t in tables)
            raise TableUnitError(
                f"cannot join tables of different units ({listing}); aggregate the per-head "
                "tables to kv heads first (the retrieval head type's kv_budget.kv_head_table) or "
                "join each unit separately")
        keys = ["layer", "head", "kv_head"]
        wide = tables[0].data[keys].copy()
        for table in tables:
            column = table.data[[*keys, value]].rename(columns={value: table.scorer})
            wide = wide.merge(column, on=keys, how="outer")
        wide.attrs = {"tables": {t.scorer: t.meta for t in tables}, "unit": tables[0].unit}
        return wide

    @staticmethod
    def correlations(tables: Sequence[HeadTable], method: str = "spearman") -> pd.DataFrame:
        """Scorer-by-scorer correlation of head scores (Spearman by default)."""
        wide = HeadTable.join(tables)
        return wide[[t.scorer for t in tables]].corr(method=method)


def _grid_frame(scores: Any, spec: ModelSpec, columns: Mapping[str, Any] | None, *,
                kv: bool) -> pd.DataFrame:
    """The long frame of an [L, H] (``kv``: [L, H_kv]) score grid and its extra columns:
    ``layer``, ``head``, ``kv_head`` (``head // group_size``; the head itself for kv rows),
    ``score``, then the columns."""
    grid = _as_grid(scores, spec, kv=kv)
    layers, heads = np.meshgrid(np.arange(grid.shape[0]), np.arange(grid.shape[1]),
                                indexing="ij")
    heads = heads.ravel()
    frame = pd.DataFrame({"layer": layers.ravel(), "head": heads,
                          "kv_head": heads if kv else heads // spec.group_size,
                          "score": grid.ravel()})
    for name, values in (columns or {}).items():
        frame[name] = _as_grid(values, spec, kv=kv).ravel()
    return frame


def _as_grid(values: Any, spec: ModelSpec, *, kv: bool = False) -> np.ndarray:
    """``values`` as an [L, H] (or, with ``kv``, [L, H_kv]) numpy array; ``ValueError``
    on another shape."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    grid = np.asarray(values)
    width, what = (spec.n_kv_heads, "n_kv_heads") if kv else (spec.n_heads, "n_heads")
    if grid.shape != (spec.n_layers, width):
        raise ValueError(
            f"expected an [n_layers, {what}] = [{spec.n_layers}, {width}] grid, "
            f"got shape {grid.shape}"
        )
    return grid


def ensure_output_dir(directory: str | os.PathLike[str]) -> Path:
    """Create ``directory`` if needed; :class:`~headprobe.errors.OutputPathError` if it is a
    file or unusable."""
    return ensure_folder(directory)


def stage_plotlyjs(staged: StagedSet) -> None:
    """Stage the one shared ``plotly.min.js`` an html saved with
    ``include_plotlyjs="directory"`` loads from beside itself (kept when unchanged)."""
    from plotly.offline import get_plotlyjs

    staged.share("plotly.min.js", get_plotlyjs().encode("utf-8"))


def atomic_write(path: Path, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp_path)`` on a temporary sibling of ``path``, then rename it into place."""
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_jsonable(value: Any) -> Any:
    """Turn numpy / torch scalars, tuples and paths into JSON-safe values."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def json_text(payload: Mapping[str, Any]) -> str:
    """``payload`` as the indented, key-sorted JSON text every ``meta.json`` uses."""
    return json.dumps(to_jsonable(payload), indent=2, sort_keys=True) + "\n"


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Write one JSON file atomically (a set of one file; use
    :func:`headprobe.resultset.result_set` for a file that belongs to a set)."""
    text = json_text(payload)
    atomic_write(path, lambda p: Path(p).write_text(text))
