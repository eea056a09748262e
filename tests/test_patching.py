"""Tests of headprobe.patching (activation and path patching) and the IOI task."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headprobe import patching as P
from headprobe.errors import HeadIndexError, MetricError, PromptPairError, TaskError
from headprobe.headtable import HeadTable
from headprobe.tasks import get_task, list_tasks
from headprobe.tasks import ioi as ioi_task
from headprobe.tiny import tiny_model

# Character-level prompts (the tiny models' tokenizer is per character): pair i differs in
# one character, and pairs have different lengths (so batches are padded).
CLEAN = ["abcab", "xyzxy", "hello w", "qwerty"]
CORRUPT = ["abcac", "xyzxz", "hellp w", "qwertz"]
ANSWER = ["c", "z", "o", "t"]
DISTRACTOR = ["b", "y", "a", "e"]

# Same-length pairs that differ only at character 3 (token 4, after BOS).
SAME_CLEAN = ["abcdef", "uvwxyz", "mnopqr"]
SAME_CORRUPT = ["abcXef", "uvwQyz", "mnoZqr"]
SAME_ANSWER = ["g", "a", "s"]
SAME_DISTRACTOR = ["h", "b", "t"]
CHANGED = 4


def engine_for(model, batch_size: int = 4, same: bool = False) -> P.PatchingEngine:
    if same:
        return P.PatchingEngine(model, SAME_CLEAN, SAME_CORRUPT, SAME_ANSWER, SAME_DISTRACTOR,
                                batch_size=batch_size)
    return P.PatchingEngine(model, CLEAN, CORRUPT, ANSWER, DISTRACTOR, batch_size=batch_size)


@pytest.fixture(scope="module", params=["llama-gqa", "gpt2", "gemma3"])
def tiny(request):
    return tiny_model(request.param)


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama-gqa")


# ---------------------------------------------------------------------------------------------
# Activation patching identities


def test_self_patch_changes_nothing(tiny):
    model, spec = tiny
    engine = engine_for(model)
    clean_ld, _ = engine.baseline_values("logit_diff")
    every_head = [P.head_z(spec, layer, range(spec.n_heads)) for layer in range(spec.n_layers)]
    for setters in ([P.head_z(spec, 1, 2)], every_head, [P.head_k(spec, 0, 0)]):
        values = engine.run_values(setters, target="clean", source="clean", metric="logit_diff")
        torch.testing.assert_close(values, clean_ld, atol=1e-5, rtol=0)
    assert engine.run([P.head_z(spec, 0, 1)], target="clean",
                      source="clean") == pytest.approx(1.0, abs=1e-5)
    assert engine.run([P.head_z(spec, 0, 1)], target="clean", source="clean",
                      metric="kl") == pytest.approx(0.0, abs=1e-6)


def test_full_residual_patch_recovers_clean(tiny):
    model, spec = tiny
    engine = engine_for(model, batch_size=3)
    clean_ld, _ = engine.baseline_values("logit_diff")
    last = spec.n_layers - 1
    setter_lists = [[P.resid(spec, layer, "pre")] for layer in range(spec.n_layers)]
    setter_lists += [[P.resid(spec, last, "post")], [P.resid(spec, last, "post", "last")],
                     [P.resid(spec, 1, "post")]]
    for setters in setter_lists:
        values = engine.run_values(setters, metric="logit_diff")  # denoising: corrupt target
        torch.testing.assert_close(values, clean_ld, atol=1e-4, rtol=0)
        assert engine.aggregate("normalized_logit_diff", values) == pytest.approx(1.0, abs=1e-4)
    assert engine.run(setter_lists[0], metric="kl") == pytest.approx(0.0, abs=1e-5)
    # Noising with the full residual gives exactly the corrupt behaviour.
    assert engine.run([P.resid(spec, 0, "pre")], target="clean",
                      source="corrupt") == pytest.approx(0.0, abs=1e-4)


def test_every_head_and_mlp_of_last_layer_plus_its_input_recovers_clean(llama):
    model, spec = llama
    engine = engine_for(model)
    last = spec.n_layers - 1
    setters = [P.resid(spec, last, "pre"), P.head_z(spec, last, range(spec.n_heads)),
               P.mlp_out(spec, last)]
    assert engine.run(setters) == pytest.approx(1.0, abs=1e-4)
    # Patching only the heads of every layer is not a full patch: embeddings and MLPs
    # still see the corrupt input.
    heads_only = [P.head_z(spec, layer, range(spec.n_heads)) for layer in range(spec.n_layers)]
    assert abs(engine.run(heads_only) - 1.0) > 1e-3


def test_activation_patch_heads_table(llama):
    model, spec = llama
    engine = engine_for(model)
    table = P.activation_patch_heads(engine, progress=False)
    assert isinstance(table, HeadTable)
    assert len(table) == spec.n_heads * spec.n_layers
    assert np.isfinite(table["score"]).all()
    assert table.meta["params"]["direction"] == "denoising"
    assert table.meta["baseline"]["clean"] == pytest.approx(1.0)
    np.testing.assert_allclose(table["effect"], table["score"])  # unpatched corrupt = 0
    # One cell equals a direct engine run.
    direct = engine.run([P.head_z(spec, 1, 3)])
    assert table.pivot().loc[1, 3] == pytest.approx(direct, abs=1e-6)
    # A layer subset leaves the other layers NaN; noising's unpatched value is 1.
    noising = P.activation_patch_heads(engine, direction="noising", layers=[2], progress=False)
    grid = noising.pivot().to_numpy()
    assert np.isnan(grid[:2]).all() and np.isfinite(grid[2]).all()
    assert noising.meta["unpatched"] == pytest.approx(1.0)


def test_batching_and_padding_do_not_change_results(llama):
    model, _spec = llama
    one = P.activation_patch_heads(engine_for(model, batch_size=1), layers=[1],
                                   progress=False)
    padded = P.activation_patch_heads(engine_for(model, batch_size=3), layers=[1],
                                      progress=False)
    np.testing.assert_allclose(one["score"], padded["score"], atol=1e-4)


def test_per_position_structure(tiny):
    model, spec = tiny
    engine = engine_for(model, same=True)
    last = spec.n_layers - 1
    frame = P.activation_patch_heads_by_position(engine, layers=[0, last], progress=False)
    n_tokens = len(SAME_CLEAN[0]) + 1
    grid = P.position_grid(frame, spec=spec)
    assert grid.shape == (spec.n_layers, spec.n_heads, n_tokens)
    assert np.isnan(grid[1:last]).all()
    grid = grid[[0, last]]
    assert list(frame.columns) == ["layer", "head", "kv_head", "position", "token", "score",
                                   "effect"]
    # Before the changed token, clean and corrupt activations are identical (causal model):
    # patching there does nothing.
    np.testing.assert_allclose(grid[:, :, :CHANGED], 0.0, atol=1e-5)
    # A last-layer head only matters at the final position, where it equals the all-position
    # patch.
    np.testing.assert_allclose(grid[1, :, :-1], 0.0, atol=1e-5)
    all_pos = P.activation_patch_heads(engine, layers=[last], progress=False).pivot()
    np.testing.assert_allclose(grid[1, :, -1], all_pos.loc[last].to_numpy(), atol=1e-5)


def test_per_position_needs_equal_lengths(llama):
    model, _ = llama
    with pytest.raises(PromptPairError, match="same token length"):
        P.activation_patch_heads_by_position(engine_for(model), progress=False)


# ---------------------------------------------------------------------------------------------
# Path patching


@pytest.mark.parametrize("direction", ["noising", "denoising"])
def test_path_patch_last_layer_sender_equals_activation_patching(tiny, direction):
    """Nothing after the last layer's heads can be frozen, so path patching a last-layer
    sender to the end is activation patching it."""
    model, spec = tiny
    engine = engine_for(model, batch_size=3)
    last = spec.n_layers - 1
    path = P.path_patch_senders(engine, "end", direction=direction, layers=[last],
                                progress=False)
    act = P.activation_patch_heads(engine, direction=direction, layers=[last], progress=False)
    np.testing.assert_allclose(path.pivot().loc[last], act.pivot().loc[last], atol=1e-5)
    for metric in ("logit_diff", "kl", "probability"):
        target, source = ("clean", "corrupt") if direction == "noising" else ("corrupt", "clean")
        assert P.path_patch(engine, [(last, 1)], metric=metric, direction=direction) == \
            pytest.approx(engine.run([P.head_z(spec, last, 1)], target=target, source=source,
                                     metric=metric), abs=1e-5)


def test_path_patch_all_senders_table(llama):
    model, _spec = llama
    engine = engine_for(model)
    table = P.path_patch_senders(engine, progress=False)
    assert isinstance(table, HeadTable) and np.isfinite(table["score"]).all()
    assert table.meta["params"]["receivers"] == "end"
    assert table.meta["unpatched"] == pytest.approx(1.0)  # noising: clean
    # Earlier-layer senders differ from activation patching (their indirect paths through
    # later heads are frozen).
    act = P.activation_patch_heads(engine, direction="noising", layers=[0], progress=False)
    assert not np.allclose(table.pivot().loc[0], act.pivot().loc[0], atol=1e-4)


def test_path_patch_q_receivers_change_only_receiver_queries(tiny):
    model, spec = tiny
    engine = engine_for(model, batch_size=len(CLEAN))  # one batch: observed = everything
    q_hook, k_hook = spec.hooks.at("q", 2), spec.hooks.at("k", 2)
    result = P.path_patch_values(engine, [(0, 2)], [P.Receiver("q", 2, 1)],
                                 observe=[q_hook, k_hook, spec.hooks.at("z", 1)])
    clean_q = engine.activations("clean", q_hook, 0)
    clean_k = engine.activations("clean", k_hook, 0)
    q = result.receiver_acts[q_hook]
    others = [h for h in range(spec.n_heads) if h != 1]
    torch.testing.assert_close(q[:, :, others], clean_q[:, :, others], atol=0, rtol=0)
    assert (q[:, :, 1] - clean_q[:, :, 1]).abs().max() > 1e-6
    torch.testing.assert_close(result.receiver_acts[k_hook], clean_k, atol=0, rtol=0)
    # Earlier layers run clean in step 3.
    torch.testing.assert_close(result.receiver_acts[spec.hooks.at("z", 1)],
                               engine.activations("clean", spec.hooks.at("z", 1), 0),
                               atol=0, rtol=0)
    # A sender at or after the receiver's layer has no path to it.
    assert P.path_patch(engine, [(2, 0)], [("q", 2, 1)]) == pytest.approx(1.0, abs=1e-6)
    table = P.path_patch_senders(engine, [("q", 1, 0)], progress=False)
    np.testing.assert_allclose(table.pivot().loc[1:].to_numpy(), 1.0)


def test_path_patch_kv_receivers_are_kv_heads(llama):
    model, _spec = llama  # 4 query heads over 2 kv heads
    engine = engine_for(model)
    value = P.path_patch(engine, [(0, 0)], [("k", 1, 1), ("v", 1, 1)])
    assert np.isfinite(value)
    with pytest.raises(HeadIndexError, match="kv head"):
        P.path_patch(engine, [(0, 0)], [("k", 1, 2)])


def test_path_patch_freeze_mlps_runs(llama):
    model, _spec = llama
    engine = engine_for(model)
    frozen = P.path_patch(engine, [(0, 3)], freeze_mlps=True)
    free = P.path_patch(engine, [(0, 3)])
    assert np.isfinite(frozen) and frozen != pytest.approx(free, abs=1e-6)


def _answer_logit(logits, answer, distractor, clean_logits):
    """A user metric: the answer's logit minus its logit in the clean run, per prompt."""
    rows = torch.arange(logits.shape[0])
    return logits[rows, answer] - clean_logits[rows, answer]


