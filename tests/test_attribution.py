"""Tests of headprobe.attribution: attribution patching against exact patching."""

from __future__ import annotations

import pytest
import torch

from headprobe.attribution import agreement, attribution_patching, compare_to_exact
from headprobe.attribution.engine import attribute_with_alphas
from headprobe.errors import UsageError
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
    ig = attribute_with_alphas(model, ITEMS, alphas=[k / 60 for k in range(1, 61)], edges=True,
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
    from headprobe.attribution import common, inputs_ig

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
    with common.gradient_mode(model):
        up = common.collect_upstream(model, spec, batch, a[None], d[None])
        grads = inputs_ig.integrated_grads(model, spec, batch, up.resid_pre[0], up.resid_pre[0],
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


# ---------------------------------------------------------------------------------------------
# EAP-IG over activations (method="eap-ig-act") and the agreement helpers


def _mean_ld(model, spec, hooks_for):
    """Mean LD of ITEMS' clean prompts (one right-padded batch) under ``hooks_for(store)``,
    where ``store`` holds the clean and corrupt runs' z / resid_mid / resid_post."""
    from headprobe.inputs import iter_batches
    from headprobe.metrics import final_logits, logit_difference
    from headprobe.runtime.forward import forward_batch
    from headprobe.runtime.hooks import attached, capture
    from headprobe.tasks.pairs import prepare_scan_data

    data = prepare_scan_data(model, ITEMS, need_corrupt=True)
    clean = next(iter_batches(data.clean, 8))
    corrupt = next(iter_batches(data.corrupt, 8))
    names = [spec.hooks.at(kind, layer) for kind in ("z", "resid_mid", "resid_post")
             for layer in range(spec.n_layers)]
    store = {}
    for label, batch in (("clean", clean), ("corrupt", corrupt)):
        with torch.no_grad(), capture(model, names) as seen:
            forward_batch(model, batch)
        store[label] = dict(seen)
    with torch.no_grad(), attached(model, hooks_for(store)):
        logits = forward_batch(model, clean)
    ld = logit_difference(final_logits(logits, clean.last), data.answers, data.distractors)
    return float(ld.mean())


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma"])
def test_eap_ig_act_layer_sums_equal_exact_layer_patch(fixture, request):
    """IG completeness: over one site's straight path, sum_u (a_u^corr - a_u^clean) . mean
    gradient -> M(clean with the whole site from the corrupt run) - M(clean). So with many
    midpoint steps the z-node scores of one layer sum to the exact effect of noising all of
    that layer's heads at once, and the edges out of MLP l to the exact effect of noising
    MLP l's output (all downstream recomputed)."""
    model, spec = request.getfixturevalue(fixture)
    result = attribution_patching(model, ITEMS, method="eap-ig-act", steps=40, progress=False)
    base = _mean_ld(model, spec, lambda store: [])
    assert result.meta["mean_ld_clean"] == pytest.approx(base, abs=1e-4)
    z_frame = result.nodes["z"].data
    errors, eap_errors, scale = [], [], 0.0
    eap = attribution_patching(model, ITEMS, method="eap", progress=False)
    for layer in range(spec.n_layers):
        z_name = spec.hooks.at("z", layer)

        def patch_z(store, z_name=z_name):
            return [(z_name, lambda z, hook: store["corrupt"][z_name])]

        exact = _mean_ld(model, spec, patch_z) - base
        estimate = float(z_frame[z_frame.layer == layer].score.sum())
        eap_estimate = float(eap.nodes["z"].data.query("layer == @layer").score.sum())
        mid, post = spec.hooks.at("resid_mid", layer), spec.hooks.at("resid_post", layer)

        def patch_mlp(store, mid=mid, post=post):
            shift = (store["corrupt"][post] - store["corrupt"][mid]
                     - store["clean"][post] + store["clean"][mid])
            return [(post, lambda x, hook: x + shift)]

        exact_mlp = _mean_ld(model, spec, patch_mlp) - base
        edges = result.edges
        estimate_mlp = float(edges[edges.upstream == f"m{layer}"].score.sum())
        errors += [abs(estimate - exact), abs(estimate_mlp - exact_mlp)]
        eap_errors.append(abs(eap_estimate - exact))
        scale = max(scale, abs(exact), abs(exact_mlp))
    assert scale > 1e-3
    assert max(errors) <= 0.01 * scale
    assert max(eap_errors) > 10 * max(errors)  # first order alone is visibly worse


@pytest.mark.parametrize("method", ["eap-ig", "eap-ig-act", "eap-ig-act-head"])
def test_edges_add_up_to_nodes(method, tiny_llama):
    """On a model without post-attention norm a head's write is linear in its z, so the
    edges out of head h (gradients at the downstream residual copies) sum to its z-node
    score (gradient at z); input nodes are the sums of their incoming edges."""
    model, spec = tiny_llama
    result = attribution_patching(model, ITEMS, method=method, steps=5, progress=False)
    edges = result.edges
    for row in result.nodes["z"].data.itertuples():
        out = edges[edges.upstream == f"a{row.layer}.h{row.head}"].score.sum()
        assert out == pytest.approx(row.score, abs=1e-5)
    q = result.nodes["q"].data.query("layer == 1 and head == 0").score.item()
    assert edges[edges.downstream == "a1.h0.q"].score.sum() == pytest.approx(q, abs=1e-5)
    passes = 5 if method == "eap-ig" else 2 * spec.n_layers + 1
    assert result.meta["backward_passes"] == passes


def test_eap_ig_act_is_closer_to_exact_than_eap(tiny_gemma):
    model, _ = tiny_gemma
    act = compare_to_exact(model, ITEMS, method="eap-ig-act", steps=10, top_k=5)
    eap = compare_to_exact(model, ITEMS, method="eap", top_k=5, exact=act.exact)
    assert act.n_heads == len(act.exact)
    assert act.pearson > eap.pearson
    assert set(act.as_dict()) >= {"pearson", "spearman", "top_k_overlap", "seconds_exact"}


def test_agreement_and_bad_arguments(tiny_llama):
    model, _ = tiny_llama
    scores = agreement([3.0, -2.0, 0.1, 0.2], [2.5, -2.5, 0.2, 0.1], top_k=2)
    assert scores["top_k_overlap"] == 2
    assert scores["spearman"] == pytest.approx(0.8)
    assert agreement([1.0, 0.0, 0.5], [0.0, 1.0, 0.5], top_k=1)["top_k_overlap"] == 0
    with pytest.raises(UsageError):
        agreement([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(UsageError):
        agreement([1.0, float("nan")], [1.0, 2.0])
    for method, steps in (("eap-ig-inputs", 5), ("EAP", 5), ("eap-ig-act", 0),
                          ("eap-ig-act", 101), ("eap-ig", 1)):
        with pytest.raises(UsageError):
            attribution_patching(model, ITEMS, method=method, steps=steps, progress=False)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma"])
def test_eap_ig_act_head_converges_to_exact_noising(fixture, request):
    """One head's own straight path is the noising intervention itself, so per-head activation
    IG tends to exact per-head noising patching (completeness; midpoint rule, O(1/m^2)),
    where one-step EAP stays off by its second-order term."""
    model, _ = request.getfixturevalue(fixture)
    act = compare_to_exact(model, ITEMS, method="eap-ig-act-head", steps=6)
    eap = compare_to_exact(model, ITEMS, method="eap", exact=act.exact)
    exact = act.exact.data["score"].to_numpy()
    error = abs(act.estimate.data["score"].to_numpy() - exact).max()
    eap_error = abs(eap.estimate.data["score"].to_numpy() - exact).max()
    assert abs(exact).max() > 1e-2
    assert error <= 0.005 * abs(exact).max()
    assert eap_error > 10 * error
