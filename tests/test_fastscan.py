"""Tests of headprobe.fastscan: prefix reuse is exact and the batched scan equals the loop."""

from __future__ import annotations

import pytest
import torch
from test_layers import LATE_ITEMS, LATE_PREFIX_LENGTHS, _late_batches  # shared pair data

from headprobe.errors import PromptPairError, TaskError
from headprobe.fastscan import loop_scan, scan_heads, shared_prefix_length
from headprobe.inputs import iter_batches, tokenize_prompts
from headprobe.tasks.base import TaskItem

TINY_ITEMS = [
    TaskItem("ab cd ab", "c", "x", "ab xd ab"),
    TaskItem("pq rs pq", "r", "x", "pq xs pq"),
    TaskItem("hello", "l", "o", "jello"),  # shorter: exercises padding
    TaskItem("mn op m", "n", "x", "mx op m"),
]


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma"])
@pytest.mark.parametrize("method,metric,direction", [
    ("patch", "normalized_logit_diff", "denoising"),
    ("patch", "logit_diff", "noising"),
    ("zero", "logit_diff", "denoising"),
    ("mean", "normalized_logit_diff", "denoising"),
])
def test_scan_equals_loop_tiny(fixture, method, metric, direction, request):
    model, spec = request.getfixturevalue(fixture)
    kwargs = {"method": method, "metric": metric, "direction": direction, "batch_size": 3,
              "progress": False}
    fast = scan_heads(model, TINY_ITEMS, heads_per_pass=3, **kwargs)  # uneven head chunks
    loop = loop_scan(model, TINY_ITEMS, **kwargs)
    diff = (fast["score"] - loop["score"]).abs().max()
    assert diff <= 1e-4
    assert fast["score"].abs().max() > 1e-3  # the interventions do something
    assert fast["score"].nunique() > 1
    assert len(fast) == spec.n_total_heads
    assert fast.meta["params"]["method"] == method


def test_scan_patch_metric_definition(tiny_llama):
    """Denoising one head's z is an ordinary hooked forward pass on the corrupt prompt."""
    model, spec = tiny_llama
    items = TINY_ITEMS[:2]
    table = scan_heads(model, items, metric="logit_diff", progress=False)
    clean = tokenize_prompts(model, [it.prompt for it in items], spec)
    corrupt = tokenize_prompts(model, [it.corrupt_prompt for it in items], spec)
    answer = [model.to_tokens(it.answer, prepend_bos=False)[0, 0] for it in items]
    wrong = [model.to_tokens(it.distractor, prepend_bos=False)[0, 0] for it in items]
    layer, head = 1, 2
    effects = []
    for row in range(2):
        cache: dict[str, torch.Tensor] = {}
        with torch.inference_mode(), model.hooks(fwd_hooks=[(
                spec.hooks.at("z", layer),
                lambda z, hook, cache=cache: cache.__setitem__("z", z.clone()))]):
            model(clean[row][None])

        def patch(z, hook, cache=cache):
            z = z.clone()
            z[:, :, head] = cache["z"][:, :, head]
            return z

        with torch.inference_mode():
            base = model(corrupt[row][None])[0, -1]
            with model.hooks(fwd_hooks=[(spec.hooks.at("z", layer), patch)]):
                patched = model(corrupt[row][None])[0, -1]
        effects.append(float((patched[answer[row]] - patched[wrong[row]])
                             - (base[answer[row]] - base[wrong[row]])))
    score = table.data.query("layer == @layer and head == @head")["score"].item()
    assert score == pytest.approx(sum(effects) / 2, abs=1e-5)


