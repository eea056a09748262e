"""Where a validation run keeps its results, and how they are read back.

``<out>/cases/<head_type>-<scorer>-<model>-<key>/`` holds one finished case as a result set
(:mod:`headprobe.resultset`): ``scores.csv``, the scorer's ``[n_layers, n_heads]`` grid
(index ``layer``, columns ``head``), and ``meta.json``: the case's key, its table row and its
causal check. ``<out>/validation.parquet`` / ``.csv`` / ``.html`` and ``meta.json`` are the
run's table and page. A case folder is written as soon as the case finishes, so a run killed
half-way keeps it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from headprobe.errors import DataNotFoundError
from headprobe.headtable import json_text
from headprobe.resultset import read_lock, result_set
from headprobe.types import Head
from headprobe.version import headprobe_version

TABLE_NAME = "validation"
CASES_FOLDER = "cases"


def case_folder_name(head_type: str, scorer: str, model: str, key: str) -> str:
    """``<head_type>-<scorer>-<model>-<key>``, reduced to ``[A-Za-z0-9_.-]``: the folder of a
    case under ``<out>/cases/``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{head_type}-{scorer}-{model}-{key}")


def format_known(known: Sequence[Sequence[int]]) -> str:
    """``"L0H0,L1H2"``: the known heads, sorted."""
    return ",".join(f"L{layer}H{head}" for layer, head in sorted(map(tuple, known)))


def parse_known(text: str) -> list[Head]:
    """``"L0H0,L1H2" -> [Head(0, 0), Head(1, 2)]`` (the ``known`` column)."""
    return [Head(int(layer), int(head))
            for layer, head in re.findall(r"L(\d+)H(\d+)", text or "")]


def save_case(folder: Path, *, key: str, name: str, grid: np.ndarray,
              row: Mapping[str, Any], causal: Mapping[str, Any]) -> None:
    """Write one finished case (``name``: how messages call it) as a result set."""
    frame = pd.DataFrame(grid, index=pd.RangeIndex(grid.shape[0], name="layer"))
    frame.columns.name = "head"
    meta = {"kind": "validation-case", "key": key, "case": name, "row": dict(row),
            "causal": dict(causal), "headprobe_version": headprobe_version(),
            "created": datetime.now(UTC).isoformat(timespec="seconds")}
    with result_set(folder, what=f"the validation case {name}") as staged:
        staged.write("scores.csv", lambda p: frame.to_csv(p))
        staged.write_text("meta.json", json_text(meta))


def load_case(folder: Path, key: str) -> tuple[np.ndarray, dict[str, Any]] | None:
    """The grid and meta of a case saved under ``key`` in ``folder``, or ``None`` (not
    there, unfinished, or saved under another key)."""
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    with read_lock(folder):
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("key") != key or not (folder / "scores.csv").is_file():
            return None
        grid = pd.read_csv(folder / "scores.csv", index_col=0).to_numpy(dtype=float)
    return grid, meta


def load_validation(folder: str | Path) -> pd.DataFrame:
    """The validation table saved in ``folder`` (metadata in ``attrs``).

    Raises:
        DataNotFoundError: ``folder`` holds no ``validation.parquet``.
    """
    folder = Path(folder)
    with read_lock(folder):
        path = folder / f"{TABLE_NAME}.parquet"
        if not path.is_file():
            raise DataNotFoundError(f"{path} does not exist: give a folder written by "
                                    "headprobe validate --out")
        table = pd.read_parquet(path)
        meta_path = folder / "meta.json"
        table.attrs = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return table


__all__ = ["CASES_FOLDER", "TABLE_NAME", "case_folder_name", "format_known", "load_case",
           "load_validation", "parse_known", "save_case"]
