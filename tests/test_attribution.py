"""Tests of headprobe.attribution: attribution patching against exact patching."""

from __future__ import annotations

import pytest
import torch

from headprobe.attribution import _attribute, attribution_patching
from headprobe.fastscan import scan_heads
from headprobe.tasks.base import TaskItem

ITEMS = [
    TaskItem("ab cd ab", "c", "x", "ab xd ab"),
    TaskItem("pq rs pq", "r", "x", "pq xs pq"),
    TaskItem("hello", "l", "o", "jello"),
]


def _embed_total(result):
    edges = result.edges
    return float(edges[edges.upstream == "embed"].score.sum())


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma"])
def test_eap_ig_converges_to_exact_input_patch_better_than_eap(fixture, request):
    """The embedding's edges sum to (e_corrupt - e_clean) . mean gradient; with integrated
    gradients this tends to the exact effect of patching the whole input,
    LD_corrupt - LD_clean (completeness), which one-step EAP misses on a nonlinear model."""
    model, _ = request.getfixturevalue(fixture)
    eap = attribution_patching(model, ITEMS, method="eap", progress=False)
    ig = _attribute(model, ITEMS, alphas=[k / 60 for k in range(1, 61)], edges=True,
                    batch_size=8, progress=False, method="eap-ig")
    exact = ig.meta["mean_ld_corrupt"] - ig.meta["mean_ld_clean"]
    error_ig = abs(_embed_total(ig) - exact)
    error_eap = abs(_embed_total(eap) - exact)
    assert error_ig < 0.1 * abs(exact) + 1e-3
    assert error_ig < error_eap


def test_attribution_matches_exact_patching_when_nearly_linear(tiny_llama):
    """A corrupt input a tiny step from the clean one: first order is accurate, so EAP's z
    node scores equal exact (noising) activation patching of each head up to O(step^2)."""
    model, spec = tiny_llama
    from headprobe import attribution as attr

    eps = 1e-3
    items = ITEMS[:1]
    clean_embed = {}

    # exact: nudge resid_pre[0] in a plain forward pass, patch each head's z from it
    from headprobe.inputs import iter_batches, tokenize_prompts

    tokens = tokenize_prompts(model, [items[0].prompt], spec)
    batch = next(iter_batches(tokens, 1))
    gen = torch.Generator().manual_seed(0)
    direction = torch.randn(1, batch.seq_len, spec.d_model, generator=gen)
    a = model.to_tokens(items[0].answer, prepend_bos=False)[0, 0]
    d = model.to_tokens(items[0].distractor, prepend_bos=False)[0, 0]

    def run(z_patch=None, nudge=False):
        store = {}
        hooks = [(spec.hooks.at("resid_pre", 0),
                  lambda x, hook: clean_embed.setdefault("e", x.clone()) + eps * direction
                  if nudge else None)]
        for layer in range(spec.n_layers):
            hooks.append((spec.hooks.at("z", layer),
                          lambda z, hook, layer=layer: store.__setitem__(layer, z.clone())))
        if z_patch is not None:
            layer, head, value = z_patch

            def patch(z, hook):
                z = z.clone()
                z[:, :, head] = value[:, :, head]
                return z

            hooks.append((spec.hooks.at("z", layer), patch))
        with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
            logits = model(batch.tokens)[0, -1]
        return float(logits[a] - logits[d]), store

    base, clean_z = run()
    _, corrupt_z = run(nudge=True)
    exact = torch.zeros(spec.n_layers, spec.n_heads)
    for layer in range(spec.n_layers):
        for head in range(spec.n_heads):
            value, _ = run((layer, head, corrupt_z[layer]))
            exact[layer, head] = value - base
    # first-order estimate from the attribution engine's gradients at the clean run
    with attr._gradient_mode(model):
        up = attr._collect_upstream(model, spec, batch, a[None], d[None])
        grads = attr._integrated_grads(model, spec, batch, up.resid_pre[0], up.resid_pre[0],
                                       a[None], d[None], [1.0])
    estimate = torch.stack([((corrupt_z[layer] - clean_z[layer]) * grads.z[layer]).sum((0, 1, 3))
                            for layer in range(spec.n_layers)])
    scale = exact.abs().max()
    assert scale > 0
    assert (estimate - exact).abs().max() <= 0.02 * scale


def test_node_shapes_gqa_and_state_restored(tiny_llama):
    model, spec = tiny_llama
    before = [p.requires_grad for p in model.parameters()]
    split = model.cfg.use_split_qkv_input
    result = attribution_patching(model, ITEMS, steps=5, progress=False)
    assert [p.requires_grad for p in model.parameters()] == before
    assert model.cfg.use_split_qkv_input == split
    assert len(result.nodes["z"]) == len(result.nodes["q"]) == spec.n_layers * spec.n_heads
    for kind in ("k", "v"):
        frame = result.nodes[kind].data
        assert len(frame) == spec.n_layers * spec.n_kv_heads
        assert frame.groupby("layer").size().eq(spec.n_kv_heads).all()
    edges = result.edges
    assert set(edges.columns) >= {"upstream", "downstream", "score"}
    assert not ((edges.upstream == "a2.h0") & (edges.downstream == "a1.h0.q")).any()
    assert ((edges.upstream == "a1.h0") & (edges.downstream == "m1")).any()
    assert torch.isfinite(torch.tensor(edges.score.to_numpy())).all()


def test_steps_validation(tiny_llama):
    model, _ = tiny_llama
    with pytest.raises(ValueError):
        attribution_patching(model, ITEMS, steps=4, progress=False)
    with pytest.raises(ValueError):
        attribution_patching(model, ITEMS, steps=101, progress=False)
    with pytest.raises(ValueError):
        attribution_patching(model, ITEMS, method="acdc", progress=False)


def test_eap_z_scores_track_exact_patching_gemma(tiny_gemma):
    model, _ = tiny_gemma
    exact = scan_heads(model, ITEMS, method="patch", direction="noising", metric="logit_diff",
                       progress=False)
    result = attribution_patching(model, ITEMS, steps=20, edges=False, progress=False)
    corr = torch.corrcoef(torch.stack([torch.tensor(exact["score"].to_numpy()),
                                       torch.tensor(result.nodes["z"]["score"].to_numpy())]))
    assert corr[0, 1] > 0.5