def test_scan_layers_subset_and_errors(tiny_llama):
    model, _ = tiny_llama
    table = scan_heads(model, TINY_ITEMS, layers=[2], method="zero", progress=False)
    assert table.data.query("layer < 2")["score"].isna().all()
    assert table.data.query("layer == 2")["score"].notna().all()
    with pytest.raises(TaskError):
        scan_heads(model, [TaskItem("ab", "c")], progress=False)
    with pytest.raises(TaskError):
        scan_heads(model, [TaskItem("ab", "c", "d")], method="patch", progress=False)
    with pytest.raises(PromptPairError):
        scan_heads(model, [TaskItem("ab", "c", "d", "abc")], progress=False)
    with pytest.raises(ValueError):
        scan_heads(model, TINY_ITEMS, method="resample", progress=False)


def test_scan_heads_refuses_gpt2(tiny_gpt2):
    model, _ = tiny_gpt2
    with pytest.raises(NotImplementedError, match="loop_scan"):
        scan_heads(model, TINY_ITEMS, progress=False)


SMOL_ITEMS = [
    TaskItem("When Mary and John went to the store, John gave a drink to", " Mary", " John",
             "When Mary and John went to the store, Tom gave a drink to"),
    TaskItem("When Alice and Bob went to the park, Bob gave a ball to", " Alice", " Bob",
             "When Alice and Bob went to the park, James gave a ball to"),
]


@pytest.mark.real
def test_scan_equals_loop_smol(smol):
    model, _ = smol
    kwargs = {"metric": "normalized_logit_diff", "layers": [1, 28], "progress": False}
    fast = scan_heads(model, SMOL_ITEMS, **kwargs)
    loop = loop_scan(model, SMOL_ITEMS, **kwargs)
    assert (fast["score"] - loop["score"]).abs().max() <= 1e-4


@pytest.mark.parametrize("metric", ["logit_diff", "normalized_logit_diff"])
def test_fastscan_agrees_with_the_patching_engine(tiny_llama, metric):
    """Two independent implementations of denoising head patching give the same table."""
    from headprobe.patching import PatchingEngine, activation_patch_heads

    model, _ = tiny_llama
    items = [item for item in TINY_ITEMS if len(item.prompt) == len(item.corrupt_prompt)]
    fast = scan_heads(model, items, method="patch", metric=metric, direction="denoising",
                      progress=False)
    engine = PatchingEngine(model, [i.prompt for i in items], [i.corrupt_prompt for i in items],
                            [i.answer for i in items], [i.distractor for i in items])
    reference = activation_patch_heads(engine, metric=metric, direction="denoising",
                                       progress=False)
    column = "effect" if metric == "logit_diff" else "score"
    torch.testing.assert_close(torch.tensor(fast["score"].to_numpy(), dtype=torch.float64),
                               torch.tensor(reference[column].to_numpy(), dtype=torch.float64),
                               atol=1e-4, rtol=1e-4)


def test_shared_prefix_length(tiny_llama):
    model, spec = tiny_llama
    lengths = [shared_prefix_length(clean, corrupt)
               for clean, corrupt in _late_batches(model, spec, 3)]
    assert lengths == LATE_PREFIX_LENGTHS
    clean, corrupt = _late_batches(model, spec, 5)[0]
    assert shared_prefix_length(clean, corrupt) == 10
    assert shared_prefix_length(clean, clean) == int(clean.last.min())  # identical: last token
    left = next(iter_batches(tokenize_prompts(model, ["ab", "abc"], spec), 2,
                             padding_side="left"))
    assert shared_prefix_length(left, left) == 0  # prompts do not all start at position 0


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma", "tiny_sliding_gemma"])
@pytest.mark.parametrize("metric,direction", [
    ("normalized_logit_diff", "denoising"),
    ("logit_diff", "noising"),
])
def test_scan_with_shared_prefix_equals_loop(fixture, metric, direction, request):
    """Pairs that differ late: the scan skips the shared prefix and still equals the loop."""
    model, _ = request.getfixturevalue(fixture)
    kwargs = {"method": "patch", "metric": metric, "direction": direction, "batch_size": 3,
              "progress": False}
    fast = scan_heads(model, LATE_ITEMS, heads_per_pass=3, **kwargs)
    loop = loop_scan(model, LATE_ITEMS, **kwargs)
    assert fast.meta["shared_prefix_lengths"] == LATE_PREFIX_LENGTHS
    assert loop.meta["shared_prefix_lengths"] == [0, 0]
    assert (fast["score"] - loop["score"]).abs().max() <= 1e-4
    assert fast["score"].abs().max() > 1e-3
    assert (fast["mean_ld"] - loop["mean_ld"]).abs().max() <= 1e-4


