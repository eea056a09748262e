"""Tests of headprobe.registry and the Scorer record: lookup, every registered module, the
registered causal scans through ``scan()``, and needs."""

from __future__ import annotations

import importlib
from types import SimpleNamespace
from typing import get_args

import numpy as np
import pytest
import torch

from headprobe.attribution import attribution_patching
from headprobe.errors import UnknownScorerError
from headprobe.fastscan import scan_heads
from headprobe.registry import get_scorer, list_scorers, scan, scorer_modules
from headprobe.scorers.base import Scorer, ScorerData, ScoreResult, ScorerNeedsError, unmet_needs
from headprobe.scorers.params import describe
from headprobe.tasks.base import Task, TaskItem
from headprobe.types import Need

ITEMS = [
    TaskItem("ab cd ab", "c", "x", "ab xd ab"),
    TaskItem("pq rs pq", "r", "x", "pq xs pq"),
    TaskItem("hello", "l", "o", "jello"),
]


def test_unknown_scorer_names_the_registered_ones():
    with pytest.raises(UnknownScorerError, match="registered scorers: previous_token"):
        get_scorer("inductionn")
    with pytest.raises(UnknownScorerError):
        scan(None, "nope")


@pytest.mark.parametrize("name", list(scorer_modules()))
def test_every_registered_scorer_imports_with_its_name(name):
    module = importlib.import_module(scorer_modules()[name])
    scorer = module.SCORER
    assert isinstance(scorer, Scorer) and scorer.name == name
    assert get_scorer(name) is scorer
    assert all(info.help.strip() for info in describe(scorer.params))
    assert [info.name for info in describe(scorer.params)] == list(scorer.defaults)
    assert scorer.prompts.strip()  # what its prompts may be
    assert scorer.needs <= set(get_args(Need))
    assert scorer.description and scorer.reference


def test_causal_scans_are_registered_and_not_cheap():
    names = set(list_scorers())
    assert {"activation_patching", "ablation_scan", "attribution_patching"} <= names
    for name in ("activation_patching", "ablation_scan", "attribution_patching"):
        assert not get_scorer(name).cheap
    assert "pairs" in get_scorer("activation_patching").needs


def test_activation_patching_through_scan_equals_the_fast_scan(tiny_llama):
    model, spec = tiny_llama
    table = scan(model, "activation_patching", Task("tiny", ITEMS), progress=False,
                 metric="logit_diff", direction="noising")
    direct = scan_heads(model, ITEMS, method="patch", metric="logit_diff",
                        direction="noising", progress=False)
    np.testing.assert_allclose(table["score"], direct["score"], atol=1e-6)
    np.testing.assert_allclose(table["mean_ld"], direct["mean_ld"], atol=1e-6)
    assert table.meta["scorer"] == "activation_patching"
    assert table.meta["params"]["direction"] == "noising"
    assert table.meta["n_prompts"] == len(ITEMS)
    assert table.meta["mean_ld_clean"] == pytest.approx(direct.meta["mean_ld_clean"])
    assert len(table) == spec.n_total_heads and table["score"].abs().max() > 1e-3
    with pytest.raises(ValueError, match="'denoising' or 'noising'"):
        scan(model, "activation_patching", ITEMS, progress=False, direction="noise")


def test_ablation_scan_through_scan_and_the_loop_fallback(tiny_llama, tiny_gpt2):
    model, _ = tiny_llama
    items = [TaskItem(i.prompt, i.answer, i.distractor) for i in ITEMS]  # no corrupt prompts
    table = scan(model, "ablation_scan", items, progress=False, method="zero")
    direct = scan_heads(model, items, method="zero", metric="logit_diff", progress=False)
    np.testing.assert_allclose(table["score"], direct["score"], atol=1e-6)
    # GPT-2 has no layer runner: engine="auto" takes the reference loop
    gpt2 = scan(tiny_gpt2[0], "ablation_scan", items, progress=False, method="mean")
    assert gpt2.meta["engine_params"]["engine"] == "loop"
    assert np.isfinite(gpt2["score"]).all()


def test_attribution_patching_through_scan(tiny_llama):
    model, _ = tiny_llama
    table = scan(model, "attribution_patching", ITEMS, progress=False, method="eap")
    direct = attribution_patching(model, ITEMS, method="eap", edges=False, progress=False)
    np.testing.assert_allclose(table["score"], direct.nodes["z"]["score"], atol=1e-6)
    np.testing.assert_allclose(table["q"], direct.nodes["q"]["score"], atol=1e-6)
    assert table.meta["mean_ld_corrupt"] == pytest.approx(direct.meta["mean_ld_corrupt"])


def test_default_task_that_the_model_cannot_express_is_a_task_error(tiny_llama):
    from headprobe.errors import TaskError

    with pytest.raises(TaskError, match="single-token"):  # IOI names are not one char token
        scan(tiny_llama[0], "activation_patching", n=2, progress=False)


def _fake_scorer(needs: frozenset[Need]) -> Scorer:
    def prepare(model, spec, prompts, n, seed, params):
        return ScorerData(None, "0", 1, "nothing")

    def compute(model, spec, data, params, batch_size, progress):
        return ScoreResult(torch.zeros(spec.n_layers, spec.n_heads))

    return Scorer("fake", "a test scorer", "none", prepare, compute, needs=needs)


def test_needs_are_checked(tiny_llama):
    model, spec = tiny_llama
    reasons = unmet_needs(model, spec, frozenset({"images", "chat_template", "gpu", "pairs"}))
    assert set(reasons) == {"images", "gpu"}  # the char tokenizer has a chat template
    assert "image processor" in reasons["images"]
    no_template = SimpleNamespace(tokenizer=SimpleNamespace(chat_template=None),
                                  original_model=model.original_model)
    assert set(unmet_needs(no_template, spec, frozenset({"chat_template"}))) == {
        "chat_template"}
    with pytest.raises(ScorerNeedsError, match="image processor"):
        _fake_scorer(frozenset({"images"}))(model, progress=False)
    # gpu is a budget hint: a direct call still runs on the CPU
    assert len(_fake_scorer(frozenset({"gpu"}))(model, progress=False)) == spec.n_total_heads
    with pytest.raises(TypeError, match="params must be a Params dataclass"):
        Scorer("bad", "", "", _fake_scorer(frozenset()).prepare,
               _fake_scorer(frozenset()).compute, params=dict)
