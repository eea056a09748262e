"""The serving tools' files: DuoAttention's attention-pattern folder and HeadKV's score file.

DuoAttention (Xiao et al. 2024, ``mit-han-lab/duo-attention``) and HeadKV (Fu et al. 2024,
``FYYFU/HeadKV``); the layouts, and the commits they were read from, are in the
:mod:`headprobe.heads.retrieval.kv_budget` docstring. The writers are
:meth:`KVBudgetPlan.to_duo_attention` and :meth:`KVBudgetPlan.to_headkv`; the readers and
``write_*`` shortcuts are here.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from headprobe.arch import ModelSpec
from headprobe.heads.retrieval.kv_budget.plan import (
    DUO_CONFIG_FILE as DUO_CONFIG_FILE,  # re-exported
)
from headprobe.heads.retrieval.kv_budget.plan import (
    DUO_GATE_FILE as DUO_GATE_FILE,  # re-exported
)
from headprobe.heads.retrieval.kv_budget.plan import (
    FULL,
    STREAMING,
    KVBudgetError,
    KVBudgetPlan,
)
from headprobe.headtable import (
    KV_HEAD_UNIT,
    HeadTable,
)

_HEADKV_KEY = re.compile(r"^(\d+)-(\d+)$")


# ---------------------------------------------------------------------------- DuoAttention
def write_duo_attention(plan: KVBudgetPlan, directory: str | os.PathLike[str]) -> Path:
    """Write ``plan`` as DuoAttention's attention-pattern folder:
    :meth:`KVBudgetPlan.to_duo_attention`."""
    return plan.to_duo_attention(directory)

def read_duo_attention(directory: str | os.PathLike[str], *, group_size: int = 1,
                       model: str = "") -> KVBudgetPlan:
    """Read a DuoAttention attention-pattern folder (``full_attention_heads.tsv`` +
    ``config.json``, layout in the :mod:`headprobe.heads.retrieval.kv_budget` docstring) as a plan:
    gate values (clipped to [0, 1] as DuoAttention does) become ``score``; ``> 0.5`` means full
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
    """Write ``plan`` as HeadKV's per-head score file: :meth:`KVBudgetPlan.to_headkv`."""
    return plan.to_headkv(path, per_head=per_head)

def read_headkv(path: str | os.PathLike[str], spec: ModelSpec | None = None) -> HeadTable:
    """Read a HeadKV per-head score file (layout in the :mod:`headprobe.heads.retrieval.kv_budget`
    docstring) as a per-query-head :class:`HeadTable` (scorer ``headkv``): ``score`` is the mean of
    each head's list (a bare number is taken as is), ``n_trials`` the list's length.

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
