"""The conflict scorer (memory vs context heads) and its interventions (pruning, value scaling)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from headprobe.errors import ScorerParamError, TaskError
from headprobe.heads.conflict.experiments import (
    conflict_heads,
    conflict_rates,
    prune_conflict_heads,
    value_scaling_sweep,
)
from headprobe.heads.conflict.knowledge_conflict import Fact, conflict_item, retarget
from headprobe.interventions import intervene
from headprobe.registry import get_scorer
from headprobe.scorers.dla import attribute
from headprobe.tasks.base import Task, TaskItem

ROOT = Path(__file__).resolve().parents[1]

# The tiny models use a character tokenizer: one-character answers are single tokens.
FACTS = [Fact("code", "x", "The code of x is ", "P"), Fact("code", "y", "The code of y is ", "Q")]


def tiny_task(model) -> Task:
    items = [conflict_item(fact, other, framing, model=model)
             for fact, other in zip(FACTS, "KL", strict=True) for framing in (1, 2)]
    return Task("knowledge_conflict", items, meta={"target": "context"})


def last_logits(model, prompt: str, hooks=()) -> torch.Tensor:
    with torch.inference_mode(), model.hooks(fwd_hooks=list(hooks)):
        return model(model.to_tokens(prompt))[0, -1].double()


def test_columns_and_sign_convention(tiny_llama):
    model, spec = tiny_llama
    task = tiny_task(model)
    table = get_scorer("conflict")(model, task, batch_size=3, progress=False)
    data = table.data
    assert len(data) == spec.n_layers * spec.n_heads
    assert {"dla", "path", "score", "context_score", "role"} <= set(data.columns)
    assert np.allclose(data["score"], data["path"]) and np.allclose(data["context_score"],
                                                                    -data["score"])
    assert (data.loc[data["score"] > 0, "role"] == "memory").all()
    assert (data.loc[data["score"] < 0, "role"] == "context").all()
    # positive = memory: dla is the DLA onto W_U[memory] - W_U[context] (items judged on memory)
    memory = attribute(model, retarget(task, "memory"), batch_size=1)
    assert np.allclose(data["dla"].to_numpy(), memory.heads.mean(0).numpy().ravel(), atol=1e-6)
    # ... whose components sum to logit[memory] - logit[context] measured independently
    ids = [(model.to_tokens(i.meta["memory_answer"], prepend_bos=False)[0, 0],
            model.to_tokens(i.meta["context_answer"], prepend_bos=False)[0, 0])
           for i in task.items]
    direct = np.mean([float(last_logits(model, i.prompt)[m] - last_logits(model, i.prompt)[c])
                      for i, (m, c) in zip(task.items, ids, strict=True)])
    assert table.meta["conflict_logit_diff"] == pytest.approx(direct, abs=1e-4)
    assert float(memory.total().mean()) == pytest.approx(direct, abs=1e-4)
    assert table.meta["dla_decomposition_error"] < 1e-4
    assert -1 <= table.meta["spearman_dla_path"] <= 1


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_gemma"])
def test_path_of_last_layer_heads_equals_a_direct_hook_patch(fixture, request):
    """In the last layer nothing but the logits reads a head, so its path score is the plain
    effect of swapping in its no-conflict output: LD(conflict) - LD(patched)."""
    model, spec = request.getfixturevalue(fixture)
    task = tiny_task(model)
    table = get_scorer("conflict")(model, task, batch_size=4, progress=False)
    layer = spec.n_layers - 1
    hook = spec.hooks.at("z", layer)
    for head in range(spec.n_heads):
        values = []
        for item in task.items:
            memory = int(model.to_tokens(item.meta["memory_answer"], prepend_bos=False)[0, 0])
            context = int(model.to_tokens(item.meta["context_answer"], prepend_bos=False)[0, 0])
            _, cache = model.run_with_cache(model.to_tokens(item.corrupt_prompt))
            source = cache[hook].detach()

            def swap(z, hook=None, head=head, source=source):
                z = z.clone()
                z[:, :, head] = source[:, :, head]
                return z

            clean = last_logits(model, item.prompt)
            patched = last_logits(model, item.prompt, [(hook, swap)])
            values.append(float((clean[memory] - clean[context])
                                - (patched[memory] - patched[context])))
        row = table.data[(table.data["layer"] == layer) & (table.data["head"] == head)]
        assert float(row["path"].iloc[0]) == pytest.approx(np.mean(values), abs=1e-4)


def test_dla_only_and_parameter_errors(tiny_llama):
    model, _ = tiny_llama
    task = tiny_task(model)
    scorer = get_scorer("conflict")
    table = scorer(model, task, score_by="dla", path=False, progress=False)
    assert table.data["path"].isna().all()
    assert np.allclose(table.data["score"], table.data["dla"])
    with pytest.raises(ScorerParamError):
        scorer(model, task, path=False, progress=False)
    with pytest.raises(ScorerParamError):
        scorer(model, task, score_by="both", progress=False)
    with pytest.raises(TaskError, match="not a knowledge-conflict item"):
        scorer(model, Task("plain", [TaskItem("abc", "d", "e", "abf")]), progress=False)


def test_pruning_and_value_scaling_on_a_tiny_model(tiny_llama):
    model, _ = tiny_llama
    task = tiny_task(model)
    table = get_scorer("conflict")(model, task, score_by="dla", path=False, progress=False)
    ranked = conflict_heads(table, 2)
    assert all(table.data.set_index(["layer", "head"]).loc[h, "score"] > 0
               for h in ranked["memory"])
    pruned = prune_conflict_heads(model, task, table, ks=(1, 2), n_random=1, n_bootstrap=20,
                                  batch_size=4, progress=False)
    assert set(pruned) == {"memory", "context"}
    frame = pruned["memory"].table
    assert set(frame["condition"]) == {"baseline", "top_k", "random_0"}
    sweep = value_scaling_sweep(model, task, table, alphas=(0.0, 2.0), n_candidates=1,
                                n_random=1, eval_task=task, n_bootstrap=20, batch_size=4,
                                progress=False)
    select = sweep.table[sweep.table["split"] == "select"]
    assert len(select) == 1 + 3 * 2  # baseline + (memory, context, random head) x 2 alphas
    assert {"toward_context", "toward_memory"} <= set(sweep.summary)
    assert "eval" in sweep.summary["toward_context"]["best"]
    # alpha = 0 on one head is zero ablation of that head: the same judgements
    head = ranked["memory"][0]
    with intervene(model, [head], "zero"):
        zeroed = conflict_rates(model, task, n_bootstrap=0)["context"]
    assert (sweep.correct[f"select/{head[0]}.{head[1]}@0"] == zeroed).all()
    with pytest.raises(TaskError, match="context answer"):
        prune_conflict_heads(model, retarget(task, "memory"), table, ks=(1,), progress=False)


def test_conflict_rates_add_up(tiny_gpt2):
    model, _ = tiny_gpt2
    rates = conflict_rates(model, tiny_task(model), n_bootstrap=50)
    total = rates["context_rate"] + rates["memory_rate"] + rates["other_rate"]
    assert total == pytest.approx(1.0) and rates["n"] == 4
    assert rates["context_ci"][0] <= rates["context_rate"] <= rates["context_ci"][1]


def test_recipe_file_is_valid():
    from headprobe.recipes import load_recipe

    recipe = load_recipe(ROOT / "recipes" / "knowledge_conflict.toml")
    kinds = [step.kind for step in recipe.steps]
    assert kinds[0] == "scan" and recipe.steps[0].options["scorer"] == "conflict"
    assert "dose" in kinds


@pytest.mark.real
@pytest.mark.slow
def test_real_model_memory_and_context_heads(smol):
    """A few real items: DLA is exact and context heads exist (the recipe runs at its [small]
    setting in tests/test_recipes.py)."""
    from headprobe.heads.conflict.knowledge_conflict import make_task

    model, _ = smol
    task = make_task(n=12, seed=0, model=model, relations=["capital", "language"],
                     framings=[1, 2])
    table = get_scorer("conflict")(model, task, score_by="dla", path=False, batch_size=12,
                                   progress=False)
    assert table.meta["dla_decomposition_error"] < 1e-3
    assert table.meta["conflict_logit_diff"] < 0  # these framings make the model follow context
    assert (table.data["role"] == "context").sum() > 0
