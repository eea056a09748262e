"""bf16 against fp32: every scorer and causal engine on tiny models built in each dtype.

Activations stay in the model's dtype; reductions run in float32 or float64 (attention mass,
logit differences, KL, DLA sums, scan and attribution sums). The same random weights are built
in fp32 and in bf16 (:func:`headprobe.tiny.tiny_model` with ``dtype``), and every score is
compared. Tolerances (absolute; the bf16 mantissa has 8 bits, a relative step of 2^-8 = 0.004):

- attention-pattern scorers and the sink share (scores in [0, 1], spread over >= 0.02 on the
  sharpened tiny models): 0.005; measured <= 0.002;
- per-head DLA: 0.02 (heads up to ~0.6 logits; measured <= 0.006); the bf16 decomposition
  error, which includes the bf16 logits themselves: 0.03 (measured <= 0.008);
- activation and path patching, fast scans and EAP-IG in logit-difference units (effects up
  to ~0.5 logits): 0.03 (measured <= 0.012); KL: 0.005 (measured <= 0.001);
- the fast scan against the loop, both in bf16: 1e-3 (same dtype, same arithmetic);
- rankings: the top head is the same when the fp32 gap between the first two exceeds twice
  the tolerance.

The random tiny models attend almost uniformly, so before the pattern scorers run, their
queries and keys are scaled up (a sharper softmax gives larger, more spread scores).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headprobe import patching as P
from headprobe import scan
from headprobe.attribution import attribution_patching
from headprobe.fastscan import loop_scan, scan_heads
from headprobe.scorers.dla import attribute
from headprobe.tasks.base import TaskItem
from headprobe.tiny import tiny_model
from headprobe.weights import hf_module

PATTERN_TOL = 0.005
DLA_TOL = 0.02
LD_TOL = 0.03
KL_TOL = 0.005

ITEMS = [
    TaskItem("ab cd ab", "c", "x", "ab xd ab"),
    TaskItem("pq rs pq", "r", "x", "pq xs pq"),
    TaskItem("hello", "l", "o", "jello"),
    TaskItem("mn op m", "n", "x", "mx op m"),
]
DLA_ITEMS = [
    TaskItem("The capital of France is", "P", "R"),
    TaskItem("Rome is in", "I", "F"),
    TaskItem("abc def ghij", "k", "z"),
]


def _pair(kind: str, sharpen: bool = False):
    """The same tiny model in fp32 and in bf16: ``((model32, spec32), (model16, spec16))``."""
    out = []
    for dtype in (torch.float32, torch.bfloat16):
        model, spec = tiny_model(kind, dtype=dtype)
        if sharpen:
            _sharpen(model, spec)
        out.append((model, spec))
    return out


def _sharpen(model, spec, factor: float = 4.0) -> None:
    """Scale queries and keys by ``factor`` (attention scores by ``factor**2``)."""
    facts = spec.facts
    with torch.no_grad():
        for layer in range(spec.n_layers):
            attn = hf_module(model, f"{facts.layers_path}.{layer}.{facts.attention_module}")
            if facts.has_qk_norm:  # normalised q/k: scale the norms' gains instead
                for name in ("q_norm", "k_norm"):
                    weight = getattr(attn, name).weight
                    weight.copy_((facts.norm_weight_offset + weight) * factor
                                 - facts.norm_weight_offset)
            elif facts.q_proj == facts.k_proj:  # GPT-2: one c_attn [d, 3d] (q | k | v)
                getattr(attn, facts.q_proj).weight[:, : 2 * spec.d_model] *= factor
            else:
                getattr(attn, facts.q_proj).weight.mul_(factor)
                getattr(attn, facts.k_proj).weight.mul_(factor)


def _same_top(reference: np.ndarray, other: np.ndarray, tol: float) -> None:
    order = np.argsort(-reference)
    if reference[order[0]] - reference[order[1]] > 2 * tol:
        assert int(np.argmax(other)) == int(order[0])


KINDS = ["llama-gqa", "gpt2", "gemma3"]


@pytest.fixture(scope="module", params=KINDS)
def sharp_pair(request):
    return _pair(request.param, sharpen=True)


@pytest.fixture(scope="module", params=KINDS)
def plain_pair(request):
    return _pair(request.param)


@pytest.mark.parametrize("scorer", ["previous_token", "duplicate_token", "induction", "sink"])
def test_pattern_scorers_bf16(sharp_pair, scorer):
    """Attention-mass scores within 0.005 of fp32; the top head equal when clear."""
    (m32, _), (m16, spec16) = sharp_pair
    assert spec16.dtype == "bfloat16"
    a = scan(m32, scorer, n=4, progress=False)["score"].to_numpy()
    b = scan(m16, scorer, n=4, progress=False)["score"].to_numpy()
    assert np.isfinite(b).all()
    assert np.abs(a - b).max() <= PATTERN_TOL
    assert a.max() - a.min() > 3 * PATTERN_TOL  # scores spread wider than the tolerance
    _same_top(a, b, PATTERN_TOL)


def test_dla_bf16(plain_pair):
    """Per-head DLA within 0.02 of fp32 (float64 sums); the bf16 decomposition holds to 0.03."""
    (m32, _), (m16, _) = plain_pair
    a, b = attribute(m32, DLA_ITEMS), attribute(m16, DLA_ITEMS)
    assert b.heads.dtype == torch.float64
    assert float((a.heads - b.heads).abs().max()) <= DLA_TOL
    assert float(a.heads.abs().max()) > 10 * DLA_TOL
    assert float(b.error.abs().max()) <= LD_TOL
    assert float((a.measured - b.measured).abs().max()) <= LD_TOL
    _same_top(a.heads.mean(0).reshape(-1).numpy(), b.heads.mean(0).reshape(-1).numpy(),
              DLA_TOL)


def _engine(model):
    return P.PatchingEngine(model, [i.prompt for i in ITEMS], [i.corrupt_prompt for i in ITEMS],
                            [i.answer for i in ITEMS], [i.distractor for i in ITEMS])


def test_patching_engine_and_path_patching_bf16(plain_pair):
    """Activations cached in bf16, metrics in fp32: activation patching (logit difference,
    KL) and path patching within the tolerances of fp32."""
    (m32, _), (m16, spec) = plain_pair
    e32, e16 = _engine(m32), _engine(m16)
    z_hook = spec.hooks.at("z", 0)
    assert e16.activations("clean", z_hook, 0).dtype == torch.bfloat16
    assert e16.clean_final.dtype == torch.float32
    for metric, tol in (("logit_diff", LD_TOL), ("kl", KL_TOL)):
        a = P.activation_patch_heads(e32, metric=metric, progress=False)["score"].to_numpy()
        b = P.activation_patch_heads(e16, metric=metric, progress=False)["score"].to_numpy()
        assert np.abs(a - b).max() <= tol, metric
        _same_top(np.abs(a), np.abs(b), tol)
    a = P.path_patch_senders(e32, metric="logit_diff", progress=False)["score"].to_numpy()
    b = P.path_patch_senders(e16, metric="logit_diff", progress=False)["score"].to_numpy()
    assert np.abs(a - b).max() <= LD_TOL
    assert np.abs(a).max() > LD_TOL


@pytest.mark.parametrize("kind", ["llama-gqa", "gemma3"])
def test_fastscan_and_eap_bf16(kind):
    """The fast scan with the eager attention equals the loop in bf16 (1e-3: the same
    kernels); with the fused sdpa attention (the default) it is within the bf16 tolerance
    of the loop (0.03: another kernel, rounded in bf16), and within 0.03 of fp32; EAP-IG
    node and edge scores within 0.03 of fp32."""
    (m32, _), (m16, _) = _pair(kind)
    for method in ("patch", "mean"):
        kwargs = {"method": method, "metric": "logit_diff", "progress": False}
        a = scan_heads(m32, ITEMS, **kwargs)["score"].to_numpy()
        b = scan_heads(m16, ITEMS, **kwargs)["score"].to_numpy()
        eager = scan_heads(m16, ITEMS, fused=False, **kwargs)["score"].to_numpy()
        loop = loop_scan(m16, ITEMS, **kwargs)["score"].to_numpy()
        assert np.abs(eager - loop).max() <= 1e-3
        assert np.abs(b - loop).max() <= LD_TOL
        assert np.abs(a - b).max() <= LD_TOL
        assert np.abs(a).max() > 3 * LD_TOL
        _same_top(np.abs(a), np.abs(b), LD_TOL)
    a = attribution_patching(m32, ITEMS, steps=5, progress=False)
    b = attribution_patching(m16, ITEMS, steps=5, progress=False)
    za, zb = a.nodes["z"]["score"].to_numpy(), b.nodes["z"]["score"].to_numpy()
    assert np.abs(za - zb).max() <= LD_TOL and np.abs(za).max() > 3 * LD_TOL
    assert np.abs(a.edges.score.to_numpy() - b.edges.score.to_numpy()).max() <= LD_TOL
    assert b.meta["model_spec"]["dtype"] == "bfloat16"