def test_prefix_reuse_with_a_layer_subset(tiny_llama):
    """Scanning layers that exclude layer 0 still records the shared prefix from layer 0."""
    model, _ = tiny_llama
    fast = scan_heads(model, LATE_ITEMS, method="patch", metric="logit_diff", layers=[1, 2],
                      progress=False)
    loop = loop_scan(model, LATE_ITEMS, method="patch", metric="logit_diff", layers=[1, 2],
                     progress=False)
    assert fast.meta["shared_prefix_lengths"] and max(fast.meta["shared_prefix_lengths"]) > 0
    assert fast["score"].isna().sum() == 4  # layer 0 not scanned
    assert (fast["score"] - loop["score"]).abs().max() <= 1e-4


def test_direction_has_one_spelling(tiny_llama):
    """``denoising`` / ``noising`` as in the patching engine; the old short forms are refused."""
    model, _ = tiny_llama
    for old in ("noise", "denoise"):
        with pytest.raises(ValueError, match="'denoising' or 'noising'"):
            scan_heads(model, LATE_ITEMS, method="patch", direction=old, progress=False,
                       metric="logit_diff", layers=[2])
    noising = scan_heads(model, LATE_ITEMS, method="patch", direction="noising",
                         progress=False, metric="logit_diff", layers=[2])
    denoising = scan_heads(model, LATE_ITEMS, method="patch", direction="denoising",
                           progress=False, metric="logit_diff", layers=[2])
    assert noising.meta["params"]["direction"] == "noising"
    assert not noising["score"].equals(denoising["score"])


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma"])
def test_fast_mean_ablation_equals_the_mean_intervention(fixture, request):
    """The fast scan's mean ablation of one head is ``intervene(..., "mean",
    per_position=False)`` with the task's prompts as reference, in a plain forward pass."""
    from headprobe.interventions import intervene
    from headprobe.runtime.forward import forward_batch

    model, spec = request.getfixturevalue(fixture)
    layer, head = 1, 2
    table = scan_heads(model, TINY_ITEMS, method="mean", metric="logit_diff", layers=[layer],
                       batch_size=3, progress=False)
    prompts = [item.prompt for item in TINY_ITEMS]
    lists = tokenize_prompts(model, prompts, spec)
    answers = [model.to_tokens(it.answer, prepend_bos=False)[0, 0] for it in TINY_ITEMS]
    wrong = [model.to_tokens(it.distractor, prepend_bos=False)[0, 0] for it in TINY_ITEMS]
    ablated, effects = [], []
    for row, ids in enumerate(lists):  # one prompt per forward: no padding
        (batch,) = list(iter_batches([ids], 1))
        with torch.inference_mode():
            base = forward_batch(model, batch)[0, -1]
        with (intervene(model, [(layer, head)], "mean", reference=prompts, per_position=False),
              torch.inference_mode()):
            logits = forward_batch(model, batch)[0, -1]
        ld = float(logits[answers[row]] - logits[wrong[row]])
        ablated.append(ld)
        effects.append(ld - float(base[answers[row]] - base[wrong[row]]))
    got = table.data.query("layer == @layer and head == @head")
    assert got["mean_ld"].item() == pytest.approx(sum(ablated) / len(ablated), abs=1e-5)
    assert got["score"].item() == pytest.approx(sum(effects) / len(effects), abs=1e-5)
    assert abs(got["score"].item()) > 1e-3  # the ablation acts
