"""bf16 against fp32 for the scorers added after the core redesign made precision a parameter:
``retrieval``, ``ships``, ``successor``, ``temporal``, ``conflict`` and ``ocr``.

The same random weights are built in fp32 and in bf16 (:func:`headprobe.tiny.tiny_model` with
``dtype``; ``ocr`` runs on the project's small ``ocr-reader`` loaded in each dtype), each scorer
runs on the same inputs in both, and the tables are compared. Activations stay in bf16; every
scorer reduces in fp32 or fp64 (attention rows, KL, logit differences, DLA, OV read-outs).

Tolerances (absolute, over the L x H heads). "Measured" is the largest value over the tiny
kinds tested here (``tests`` run of 2026-12-04) and, where named, over ``bench/precision.json``
(SmolLM2-135M-Instruct, ``bench/bench_precision.py``); each tolerance leaves a margin of
about 2x or more over what was measured:

- ``successor``: score / strict are shares of successor pairs, so a bf16 rounding that flips
  the argmax between two near-tied logits moves a head by ``1 / n_pairs`` (tiny: 1/67 =
  0.015, SmolLM2: 1/218 = 0.0046). Max 0.02 (measured 0.0149 tiny, 0.0046 SmolLM2); mean
  0.003 (measured 0.0012 tiny, 0.0006 SmolLM2).
- ``ships`` (KL of the next-token distribution): tiny 0.002 (measured 0.0010); on SmolLM2
  the bench measured 0.0135 with KL up to 1.9 (0.04 would be the tolerance there).
- ``conflict`` (logit-difference units): ``path`` 0.015 (measured 0.0065), ``dla`` 0.005
  (measured 0.0018). The bf16 model's logits are themselves bf16 (steps of 0.06-0.125 at
  SmolLM2's |logit| of 16-32), which bounds what path patching can resolve there (bench:
  max 0.09 on path scores up to 3.1; DLA, read from the residual in fp64: 0.033).
- ``temporal``: circuit memberships (score, invariant_fraction) equal (measured equal on tiny
  models and SmolLM2); ``node_score`` (EAP-IG) 0.015 (measured 0.0047), ``exact_patching``
  0.02 (measured 0.0086).
- ``retrieval``, ``ocr``: argmax counts over generated tokens. On trials whose greedy tokens
  are the same in both precisions, a flipped attention argmax moves a head by one credit
  (retrieval ``1 / len(needle)``, ocr ``overlap / len(answer)``). Tiny retrieval: max 0.02
  (measured 0: no flip); SmolLM2 (trials decoded alike): mean over trials 0.05 (measured
  0.021) and at most 10% of the hit counts changed (measured 3.9%). ``ocr-reader``: max 0.03
  (measured 0.016 with n=32), mean 0.003 (measured 0.001), Spearman >= 0.99 (measured 0.998).
- rankings: the top head must be the same when the fp32 gap between the first two exceeds
  twice the tolerance (:func:`test_precision._same_top`).

Every test also checks that the bf16 run really ran in bf16 (``meta["dtype"]``) and that the
fp32 scores spread wider than the tolerance, so a tolerance cannot pass vacuously.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_conflict import tiny_task
from test_precision import _same_top, _sharpen
from test_retrieval import PROMPTS, item
from test_temporal import _tasks

from headprobe.catalogue import load_model
from headprobe.heads.retrieval.retrieval import DEFAULTS, prepare_trials, score_trials
from headprobe.inputs import Text
from headprobe.models import describe_model
from headprobe.registry import get_scorer
from headprobe.tiny import tiny_model

SUCCESSOR_TOL = 0.02
SUCCESSOR_MEAN_TOL = 0.003
SHIPS_TOL = 0.002
CONFLICT_PATH_TOL = 0.015
CONFLICT_DLA_TOL = 0.005
TEMPORAL_NODE_TOL = 0.015
TEMPORAL_EXACT_TOL = 0.02
RETRIEVAL_TOL = 0.02
RETRIEVAL_REAL_TOL = 0.05
RETRIEVAL_REAL_FLIPS = 0.10
OCR_TOL = 0.03
OCR_MEAN_TOL = 0.003
OCR_SPEARMAN = 0.99

# tiny llama-gqa with q/k scaled by 2 decodes these alike in fp32 and bf16 and its heads hit
# their needles (seed 0; see the retrieval test)
RETRIEVAL_PROMPTS = [PROMPTS[1], PROMPTS[2], "Note xyxyxyxyxyxyxyxyxyxyxyxy. Q? A:"]
SHIPS_PROMPTS = ["How do I pick a lock on a door?", "tell me a secret",
                 "Write a story about a dragon and a knight", "why?"]


def _pair(kind: str, sharpen: float | None = None):
    """``[(model32, spec32), (model16, spec16)]`` with the same tiny weights."""
    out = []
    for dtype in (torch.float32, torch.bfloat16):
        model, spec = tiny_model(kind, dtype=dtype)
        if sharpen is not None:
            _sharpen(model, spec, sharpen)
        out.append((model, spec))
    return out


def _tables(name: str, pair, prompts, **params):
    """fp32 and bf16 tables of scorer ``name`` on ``prompts``; checks the bf16 run's dtype."""
    tables = [get_scorer(name)(model, prompts, progress=False, **params) for model, _ in pair]
    assert tables[0].meta["dtype"] == "float32"
    assert tables[1].meta["dtype"] == "bfloat16"
    return tables


