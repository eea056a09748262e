"""The serving tools' files: DuoAttention's attention-pattern folder and HeadKV's score file.

DuoAttention (Xiao et al. 2024, ``mit-han-lab/duo-attention``) and HeadKV (Fu et al. 2024,
``FYYFU/HeadKV``); the layouts, and the commits they were read from, are in the
:mod:`headprobe.heads.retrieval.kv_budget` docstring. :meth:`KVBudgetPlan.to_duo_attention` and
:meth:`KVBudgetPlan.to_headkv` call the writers here.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from headprobe.arch import ModelSpec
from headprobe.heads.retrieval.kv_budget.plan import FULL, STREAMING, KVBudgetError, KVBudgetPlan
from headprobe.headtable import (
    KV_HEAD_UNIT,
    HeadTable,
    atomic_write,
    ensure_output_dir,
    write_json,
)

DUO_GATE_FILE = "full_attention_heads.tsv"
DUO_CONFIG_FILE = "config.json"
_HEADKV_KEY = re.compile(r"^(\d+)-(\d+)$")


# ---------------------------------------------------------------------------- DuoAttention
def write_duo_attention(plan: KVBudgetPlan, directory: str | os.PathLike[str]) -> Path:
    """Write ``plan`` as DuoAttention's attention-pattern folder (layout in the
    :mod:`headprobe.heads.retrieval.kv_budget` docstring): ``full_attention_heads.tsv`` ([L, H_kv] 0/1 gates,
    tab-separated, one line per layer, ``numpy.savetxt`` default float format) and
    ``config.json`` (``sink_size`` = ``plan.sink``, ``recent_size`` = ``plan.window``).
    :meth:`KVBudgetPlan.to_duo_attention` calls this."""
    folder = ensure_output_dir(directory)
    gates = plan.gates()
    atomic_write(folder / DUO_GATE_FILE,
                 lambda p: np.savetxt(p, gates, delimiter="\t"))
    write_json(folder / DUO_CONFIG_FILE,
               {"sink_size": plan.sink, "recent_size": plan.window,
                "headprobe_model": plan.model, "headprobe_rule": plan.rule})
    return folder


def read_duo_attention(directory: str | os.PathLike[str], *, group_size: int = 1,
                       model: str = "") -> KVBudgetPlan:
    """Read a DuoAttention attention-pattern folder (``full_attention_heads.tsv`` +
    ``config.json``, layout in the :mod:`headprobe.heads.retrieval.kv_budget` docstring) as a plan: gate values
    (clipped to [0, 1] as DuoAttention does) become ``score``; ``> 0.5`` means full
    (DuoAttention's deployment rule)."""
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


# ---------------------------------------------------------------------------- HeadKV
def write_headkv(plan: KVBudgetPlan, path: str | os.PathLike[str], *,
                 per_head: HeadTable | None = None) -> Path:
    """Write ``plan`` as HeadKV's per-head score file (layout in the :mod:`headprobe.heads.retrieval.kv_budget`
    docstring): one line, a JSON object ``{"<layer>-<head>": [score], ...}`` over every query
    head, layer-major. :meth:`KVBudgetPlan.to_headkv` calls this.

    Args:
        per_head: per-query-head scores to write (default: ``plan.source``, else each kv
            head's plan score repeated for the query heads of its group).

    Raises:
        KVBudgetError: a missing head, a NaN or negative score, or scores summing to 0
            (HeadKV divides by their sum).
    """
    table = per_head if per_head is not None else plan.source
    n_heads = plan.n_kv_heads * plan.group_size
    if table is not None and not table.is_kv:
        grid = table.pivot("score").reindex(index=range(plan.n_layers),
                                            columns=range(n_heads)).to_numpy(dtype=float)
    else:
        grid = np.repeat(plan.table.pivot("score").to_numpy(dtype=float), plan.group_size,
                         axis=1)
    if grid.shape != (plan.n_layers, n_heads) or not np.isfinite(grid).all():
        raise KVBudgetError("HeadKV needs a finite score for every (layer, query head); the "
                            "scores have missing or NaN entries (fill them, e.g. with 0)")
    if (grid < 0).any() or grid.sum() <= 0:
        raise KVBudgetError("HeadKV normalises head scores by their sum, so they must be "
                            ">= 0 with a positive sum; pass per_head= with non-negative "
                            "scores (e.g. the retrieval score)")
    payload = {f"{layer}-{head}": [float(grid[layer, head])]
               for layer in range(plan.n_layers) for head in range(n_heads)}
    target = Path(path)
    ensure_output_dir(target.parent)
    text = json.dumps(payload)  # one line: HeadKV reads file.readline()
    atomic_write(target, lambda p: Path(p).write_text(text + "\n"))
    return target


def read_headkv(path: str | os.PathLike[str], spec: ModelSpec | None = None) -> HeadTable:
    """Read a HeadKV per-head score file (layout in the :mod:`headprobe.heads.retrieval.kv_budget` docstring)
    as a per-query-head :class:`HeadTable` (scorer ``headkv``): ``score`` is the mean of each
    head's list (a bare number is taken as is), ``n_trials`` the list's length.

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