def test_callable_metric_in_engine_and_path_patching(llama):
    """A metric function works in the engine and in path patching; values are aggregated as
    their mean, and equal the hand computation from the run's final logits."""
    model, spec = llama
    engine = engine_for(model)
    setters = [P.head_z(spec, 1, 2)]
    values = engine.run_values(setters, metric=_answer_logit)
    probability = engine.run_values(setters, metric="probability")
    assert values.shape == (engine.n,)
    # hand computation: logit - clean logit of the answer = log p - log p_clean + (lse - lse)
    logits = []
    for index, pair in enumerate(engine.batches()):
        patches = [(s, engine.activations("clean", s.hook, index)) for s in setters]
        out, _ = P.run_with_setters(model, pair.corrupt, patches)
        logits.append(out[torch.arange(pair.corrupt.size), pair.corrupt.last])
    final = torch.cat(logits).float()
    rows = torch.arange(engine.n)
    expected = final[rows, engine.answer] - engine.clean_final[rows, engine.answer]
    torch.testing.assert_close(values, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(values, probability)
    assert engine.run(setters, metric=_answer_logit) == pytest.approx(float(expected.mean()),
                                                                       abs=1e-5)
    clean, corrupt = engine.baseline_values(_answer_logit)
    torch.testing.assert_close(clean, torch.zeros(engine.n))  # clean run minus itself
    assert float(corrupt.abs().max()) > 1e-4
    # path patching: a last-layer sender to the end is activation patching it (noising)
    last = spec.n_layers - 1
    path = P.path_patch(engine, [(last, 1)], metric=_answer_logit)
    direct = engine.run([P.head_z(spec, last, 1)], target="clean", source="corrupt",
                        metric=_answer_logit)
    assert path == pytest.approx(direct, abs=1e-5)
    result = P.path_patch_values(engine, [(0, 1)], metric=_answer_logit)
    assert path != pytest.approx(0.0, abs=1e-6)
    assert P.path_patch(engine, [(0, 1)], metric=_answer_logit) == pytest.approx(
        float(result.values.mean()), abs=1e-6)
    table = P.path_patch_senders(engine, metric=_answer_logit, layers=[last], progress=False)
    assert table.meta["params"]["metric"] == "_answer_logit"
    assert table.meta["unpatched"] == pytest.approx(0.0, abs=1e-6)


def test_patching_meta_comes_from_provenance(llama):
    model, _ = llama
    table = P.activation_patch_heads(engine_for(model), layers=[2], progress=False)
    meta = table.meta
    for key in ("kind", "scorer", "model", "params", "data_fingerprint", "n_prompts",
                "headprobe_version", "torch_version", "timings_s", "baseline", "unpatched"):
        assert key in meta
    assert meta["kind"] == "patching" and meta["scorer"] == "activation_patching"
    assert meta["n_prompts"] == len(CLEAN)


def test_from_task_tokenizes_once_and_checks_pairs(llama):
    from headprobe.tasks.base import Task, TaskItem

    model, _ = llama
    items = [TaskItem(c, a, d, x) for c, x, a, d in zip(CLEAN, CORRUPT, ANSWER, DISTRACTOR,
                                                       strict=True)]
    engine = P.PatchingEngine.from_task(model, Task("tiny", items), batch_size=3)
    reference = engine_for(model)
    torch.testing.assert_close(engine.answer, reference.answer)
    torch.testing.assert_close(engine.clean_final, reference.clean_final)
    with pytest.raises(TaskError, match="corrupt_prompt"):
        P.PatchingEngine.from_task(model, Task("tiny", [TaskItem("abc", "d", "e")]))
    with pytest.raises(PromptPairError, match="pair 0"):
        P.PatchingEngine.from_task(model, Task("tiny", [TaskItem("abc", "d", "e", "abcd")]))


# ---------------------------------------------------------------------------------------------
# Setters, GQA, errors


def test_kv_setters_act_per_kv_head(llama):
    model, spec = llama
    engine = engine_for(model, batch_size=len(CLEAN))
    pair = next(engine.batches())
    z_hook = spec.hooks.at("z", 1)
    corrupt_z = engine.activations("corrupt", z_hook, 0)
    for make in (P.head_k, P.head_v):
        setter = make(spec, 1, 0)
        source = engine.activations("clean", setter.hook, 0)
        assert source.shape[2] == spec.n_kv_heads
        _, seen = P.run_with_setters(model, pair.corrupt, [(setter, source)], observe=[z_hook])
        group = [h for h in range(spec.n_heads) if spec.kv_head(h) == 0]
        rest = [h for h in range(spec.n_heads) if spec.kv_head(h) != 0]
        assert group == [0, 1]
        torch.testing.assert_close(seen[z_hook][:, :, rest], corrupt_z[:, :, rest], atol=0,
                                   rtol=0)
        assert (seen[z_hook][:, :, group] - corrupt_z[:, :, group]).abs().max() > 1e-6
    with pytest.raises(HeadIndexError, match="kv head"):
        P.head_k(spec, 1, spec.n_kv_heads)
    with pytest.raises(HeadIndexError):
        P.head_z(spec, 1, spec.n_heads)
    with pytest.raises(HeadIndexError):
        P.head_q(spec, spec.n_layers, 0)
    with pytest.raises(ValueError, match="'pre' or 'post'"):
        P.resid(spec, 0, "mid")  # type: ignore[arg-type]


def test_single_position_setter_touches_one_position(llama):
    model, spec = llama
    engine = engine_for(model, same=True)
    pair = next(engine.batches())
    hook = spec.hooks.at("resid_post", 0)
    source = engine.activations("clean", hook, 0)
    _, seen = P.run_with_setters(model, pair.corrupt, [(P.resid(spec, 0, "post", 5), source)],
                                 observe=[hook])
    corrupt = engine.activations("corrupt", hook, 0)
    torch.testing.assert_close(seen[hook][:, 5], source[:, 5])
    keep = [t for t in range(source.shape[1]) if t != 5]
    torch.testing.assert_close(seen[hook][:, keep], corrupt[:, keep])


def test_unequal_lengths_raise(llama):
    model, _ = llama
    with pytest.raises(PromptPairError, match="pair 1"):
        P.PatchingEngine(model, ["abc", "abcd"], ["abd", "abcde"], ["a", "b"], ["c", "d"])
    with pytest.raises(PromptPairError, match="2 clean prompts but 1"):
        P.PatchingEngine(model, ["abc", "abd"], ["abd"], ["a", "b"], ["c", "d"])
    with pytest.raises(PromptPairError):
        P.PatchingEngine(model, ["abc"], ["abd"], ["a", "b"], ["c", "d"])


def test_nan_metric_names_the_prompt():
    model, _ = tiny_model("llama-gqa", seed=1)  # fresh: its weights are edited
    bad = model.tokenizer.convert_tokens_to_ids("#")
    with torch.no_grad():
        model.original_model.get_input_embeddings().weight[bad] = float("nan")
    with pytest.raises(MetricError, match=r"prompt 1.*'a#c'"):
        P.PatchingEngine(model, ["abc", "a#c"], ["abd", "abd"], ["a", "b"], ["c", "d"])


def test_normalised_metric_needs_a_gap(llama):
    model, spec = llama
    engine = P.PatchingEngine(model, ["abc", "xyz"], ["abc", "xyz"], ["a", "b"], ["c", "d"])
    with pytest.raises(MetricError, match="undefined"):
        engine.run([P.head_z(spec, 0, 0)])
    assert np.isfinite(engine.run([P.head_z(spec, 0, 0)], metric="logit_diff"))


def test_bad_options(llama):
    model, spec = llama
    engine = engine_for(model)
    with pytest.raises(ValueError, match="direction"):
        P.activation_patch_heads(engine, direction="sideways", progress=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="metric"):
        engine.run([P.head_z(spec, 0, 0)], metric="accuracy")  # type: ignore[arg-type]
    with pytest.raises(TaskError, match="distractor"):
        P.PatchingEngine(model, CLEAN, CORRUPT, ANSWER).run([P.head_z(spec, 0, 0)])


# ---------------------------------------------------------------------------------------------
# IOI task


def test_ioi_task_without_model():
    assert "ioi" in list_tasks()
    task = get_task("ioi", n=20, seed=3)
    assert len(task) == 20 and task.name == "ioi"
    again = ioi_task.make_task(n=20, seed=3)
    assert [i.prompt for i in task.items] == [i.prompt for i in again.items]
    for item in task.items:
        io, s = item.meta["io"], item.meta["s"]
        assert item.answer == f" {io}" and item.distractor == f" {s}" and io != s
        assert item.prompt.count(s) == 2 and item.prompt.count(io) == 1
        # s2 corruption: the second subject mention becomes the IO; nothing else changes.
        assert item.corrupt_prompt.count(io) == 2 and item.corrupt_prompt.count(s) == 1
        assert item.corrupt_prompt.split(",")[0] == item.prompt.split(",")[0]
    assert {item.meta["template"] for item in task.items} == set(range(len(ioi_task.TEMPLATES)))
    abc = ioi_task.make_task(n=10, corruption="abc", template=2)
    for item in abc.items:
        assert item.meta["io"] not in item.corrupt_prompt
        assert item.meta["s"] not in item.corrupt_prompt
        assert item.meta["template"] == 2
    with pytest.raises(TaskError):
        ioi_task.make_task(n=4, corruption="nope")
    with pytest.raises(TaskError):
        ioi_task.make_task(n=4, template=99)


def test_ioi_task_needs_single_token_names(llama):
    model, _ = llama  # character tokenizer: no name is one token
    assert ioi_task.single_token_words(model, ["Mary", "a"], leading_space=False) == ["a"]
    with pytest.raises(TaskError, match="single-token"):
        ioi_task.make_task(n=4, model=model)


# ---------------------------------------------------------------------------------------------
# The real model


@pytest.fixture(scope="module")
def smol_ioi(smol):
    model, spec = smol
    task = ioi_task.make_task(n=8, seed=0, model=model)
    return model, spec, task, P.PatchingEngine.from_task(model, task, batch_size=8)


@pytest.mark.real
def test_real_ioi_logit_difference(smol_ioi):
    model, _spec, task, engine = smol_ioi
    for item in task.items:
        assert len(model.to_tokens(item.prompt)[0]) == len(model.to_tokens(item.corrupt_prompt)[0])
    clean, corrupt = engine.baseline_values("logit_diff")
    assert int((clean > 0).sum()) >= 6
    assert float(clean.mean()) > 0 > float(corrupt.mean())


@pytest.mark.real
def test_real_activation_and_path_patching_run(smol_ioi):
    model, spec, task, _ = smol_ioi
    # Few prompts and the last layer only: about 20 forward passes of 4 short prompts.
    engine = P.PatchingEngine.from_task(model, task.subset(4), batch_size=4)
    last = spec.n_layers - 1
    assert engine.run([P.resid(spec, last, "post", "last")]) == pytest.approx(1.0, abs=1e-3)
    table = P.activation_patch_heads(engine, layers=[last], progress=False)
    grid = table.pivot().to_numpy()
    assert np.isfinite(grid[-1]).all() and np.isnan(grid[:-1]).all()
    path = P.path_patch_senders(engine, "end", layers=[last], direction="denoising",
                                progress=False)
    np.testing.assert_allclose(path.pivot().loc[last], table.pivot().loc[last], atol=1e-3)