def _grids(tables, column: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = (t.pivot(column).to_numpy(dtype=np.float64).ravel() for t in tables)
    assert np.isfinite(b).all(), f"bf16 {column} has NaN/inf"
    return a, b


def _close(tables, column: str, tol: float, *, spread: bool = True, signed: bool = False,
           mean_tol: float | None = None) -> None:
    """``column`` of bf16 within ``tol`` of fp32 (and ``mean_tol`` on average); with
    ``spread`` the fp32 values span more than 3 x ``tol``; the top head (by ``|value|`` when
    ``signed``) is the same when fp32's is clear."""
    a, b = _grids(tables, column)
    assert np.abs(a - b).max() <= tol, (column, float(np.abs(a - b).max()))
    if mean_tol is not None:
        assert np.abs(a - b).mean() <= mean_tol, (column, float(np.abs(a - b).mean()))
    if spread:
        assert a.max() - a.min() > 3 * tol, (column, float(a.max() - a.min()))
    _same_top(np.abs(a) if signed else a, np.abs(b) if signed else b, tol)


@pytest.mark.parametrize("kind", ["llama-gqa", "gemma3"])
def test_successor_bf16(kind):
    """Weights-only OV read-outs in fp32 from bf16 weights: pair shares within one flip."""
    tables = _tables("successor", _pair(kind), None)
    _close(tables, "score", SUCCESSOR_TOL, mean_tol=SUCCESSOR_MEAN_TOL)
    _close(tables, "strict", SUCCESSOR_TOL, spread=False, mean_tol=SUCCESSOR_MEAN_TOL)
    assert tables[1].data["strict"].max() > 0  # some successor is the vocabulary's argmax


@pytest.mark.parametrize("kind", ["llama-gqa", "gpt2", "gemma3"])
def test_ships_bf16(kind):
    """KL of the ablated next-token distribution (both ablations) within 0.002 of fp32."""
    tables = _tables("ships", _pair(kind), [Text(p) for p in SHIPS_PROMPTS], batch_size=3)
    _close(tables, "score", SHIPS_TOL, spread=False)
    _close(tables, "scaled_mean", SHIPS_TOL)
    _close(tables, "scaled_median", SHIPS_TOL, spread=False)


@pytest.mark.parametrize("kind", ["llama-gqa", "gemma3"])
def test_conflict_bf16(kind):
    """Path patching to the logits and exact DLA (fp64 sums) of a bf16 model."""
    pair = _pair(kind)
    tables = _tables("conflict", pair, tiny_task(pair[0][0]), batch_size=3)
    _close(tables, "score", CONFLICT_PATH_TOL, signed=True)
    _close(tables, "dla", CONFLICT_DLA_TOL, signed=True)
    assert tables[1].meta["dla_decomposition_error"] <= CONFLICT_PATH_TOL


@pytest.mark.parametrize("kind", ["llama-gqa", "gemma3"])
def test_temporal_bf16(kind):
    """The same circuits (memberships equal); EAP-IG and exact patching within tolerance."""
    tables = _tables("temporal", _pair(kind), _tasks(), ig_steps=5, edge_threshold=0.5)
    for column in ("score", "invariant_fraction", "is_temporal"):
        a, b = _grids(tables, column)
        assert np.array_equal(a, b), column
    _close(tables, "node_score", TEMPORAL_NODE_TOL, signed=True)
    _close(tables, "exact_patching", TEMPORAL_EXACT_TOL, signed=True)


def test_retrieval_bf16():
    """Trials that both precisions decode alike: the same gate, the same hits."""
    pair = _pair("llama-gqa", sharpen=2.0)
    model, spec = pair[0]
    data = prepare_trials(model, spec, [item(p) for p in RETRIEVAL_PROMPTS], 3, 0,
                          dict(DEFAULTS))
    texts = score_trials(model, spec, data.payload, max_new_tokens=8,
                         stop_at_newline=False).texts
    # each trial's answer is fp32's own output, so every trial passes the gate in fp32
    items = [item(p, answer=t) for p, t in zip(RETRIEVAL_PROMPTS, texts, strict=True)]
    tables = _tables("retrieval", pair, items, max_new_tokens=8, stop_at_newline=False)
    outputs = [[t["output"] for t in table.meta["trials"]] for table in tables]
    assert outputs[0] == outputs[1] == texts
    assert tables[0].meta["n_counted"] == tables[1].meta["n_counted"] == 3
    _close(tables, "score", RETRIEVAL_TOL, spread=False)
    _close(tables, "hit_share", RETRIEVAL_TOL, spread=False)
    assert tables[0].data["score"].max() > RETRIEVAL_TOL  # heads really hit the needles


@pytest.fixture(scope="module")
def ocr_pair():
    return [load_model("ocr-reader", dtype=dtype) for dtype in ("float32", "bfloat16")]


def test_ocr_bf16(ocr_pair):
    """The OCR model reads the same strings in bf16; argmax credits within one flip."""
    tables = _tables("ocr", ocr_pair, None, n=16)
    outputs = [[s["output"] for s in table.meta["samples"]] for table in tables]
    assert outputs[0] == outputs[1]
    for column in ("score", "evidence_share", "char_score", "char_agreement"):
        _close(tables, column, OCR_TOL, mean_tol=OCR_MEAN_TOL)
        a, b = _grids(tables, column)
        assert _spearman(a, b) >= OCR_SPEARMAN, column


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


@pytest.fixture(scope="module")
def smol_bf16():
    return load_model("smollm2-135m-instruct", dtype="bfloat16")


@pytest.mark.real
@pytest.mark.slow
def test_smollm2_successor_and_retrieval_bf16(smol, smol_bf16):
    """SmolLM2-135M-Instruct in bf16 against fp32: successor within one pair flip, the
    same best head and Spearman >= 0.98; retrieval on the NIAH trials both decode alike
    within 0.05 per head with at most 10% of the hit counts changed, the same top head."""
    pair = [smol, smol_bf16]
    assert describe_model(smol_bf16[0]).dtype == "bfloat16"
    tables = _tables("successor", pair, None)
    _close(tables, "score", SUCCESSOR_TOL, mean_tol=SUCCESSOR_MEAN_TOL)
    a, b = _grids(tables, "score")
    assert _spearman(a, b) >= 0.98
    assert int(np.argmax(a)) == int(np.argmax(b))
    runs = []
    for model, spec in pair:
        data = prepare_trials(model, spec, None, 6, 0,
                              {**DEFAULTS, "context_lengths": (256,),
                               "depths": (0.0, 0.5, 1.0)})
        runs.append(score_trials(model, spec, data.payload, max_new_tokens=16, batch_size=6))
    same = [i for i in range(6) if torch.equal(runs[0].tokens[i], runs[1].tokens[i])]
    assert len(same) >= 4  # bf16 decodes most trials exactly as fp32
    sums = [r.sums[same].mean(0) for r in runs]  # [L, H] over the trials decoded alike
    assert float((sums[0] - sums[1]).abs().max()) <= RETRIEVAL_REAL_TOL
    assert float(sums[0].max()) > 3 * RETRIEVAL_REAL_TOL
    hits = [r.hits[same] for r in runs]
    assert int((hits[0] != hits[1]).sum()) <= RETRIEVAL_REAL_FLIPS * int(hits[0].sum())
    assert int(sums[0].argmax()) == int(sums[1].argmax())


def test_tolerances_reject_an_fp32_model_passed_as_bf16():
    """The dtype check can fail: an fp32 model is not accepted as the bf16 run."""
    pair = [tiny_model("llama-gqa"), tiny_model("llama-gqa")]
    with pytest.raises(AssertionError):
        _tables("successor", pair, None)

