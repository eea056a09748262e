"""Recipes: parsing and validation, the step-kind registry, ordered scan / ablate / dose steps,
summaries, resume, [small] settings, and every shipped recipe run end to end at its [small]
setting."""

import json
import random
import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import register_task

from headprobe.errors import RecipeError, UnknownScorerError
from headprobe.headtable import HeadTable
from headprobe.recipes import load_recipe, run_recipe, step_kinds

RECIPES = sorted(Path("recipes").glob("*.toml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_parse(path):
    recipe = load_recipe(path)
    assert recipe.scans and recipe.model
    small = load_recipe(path, small=True)  # every shipped recipe has a valid [small] setting
    assert small.small and [s.name for s in small.steps] == [s.name for s in recipe.steps]
    assert [s.options for s in small.steps] != [s.options for s in recipe.steps]


def test_every_head_type_recipe_is_toml_and_declared():
    from headprobe.registry import head_types

    declared = {path for head_type in head_types().values() for path in head_type.recipes}
    assert declared and all(path.endswith(".toml") for path in declared)
    assert {str(p) for p in RECIPES} == declared
    assert not [p for p in Path("recipes").glob("*.py")
                if p.name not in ("make_safety_model.py", "train_ocr_model.py",
                                  "train_induction_model.py")]


def test_step_kinds_registry():
    from headprobe.recipes.steps import StepKind

    kinds = step_kinds()
    assert list(kinds)[:3] == ["scan", "ablate", "dose"]
    assert {"kv_budget", "successor_behaviour", "mod10_view", "temporal_heads",
            "temporal_edit"} <= set(kinds)
    assert all(isinstance(k, StepKind) and k.name == name for name, k in kinds.items())
    assert kinds["scan"].table and not kinds["ablate"].table
    # the generic recipe code names no head-type step and imports no head-type module
    added = [kind for kind in kinds if kind not in ("scan", "ablate", "dose")]
    for module in Path("headprobe/recipes").glob("*.py"):
        text = module.read_text()
        assert "headprobe.heads" not in text, module
        for word in added:
            assert word not in text, (module, word)


def test_unknown_step_kind_lists_the_registered_kinds(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[[step]]\nkind = "probe"\n')
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    message = str(error.value)
    assert "\n" not in message and "unknown step kind 'probe'" in message
    assert all(name in message for name in step_kinds())


SMALL = '''name = "s"
[[step]]
kind = "scan"
scorer = "induction"
n = 32
params = { seq_len = 50, repeats = 2 }
[[step]]
kind = "ablate"
name = "a"
task = "induction_copy"
task_options = { n = 48, seed = 3 }
heads_from = "induction"
top = 6
n_random = 10
[[step]]
kind = "ablate"
name = "b"
task = "induction_copy"
heads = "1.0"
'''


def test_small_setting_overrides_and_merges(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(SMALL + '[small]\n"*" = { n = 2, task_options = { n = 4 }, n_random = 1 }\n'
                    'induction = { params = { seq_len = 8 } }\na = { top = 2 }\n')
    full, small = load_recipe(path), load_recipe(path, small=True)
    assert not full.small and small.small
    assert full.steps[0].options["n"] == 32 and full.steps[1].options["n_random"] == 10
    scan, a, b = (step.options for step in small.steps)
    assert scan["n"] == 2 and scan["params"] == {"seq_len": 8, "repeats": 2}  # merged
    assert a["task_options"] == {"n": 4, "seed": 3} and a["n_random"] == 1 and a["top"] == 2
    assert "task_options" not in b and "n_random" not in b  # "*" sets only what a step writes
    bad = [('[small]\nnope = { n = 2 }\n', r"\[small\] names no step \['nope'\]"),
           ('[small]\ninduction = 3\n', "must map step names"),
           ('[small]\na = { top = 0 }\n', "top must be an integer >= 1"),
           ('[small]\na = { colour = 1 }\n', r"unknown: \['colour'\]")]
    for text, message in bad:
        path.write_text(SMALL + text)
        with pytest.raises(RecipeError, match=message):
            load_recipe(path, small=True)
    path.write_text(SMALL)
    with pytest.raises(RecipeError, match=r"has no \[small\] table"):
        load_recipe(path, small=True)
    path.write_text(SMALL + '[small]\nnope = { n = 2 }\n')
    with pytest.raises(RecipeError, match="names no step"):
        load_recipe(path)  # a broken [small] is refused even when not used


def test_induction_recipe_ends_with_its_ablation_check():
    recipe = load_recipe("recipes/induction.toml")
    assert [(s.kind, s.name) for s in recipe.steps] == [
        ("scan", "induction"), ("scan", "previous_token"), ("ablate", "induction_ablation"),
        ("dose", "induction_dose")]
    ablate = recipe.steps[2].options
    assert ablate["heads_from"] == "induction" and ablate["top"] == 6
    assert ablate["method"] == "zero" and ablate["n_random"] == 10
    assert ablate["task"] == "induction_copy" and ablate["task_options"]["n"] == 48
    assert recipe.scans[0]["n"] == 32


def test_recipe_errors(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(bad)
    empty = tmp_path / "empty.toml"
    empty.write_text('name = "x"\n')
    with pytest.raises(RecipeError, match="has no steps"):
        load_recipe(empty)
    typo = tmp_path / "typo.toml"
    typo.write_text('[[scan]]\nscorer = "induction"\nseeed = 1\n')
    with pytest.raises(RecipeError, match=r"may have only.*unknown: \['seeed'\]"):
        load_recipe(typo)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('[[scan]]\nscorer = "inductionn"\n')
    with pytest.raises(UnknownScorerError):
        load_recipe(unknown)


SCAN = '[[step]]\nkind = "scan"\nscorer = "induction"\nn = 2\nparams = { seq_len = 8 }\n'


@pytest.mark.parametrize(
    "text,message",
    [
        ('[[step]]\nkind = "probe"\nscorer = "induction"\n', "unknown step kind 'probe'"),
        (SCAN + '[[step]]\nkind = "ablate"\ntask = "ioi"\nheads_from = "induction"\ntop = 2\n'
         'colour = 1\n', "unknown: \\['colour'\\]"),
        ('[[step]]\nkind = "ablate"\ntask = "ioi"\nheads_from = "induction"\ntop = 2\n' + SCAN,
         "heads_from = 'induction' names no earlier step"),
        (SCAN + '[[step]]\nkind = "ablate"\ntask = "ioi"\nheads_from = "inductio"\ntop = 2\n',
         "names no earlier step; earlier steps with a head table: \\['induction'\\]"),
        (SCAN + '[[step]]\nkind = "ablate"\nname = "a"\ntask = "ioi"\nheads_from = "induction"'
         '\ntop = 2\n[[step]]\nkind = "dose"\ntask = "ioi"\nheads_from = "a"\nks = [1]\n',
         "'a' is a ablate step; heads come from a step with a head table"),
        (SCAN + '[[step]]\nkind = "ablate"\ntask = "ioi"\nheads_from = "induction"\ntop = 2\n'
         'method = "zap"\n', "unknown method 'zap'"),
        (SCAN + '[[step]]\nkind = "ablate"\ntask = "ioi"\nheads_from = "induction"\ntop = 2\n'
         'method = "scale_output"\nmethod_options = { facter = 2 }\n',
         "method 'scale_output' has no option facter"),
        (SCAN + '[[step]]\nkind = "ablate"\ntask = "nope"\nheads_from = "induction"\ntop = 2\n',
         "unknown task 'nope'"),
        (SCAN + '[[step]]\nkind = "ablate"\ntask = "induction_copy"\nheads_from = "induction"\n'
         'top = 2\ntask_options = { size = 3 }\n', "task 'induction_copy' has no option size"),
        (SCAN + '[[step]]\nkind = "ablate"\ntask = "ioi"\nheads_from = "induction"\n',
         "top = K and/or threshold = X"),
        (SCAN + '[[step]]\nkind = "ablate"\ntask = "ioi"\n', "exactly one of heads_from"),
        (SCAN + '[[step]]\nkind = "ablate"\ntask = "ioi"\nheads = "1.0,x"\n',
         "cannot read head 'x'"),
        (SCAN + '[[step]]\nkind = "dose"\ntask = "ioi"\nheads_from = "induction"\n',
         "needs ks"),
        (SCAN + '[[step]]\nkind = "dose"\ntask = "ioi"\nheads_from = "induction"\ntop = 2\n'
         'ks = [1, 4]\n', "k = 4 is more than the 2 heads"),
        (SCAN + '[[step]]\nkind = "ablate"\ntask = "ioi"\nheads = "1.0"\nn_random = -1\n',
         "n_random must be an integer >= 0"),
        (SCAN + SCAN, "same name"),
        (SCAN + '[[ablate]]\ntask = "ioi"\nheads = "1.0"\n', 'kind = "ablate"'),
        ('[[scan]]\nscorer = "induction"\n' + SCAN, "mixes \\[\\[scan\\]\\] and \\[\\[step\\]\\]"),
        (SCAN + '[reprot]\ntop = 3\n', "unknown key\\(s\\) \\['reprot'\\]"),
        (SCAN + '[report]\ntop = 0\n', "top must be an integer >= 1"),
    ],
    ids=["kind", "key", "later", "missing", "not-scan", "method", "method-option", "task",
         "task-option", "no-top", "no-heads", "bad-heads", "no-ks", "ks-top", "n-random",
         "duplicate", "ablate-array", "mixed", "top-level", "report"],
)
def test_bad_steps_are_recipe_errors(tmp_path, text, message):
    path = tmp_path / "r.toml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=message):
        load_recipe(path)


def test_recipe_resumes_steps_and_batches(tiny_llama, tmp_path, monkeypatch):
    """A recipe killed in its second step's second batch, run again, skips the finished step,
    resumes the second one at batch 1, and writes what an uninterrupted run writes."""
    import pandas as pd

    from headprobe.checkpoint import Checkpoint

    model, _ = tiny_llama
    path = tmp_path / "two.toml"
    path.write_text('name = "two"\nmodel = "tiny:llama-gqa"\n'
                    '[[scan]]\nscorer = "previous_token"\nn = 2\nparams = { seq_len = 8 }\n'
                    '[[scan]]\nscorer = "induction"\nn = 3\nbatch_size = 1\n'
                    'params = { seq_len = 8 }\n[report]\ntop = 3\n')
    recipe = load_recipe(path)
    reference = run_recipe(recipe, model, tmp_path / "reference", progress=False,
                           echo=lambda line: None)

    class Killed(Exception):
        pass

    original = Checkpoint.save
    saves: list[str] = []
    kill = [True]

    def save(self, state, progress=""):
        original(self, state, progress)
        saves.append(self.name)
        if self.name == "induction" and kill[0]:
            kill[0] = False
            raise Killed  # killed after the first induction batch

    monkeypatch.setattr(Checkpoint, "save", save)
    out = tmp_path / "run"
    with pytest.raises(Killed):
        run_recipe(recipe, model, out, progress=False, echo=lambda line: None)
    assert set(json.loads((out / "summary.json").read_text())["scans"]) == {"previous_token"}
    saves.clear()
    lines: list[str] = []
    tables = run_recipe(recipe, model, out, progress=False, echo=lines.append)
    assert any(line.startswith("previous_token: step already done") for line in lines)
    assert any("induction: resuming" in line and "batch 1 of 3 done" in line for line in lines)
    assert saves == ["induction", "induction"]  # previous_token not rerun; 2 batches left
    for name, table in tables.items():
        pd.testing.assert_frame_equal(table.to_frame(), reference[name].to_frame(),
                                      check_exact=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads((tmp_path / "reference" / "summary.json").read_text())
    assert not (out / ".checkpoints").exists()


# ------------------------------------------------------------------------- causal steps


def self_task_module(model, name="tiny_self"):
    """A module whose ``make_task(n, seed)`` builds prompts answered by the model's own greedy
    next character (baseline accuracy 1 by construction), as a registered task would be."""
    from headprobe.tasks.base import Task, TaskItem

    def make_task(n: int = 12, seed: int = 0) -> Task:
        rng = random.Random(seed)
        items = []
        for _ in range(n):
            prompt = "".join(rng.choice("abcdefghij") for _ in range(rng.randint(4, 9)))
            with torch.no_grad():
                logits = model(model.to_tokens(prompt))
            answer = model.tokenizer.decode([int(logits[0, -1].argmax())])
            items.append(TaskItem(prompt=prompt, answer=answer))
        return Task(name, items, judge="next_token")

    module = types.ModuleType(f"headprobe_test_{name}")
    module.make_task = make_task
    return module


@pytest.fixture
def tiny_task(tiny_llama, monkeypatch):
    """``tiny_self`` registered for the test (TASK_MODULES and sys.modules, both restored)."""
    module = self_task_module(tiny_llama[0])
    monkeypatch.setitem(sys.modules, module.__name__, module)
    register_task(monkeypatch, "tiny_self", module.__name__)
    return module


CAUSAL = '''name = "causal"
model = "tiny:llama-gqa"

[[step]]
kind = "scan"
scorer = "previous_token"
n = 2
params = { seq_len = 8 }

[[step]]
kind = "ablate"
name = "check"
task = "tiny_self"
task_options = { n = 10, seed = 1 }
heads_from = "induction"
top = 3
n_random = 3
n_bootstrap = 50

[[step]]
kind = "scan"
scorer = "induction"
n = 2
params = { seq_len = 8 }

[[step]]
kind = "dose"
task = "tiny_self"
task_options = { n = 10, seed = 1 }
heads_from = "previous_token"
threshold = -1.0
ks = [1, 2]
n_random = 2
n_bootstrap = 50

[report]
top = 3
'''


def test_causal_steps_in_order_with_heads_from_the_named_scan(tiny_llama, tiny_task, tmp_path):
    model, _ = tiny_llama
    path = tmp_path / "causal.toml"
    # "check" names "induction", which comes later in the file: refused
    path.write_text(CAUSAL)
    with pytest.raises(RecipeError, match="step 'check': heads_from = 'induction' names no "
                                          "earlier step; earlier steps with a head table: "
                                          "\\['previous_token'\\]"):
        load_recipe(path)
    text = CAUSAL.replace('heads_from = "induction"\ntop = 3', 'heads_from = "previous_token"'
                          '\ntop = 3', 1)
    path.write_text(text)
    recipe = load_recipe(path)
    assert [s.name for s in recipe.steps] == ["previous_token", "check", "induction", "dose"]
    out = tmp_path / "out"
    lines: list[str] = []
    results = run_recipe(recipe, model, out, progress=False, echo=lines.append)
    # the order of the file is the order of the run, and of summary.json
    order = [next(i for i, line in enumerate(lines) if line.startswith(f"{name}:"))
             for name in ("previous_token", "check", "induction", "dose")]
    assert order == sorted(order)
    summary = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in summary["steps"]] == ["previous_token", "check", "induction",
                                                     "dose"]
    assert [s["kind"] for s in summary["steps"]] == ["scan", "ablate", "scan", "dose"]
    # heads of the ablation: the top 3 of previous_token, not of induction
    top3 = results["previous_token"].heads(k=3)
    assert top3 != results["induction"].heads(k=3)
    check = summary["experiments"]["check"]
    assert check["heads"] == ",".join(f"{layer}.{head}" for layer, head in top3)
    assert check["heads_source"] == "top 3 heads of previous_token"
    for key in ("target_delta", "target_delta_ci", "mean_random_delta", "min_random_delta",
                "share_random_as_low", "baseline_accuracy"):
        assert key in check, key
    assert check["baseline_accuracy"] == 1.0 and check["n_prompts"] == 10
    assert check["target_delta"] == pytest.approx(results["check"].summary["target_delta"])
    table = results["check"].table
    random_deltas = table[table["condition"].str.startswith("random_")]["delta"]
    assert check["mean_random_delta"] == pytest.approx(random_deltas.mean())
    assert len(random_deltas) == 3
    # the dose step: threshold -1 keeps every head of previous_token, ranked
    dose = summary["experiments"]["dose"]
    assert dose["heads"].split(",")[:2] == [f"{h[0]}.{h[1]}"
                                            for h in results["previous_token"].heads(k=2)]
    assert set(dose["top_k_accuracy"]) == {"1", "2"}
    assert set(dose["mean_random_accuracy"]) == {"1", "2"}
    for name, files in (("check", ("ablation.csv", "ablation.html", "meta.json")),
                        ("dose", ("dose_response.csv", "dose_response.html", "meta.json")),
                        ("induction", ("induction.parquet", "meta.json"))):
        for file in files:
            assert (out / name / file).is_file(), (name, file)
    meta = json.loads((out / "check" / "meta.json").read_text())
    assert meta["recipe_step"] == "check" and meta["heads_source"] == check["heads_source"]
    assert meta["run_key_fields"]["params"]["heads"] == check["heads"]

    # a re-run skips every finished step and writes the same summary
    lines.clear()
    again = run_recipe(recipe, model, out, progress=False, echo=lines.append)
    for name in ("previous_token", "check", "induction", "dose"):
        assert any(line.startswith(f"{name}: step already done") for line in lines), name
    assert json.loads((out / "summary.json").read_text()) == summary
    assert again["check"].summary == results["check"].summary
    assert list(again["dose"].table["accuracy"]) == pytest.approx(
        list(results["dose"].table["accuracy"]))

    # a changed parameter reruns that step only, and says what changed
    path.write_text(text.replace("n_random = 3", "n_random = 2"))
    lines.clear()
    run_recipe(load_recipe(path), model, out, progress=False, echo=lines.append)
    assert any("check: the saved result" in line and "params.n_random: 3 -> 2" in line
               for line in lines)
    assert not any(line.startswith("check: step already done") for line in lines)
    assert any(line.startswith("dose: step already done") for line in lines)
    assert json.loads((out / "summary.json").read_text())["experiments"]["check"]["n_random"] \
        == 2


def test_explicit_heads_and_too_few_heads(tiny_llama, tiny_task, tmp_path):
    model, _ = tiny_llama
    path = tmp_path / "explicit.toml"
    path.write_text(SCAN + '[[step]]\nkind = "ablate"\ntask = "tiny_self"\n'
                    'task_options = { n = 4 }\nheads = [[2, 1], [0, 3]]\nn_random = 1\n'
                    'n_bootstrap = 0\n'
                    '[[step]]\nkind = "dose"\ntask = "tiny_self"\ntask_options = { n = 4 }\n'
                    'heads_from = "induction"\nthreshold = 1000.0\nks = [1]\n')
    lines: list[str] = []
    with pytest.raises(RecipeError, match=r"step 'dose': no head of 'induction' scores above "
                                          r"1000\.0"):
        run_recipe(load_recipe(path), model, tmp_path / "out", progress=False,
                   echo=lines.append)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["experiments"]["ablate"]["heads"] == "2.1,0.3"
    assert summary["experiments"]["ablate"]["heads_source"] == "given list"
    assert summary["experiments"]["ablate"]["target_delta_ci"] == [None, None]
    assert any(line.startswith("ablate: zero ablate of 2.1,0.3 (given list)") for line in lines)
    assert any("no interval: n_bootstrap = 0" in line for line in lines)


# ------------------------------------------------------------------------- kv_budget steps


def test_retrieval_recipe_steps():
    recipe = load_recipe("recipes/retrieval_heads.toml")
    assert [(s.kind, s.name) for s in recipe.steps] == [
        ("scan", "retrieval"), ("dose", "retrieval_dose"), ("kv_budget", "retrieval_kv_budget")]
    dose, budget = recipe.steps[1].options, recipe.steps[2].options
    assert dose["method"] == "uniform_attention" and dose["ks"] == [1, 2, 5, 10, 20]
    assert dose["heads_from"] == "retrieval" and dose["n_random"] == 5
    assert budget["from"] == "retrieval" and budget["task"] == "niah"
    assert (budget["sink"], budget["window"], budget["n_random"]) == (4, 64, 5)
    assert budget["task_options"] == dose["task_options"]


KV = SCAN + '[[step]]\nkind = "kv_budget"\nfrom = "induction"\n'


@pytest.mark.parametrize(
    "text,message",
    [
        (KV, "exactly one of threshold = X"),
        (KV + 'threshold = 0.1\nfull_share = 0.2\n', "exactly one of threshold = X"),
        (KV + 'full_share = 1.5\n', "full_share must lie in \\[0, 1\\]"),
        (KV + 'full_share = "a"\n', "full_share must be a number"),
        (KV + 'threshold = 0.1\naggregate = "median"\n', "aggregate must be 'max' or 'mean'"),
        (KV + 'threshold = 0.1\nwindow = -1\n', "window must be an integer >= 0"),
        (KV + 'threshold = 0.1\nn_random = 2\n', "n_random only apply with task"),
        (KV + 'threshold = 0.1\ntask = "nope"\n', "unknown task 'nope'"),
        (KV + 'threshold = 0.1\ntask = "niah"\ntask_options = { model = "x" }\n',
         "task_options cannot set model"),
        (KV + 'threshold = 0.1\nheads_from = "induction"\n', "unknown: \\['heads_from'\\]"),
        (SCAN + '[[step]]\nkind = "kv_budget"\nthreshold = 0.1\n', "needs 'from'"),
        (SCAN + '[[step]]\nkind = "kv_budget"\nfrom = "inductio"\nthreshold = 0.1\n',
         "from = 'inductio' names no earlier step"),
    ],
    ids=["no-rule", "two-rules", "share-range", "share-type", "aggregate", "window",
         "stray-n-random", "task", "task-model", "heads-from", "no-from", "missing"],
)
def test_bad_kv_budget_steps_are_recipe_errors(tmp_path, text, message):
    path = tmp_path / "r.toml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=message):
        load_recipe(path)


KV_RECIPE = '''name = "kv"
model = "tiny:llama-gqa"

[[step]]
kind = "scan"
scorer = "previous_token"
n = 2
params = { seq_len = 8 }

[[step]]
kind = "kv_budget"
name = "budget"
from = "previous_token"
full_share = 0.25
sink = 1
window = 2
task = "tiny_self"
task_options = { n = 10, seed = 1 }
n_random = 3
n_bootstrap = 50

[[step]]
kind = "kv_budget"
name = "plan_only"
from = "previous_token"
threshold = 1000.0
aggregate = "mean"
context_length = 100
'''


def test_kv_budget_step_writes_plan_measures_it_and_resumes(tiny_llama, tiny_task, tmp_path):
    from headprobe.heads.retrieval.kv_budget import KVBudgetPlan, plan_kv_budget, read_duo_attention
    from headprobe.models import describe_model

    model, _ = tiny_llama
    spec = describe_model(model)
    path = tmp_path / "kv.toml"
    path.write_text(KV_RECIPE)
    recipe = load_recipe(path)
    out = tmp_path / "out"
    lines: list[str] = []
    results = run_recipe(recipe, model, out, progress=False, echo=lines.append)
    summary = json.loads((out / "summary.json").read_text())
    assert [(s["name"], s["kind"]) for s in summary["steps"]] == [
        ("previous_token", "scan"), ("budget", "kv_budget"), ("plan_only", "kv_budget")]

    # the plan is plan_kv_budget's on the named scan, written in every format
    expected = plan_kv_budget(results["previous_token"], spec, full_share=0.25, sink=1, window=2)
    plan = results["budget"].plan
    assert plan.full_heads() == expected.full_heads()
    n_total = spec.n_layers * spec.n_kv_heads
    assert len(plan.full_heads()) == round(0.25 * n_total) >= 1
    assert KVBudgetPlan.from_json(out / "budget" / "plan.json").full_heads() == plan.full_heads()
    assert KVBudgetPlan.from_csv(out / "budget" / "plan.csv").full_heads() == plan.full_heads()
    duo = read_duo_attention(out / "budget" / "duo_attention")
    assert (duo.sink, duo.window) == (1, 2) and duo.full_heads() == plan.full_heads()
    headkv = json.loads((out / "budget" / "headkv.json").read_text().splitlines()[0])
    assert len(headkv) == spec.n_layers * spec.n_heads

    # the summary: counts, memory saved at the task's context length, accuracies with CIs
    entry = summary["kv_budgets"]["budget"]
    assert entry["n_full"] == len(plan.full_heads())
    assert entry["n_streaming"] == n_total - entry["n_full"]
    assert (entry["sink"], entry["window"], entry["from"]) == (1, 2, "previous_token")
    length = entry["context_length"]
    assert length > 3  # the longest prompt plus a new token: more than sink + window
    assert entry["memory_saved_at_context_length"] == pytest.approx(plan.memory_saved(length))
    assert entry["memory_saved"][str(length)] == pytest.approx(plan.memory_saved(length))
    assert entry["memory_saved_at_context_length"] > 0
    assert entry["baseline_accuracy"] == 1.0 and entry["n_prompts"] == 10
    table = results["budget"].accuracy
    assert list(table["condition"]) == ["baseline", "plan", "random_0", "random_1", "random_2"]
    plan_row = table[table["condition"] == "plan"].iloc[0]
    assert entry["plan_accuracy"] == pytest.approx(plan_row["accuracy"])
    low, high = entry["plan_accuracy_ci"]
    assert low <= entry["plan_accuracy"] <= high
    randoms = table[table["condition"].str.startswith("random_")]["accuracy"]
    assert entry["mean_random_accuracy"] == pytest.approx(randoms.mean())
    assert len(entry["random_accuracy_cis"]) == entry["n_random"] == 3
    assert (out / "budget" / "accuracy.csv").is_file()
    assert any(line.startswith("budget: kv budget from previous_token") for line in lines)

    # no task: only the plan, memory at the context_length asked for
    only = summary["kv_budgets"]["plan_only"]
    assert only["n_full"] == 0 and "plan_accuracy" not in only
    assert only["memory_saved_at_context_length"] == pytest.approx(
        (100 - 36) / 100)  # every kv head streaming: sink 4 + window 32 of 100 tokens kept
    assert not (out / "plan_only" / "accuracy.csv").exists()

    # a re-run skips both steps and writes the same summary
    lines.clear()
    again = run_recipe(recipe, model, out, progress=False, echo=lines.append)
    for name in ("budget", "plan_only"):
        assert any(line.startswith(f"{name}: step already done") for line in lines), name
    assert json.loads((out / "summary.json").read_text()) == summary
    assert again["budget"].plan.full_heads() == plan.full_heads()
    assert list(again["budget"].accuracy["accuracy"]) == pytest.approx(list(table["accuracy"]))

    # a changed parameter reruns that step only, and says what changed
    path.write_text(KV_RECIPE.replace("window = 2", "window = 3"))
    lines.clear()
    run_recipe(load_recipe(path), model, out, progress=False, echo=lines.append)
    assert any("budget: the saved result" in line and "params.window: 2 -> 3" in line
               for line in lines)
    assert any(line.startswith("plan_only: step already done") for line in lines)
    assert json.loads((out / "summary.json").read_text())["kv_budgets"]["budget"]["window"] == 3


# ------------------------------------------------------------------------- safety recipe


def test_safety_recipe_steps_and_rank_by():
    recipe = load_recipe("recipes/safety_heads.toml")
    names = [s.name for s in recipe.steps]
    assert names[:2] == ["ships", "sahara"] and len(names) == 7
    sahara_steps = [s for s in recipe.steps if s.options.get("heads_from") == "sahara"]
    assert sahara_steps and all(s.options["rank_by"] == "set_rank" for s in sahara_steps)
    assert all(s.options["n_random"] >= 10 for s in recipe.steps if s.kind == "ablate")


def test_rank_by_selects_by_another_column(tmp_path):
    import pandas as pd

    from headprobe.headtable import HeadTable
    from headprobe.recipes.format import Step
    from headprobe.recipes.steps import select_heads

    frame = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "kv_head": [0, 0, 0, 0],
                          "score": [9.0, 8.0, 7.0, 6.0], "set_rank": [0.0, 1.0, 0.0, 2.0]})
    table = HeadTable(frame)
    step = Step("ablate", "a", {"heads_from": "s", "rank_by": "set_rank", "threshold": 0,
                                "task": "t"})
    heads, source = select_heads(step, {"s": table})
    assert heads == [(1, 1), (0, 1)] and "by set_rank" in source
    bad = Step("ablate", "a", {"heads_from": "s", "rank_by": "nope", "top": 1, "task": "t"})
    with pytest.raises(RecipeError, match="rank_by = 'nope' is not a column"):
        select_heads(bad, {"s": table})
    text = SCAN + ('[[step]]\nkind = "ablate"\ntask = "induction_copy"\nheads_from = '
                   '"induction"\ntop = 1\nrank_by = 3\n')
    path = tmp_path / "r.toml"
    path.write_text('model = "tiny:llama-gqa"\n' + text)
    with pytest.raises(RecipeError, match="rank_by must name a column"):
        load_recipe(path)


# ------------------------------------------------------------------------- shipped recipes, small


@pytest.fixture(scope="module")
def recipe_models(smol):
    """The recipes' models, loaded once: SmolLM2 (the session's) and the two organisms."""
    from headprobe.catalogue import load_model

    loaded = {"smollm2-135m-instruct": smol}

    def get(name):
        if name not in loaded:
            loaded[name] = load_model(name)
        return loaded[name][0]

    return get


def _check_successor(summary, results, out):
    """The behavioural ranking is the drop on increment not shared by the controls, compared
    with the weights-only ranking; 12 ablations; the mod-10 view."""
    import pandas as pd

    heads = pd.read_csv(out / "behaviour" / "heads.csv")
    controls = heads[["drop_repeat", "drop_facts"]].max(axis=1).clip(lower=0)
    assert heads["specific"].to_numpy() == pytest.approx(
        (heads["drop_increment"] - controls).to_numpy(), abs=1e-6)  # float32 scores
    assert heads["drop_facts"].to_numpy() == pytest.approx(1 - heads["nld_facts"].to_numpy(),
                                                           abs=1e-6)
    behaviour = summary["behaviour"]["behaviour"]
    assert len(behaviour["weights_only"]["top5"]) == len(behaviour["behaviour"]["top5"]) == 5
    assert behaviour["weights_only"]["max_score"] > behaviour["weights_only"]["chance"]
    rho, p_value = behaviour["agreement"]["spearman_score_vs_specific"]
    assert -1 <= rho <= 1 and 0 <= p_value <= 1
    assert 0 <= behaviour["agreement"]["top5_overlap"] <= 5
    top = results["behaviour"].heads(k=3)
    ablations = summary["experiments"]
    assert len(ablations) == 12
    assert ablations["ablate_behaviour_top3_repeat"]["heads"] == ",".join(
        f"{layer}.{head}" for layer, head in top)
    assert ablations["ablate_weights_top1_facts"]["heads"] == "{}.{}".format(
        *results["successor"].heads(k=1)[0])
    mod10 = summary["mod10"]["mod10"]
    for view in ("centered", "uncentered"):
        assert 0 <= mod10[view]["accuracy"] <= 1 and mod10[view]["n_points"] > 20


def _check_temporal(summary, results, out):
    """Known facts, EAP-IG agreeing with exact patching, both ablations, the edit."""
    selected = summary["temporal_heads"]["temporal_heads"]
    known = selected["known_facts"]
    assert known["temporal"]["known"] >= 5  # US 1985/1995/2019, Russia, China, Apple 2004 ...
    assert selected["agreement"]["pearson"] > 0.5  # EAP-IG vs exact
    heads = ",".join(h[1:].replace("H", ".") for h in selected["heads"])
    for name in ("ablate_temporal", "ablate_invariant"):
        assert summary["experiments"][name]["heads"] == heads
    edit = summary["temporal_edits"]["temporal_edit"]
    assert edit["heads"] == heads and 0.0 <= edit["c=2"]["target_flip_rate"] <= 1.0


def _check_induction(summary, results, out):
    ablation = summary["experiments"]["induction_ablation"]
    assert ablation["baseline_accuracy"] > 0.8 and ablation["target_delta"] < 0


def _check_retrieval(summary, results, out):
    budget = summary["kv_budgets"]["retrieval_kv_budget"]
    assert budget["n_full"] >= 1 and 0 <= budget["plan_accuracy"] <= 1
    assert (out / "retrieval_kv_budget" / "accuracy.csv").is_file()


RECIPE_CHECKS = {"successor_heads": _check_successor, "temporal_heads": _check_temporal,
                 "induction": _check_induction, "retrieval_heads": _check_retrieval}


@pytest.mark.real
@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipe_runs_small(path, recipe_models, tmp_path):
    """Every shipped recipe end to end at its [small] setting: every step runs, writes what
    its kind saves and has its summary entry, in the file's order."""
    recipe = load_recipe(path, small=True)
    model = recipe_models(recipe.model)
    out = tmp_path / "out"
    lines: list[str] = []
    results = run_recipe(recipe, model, out, progress=False, echo=lines.append)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["small"] is True and summary["model"] == recipe.model
    assert [(s["name"], s["kind"]) for s in summary["steps"]] == [
        (s.name, s.kind) for s in recipe.steps]
    kinds = step_kinds()
    for step in recipe.steps:
        kind = kinds[step.kind]
        assert step.name in summary[kind.section], step.name
        for file in kind.saved_files(step):
            assert (out / step.name / file).is_file(), (step.name, file)
        if kind.table:
            table = results[step.name]
            assert isinstance(table, HeadTable) and table.data["score"].notna().any()
        assert any(line.startswith(f"{step.name}:") for line in lines), step.name
    for name, entry in summary.get("experiments", {}).items():
        assert 0 <= entry["baseline_accuracy"] <= 1 and entry["n_prompts"] >= 1, name
    if path.stem in RECIPE_CHECKS:
        RECIPE_CHECKS[path.stem](summary, results, out)
