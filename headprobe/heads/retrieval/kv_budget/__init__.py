"""KV-cache head budgets: which kv heads keep a full cache and which only sink + recent window.

Methods (the papers below):

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

Modules: :mod:`~headprobe.heads.retrieval.kv_budget.plan` (:class:`KVBudgetError`,
:func:`kv_head_table`, :class:`KVBudgetPlan` with headprobe's JSON and CSV, :func:`plan_kv_budget`),
:mod:`~headprobe.heads.retrieval.kv_budget.formats` (the DuoAttention and HeadKV files: writers
behind :meth:`KVBudgetPlan.to_duo_attention` / :meth:`KVBudgetPlan.to_headkv`,
:func:`read_duo_attention`, :func:`read_headkv`) and
:mod:`~headprobe.heads.retrieval.kv_budget.accuracy` (:class:`PlanAccuracy`, :func:`plan_accuracy`).
"""

from __future__ import annotations

from headprobe.heads.retrieval.kv_budget.accuracy import PlanAccuracy, plan_accuracy
from headprobe.heads.retrieval.kv_budget.formats import (
    DUO_CONFIG_FILE,
    DUO_GATE_FILE,
    read_duo_attention,
    read_headkv,
)
from headprobe.heads.retrieval.kv_budget.plan import (
    CSV_COLUMNS,
    FULL,
    PLAN_FORMAT,
    STREAMING,
    Aggregate,
    KVBudgetError,
    KVBudgetPlan,
    kv_head_table,
    plan_kv_budget,
)

__all__ = [
    "CSV_COLUMNS",
    "DUO_CONFIG_FILE",
    "DUO_GATE_FILE",
    "FULL",
    "PLAN_FORMAT",
    "STREAMING",
    "Aggregate",
    "KVBudgetError",
    "KVBudgetPlan",
    "PlanAccuracy",
    "kv_head_table",
    "plan_accuracy",
    "plan_kv_budget",
    "read_duo_attention",
    "read_headkv",
]
