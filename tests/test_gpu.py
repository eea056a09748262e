"""Every public route on CUDA: tiny llama-gqa, gemma3 and gpt2 models built on the GPU.

Each route runs once on a model built on :data:`DEVICE` (in fp32 and in bf16) and once on the
same random weights on the CPU in fp32 (:func:`headprobe.tiny.tiny_model` draws the weights on
the CPU from the seed, then moves and casts them). The device result must be finite, computed
on the device (tensors on it; results' metadata naming it) and within a tolerance of the CPU
run: fp32 on the device :data:`FP32_TOL` (different kernels, same precision), bf16
:data:`BF16_TOL` (absolute; the routes' values are attention shares in [0, 1] and effects in
logit-difference units up to ~1; ``tests/test_precision.py`` measures bf16 against fp32 on
the CPU at <= 0.012).

Routes: every registered scorer, five ablations and sink redistribution through
:func:`~headprobe.interventions.intervene` and a forward pass (and the five ablations through
:func:`~headprobe.experiments.ablation_experiment`), the patching engine
(:func:`~headprobe.patching.activation_patch_heads`), path patching
(:func:`~headprobe.patching.path_patch_senders`), the fast scan (the loop scan on gpt2, which
the fast scan refuses), EAP and EAP-IG (:func:`~headprobe.attribution.attribution_patching`)
and KV-cached generation (:func:`~headprobe.runtime.decode.generate`, cached equal to
recomputed).

Skipped without CUDA.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch

from headprobe import patching as P
from headprobe.attribution import attribution_patching
from headprobe.errors import ScorerNeedsError
from headprobe.experiments import ablation_experiment
from headprobe.fastscan import loop_scan, scan_heads
from headprobe.heads.conflict.knowledge_conflict import Fact, conflict_item
from headprobe.inputs import Text, iter_batches, tokenize_prompts
from headprobe.interventions import intervene
from headprobe.metrics import final_logits
from headprobe.registry import get_scorer, list_scorers
from headprobe.runtime.decode import generate
from headprobe.runtime.forward import forward_batch
from headprobe.scorers.base import HARD_NEEDS
from headprobe.tasks.base import Task, TaskItem
from headprobe.tasks.build import build_task
from headprobe.tiny import tiny_model

# HEADPROBE_TEST_DEVICE=cpu runs the same checks on the CPU (a dry run of this file on a
# machine without a GPU: the routes must also hold between two CPU models)
DEVICE = os.environ.get("HEADPROBE_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                                 reason="needs CUDA")]

FP32_TOL = 1e-3
BF16_TOL = 0.05
KINDS = ["llama-gqa", "gemma3", "gpt2"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

# Pairs of equal token length with single-character answers (the tiny tokenizer is
# character-level), as in tests/test_fastscan.py and tests/test_precision.py.
ITEMS = [
    TaskItem("ab cd ab", "c", "x", "ab xd ab"),
    TaskItem("pq rs pq", "r", "x", "pq xs pq"),
    TaskItem("hello", "l", "o", "jello"),  # shorter: exercises padding
    TaskItem("mn op m", "n", "x", "mx op m"),
]
# DLA's default facts task needs whole-word answers; tests/test_dla.py's tiny items instead.
DLA_ITEMS = [
    TaskItem("The capital of France is", "P", "R"),
    TaskItem("Rome is in", "I", "F"),
    TaskItem("abc def ghij", "k", "z"),
]
PROMPTS = ["the cat sat on", "a", "hello there, world"]
REFERENCE = ["abcde", "vwxyz", "hello there"]
SOURCES = ["zyxwvutsrqponmlkjihgfedcba0123456789", "the quick brown fox jumps over it"]
HEADS = [(0, 1), (1, 2), (2, 3)]
ABLATIONS = {
    "zero": {},
    "mean": {"reference": REFERENCE},
    "resample": {"sources": SOURCES, "seed": 1},
    "uniform_attention": {},
    "scale_output": {"factor": 0.1},
}


@pytest.fixture(scope="module", params=[(kind, name) for kind in KINDS for name in DTYPES],
                ids=lambda param: f"{param[0]}-{param[1]}")
def pair(request):
    """``(reference, model, tol)``: the tiny model on the CPU in fp32 and on :data:`DEVICE`
    in the parametrised dtype (both ``(bridge, spec)``), and the tolerance."""
    kind, name = request.param
    reference = tiny_model(kind)
    model = tiny_model(kind, device=DEVICE, dtype=DTYPES[name])
    assert {p.device.type for p in model[0].original_model.parameters()} == {
        torch.device(DEVICE).type}
    return reference, model, (FP32_TOL if name == "fp32" else BF16_TOL)


def _on_device(tensor: torch.Tensor) -> None:
    assert tensor.device.type == torch.device(DEVICE).type, tensor.device


def _close(reference, got, tol: float, what: str, *, logits: bool = False) -> None:
    """``got`` (device result) is finite and within ``tol`` of ``reference`` (CPU fp32); NaN
    only where the reference has NaN (e.g. layers a scan skips). ``logits``: raw logits, whose
    magnitude reaches ~3 on the tiny models; the tolerance is then ``tol * max(1, max
    |reference|)`` (bf16 rounds relative to the magnitude)."""
    ref = torch.tensor(np.asarray(reference, dtype=np.float64))
    new = torch.tensor(np.asarray(got.detach().float().cpu() if isinstance(got, torch.Tensor)
                                  else got, dtype=np.float64))
    assert ref.shape == new.shape, what
    assert torch.equal(torch.isnan(ref), torch.isnan(new)), f"{what}: NaN pattern differs"
    keep = ~torch.isnan(ref)
    assert bool(torch.isfinite(new[keep]).all()), f"{what}: non-finite values"
    assert keep.any(), f"{what}: nothing to compare"
    diff = float((ref[keep] - new[keep]).abs().max())
    if logits:
        tol = tol * max(1.0, float(ref[keep].abs().max()))
    assert diff <= tol, f"{what}: max |device - cpu| = {diff:.3g} > {tol}"


def _table_close(reference, got, tol: float, what: str, column: str = "score") -> None:
    assert got.meta["device"].startswith(torch.device(DEVICE).type), got.meta["device"]
    _close(reference[column].to_numpy(), got[column].to_numpy(), tol, what)


def _batch(model, spec, prompts):
    lists = tokenize_prompts(model, prompts, spec)
    device = next(model.original_model.parameters()).device
    return next(iter(iter_batches(lists, len(lists), pad_token_id=spec.pad_token_id or 0,
                                  device=device)))


def _last_logits(model, spec, prompts, method: str | None = None, **options) -> torch.Tensor:
    """[B, V] logits at each prompt's last token (right-padded batch), optionally under
    ``intervene(model, HEADS, method, **options)``; on the model's device."""
    batch = _batch(model, spec, prompts)
    with torch.inference_mode():
        if method is None:
            logits = forward_batch(model, batch)
        else:
            with intervene(model, HEADS, method, **options):
                logits = forward_batch(model, batch)
    # on the model's own device: the reference's is the CPU, the device model's DEVICE
    assert logits.device.type == batch.tokens.device.type, logits.device
    return final_logits(logits, batch.last)


# ---------------------------------------------------------------------------------- scorers


# Scorers whose scores are not bounded near 1 (Sahara: the log-ratio of the refusal
# direction's magnitude, ~17 on the tiny llama): compared relative to the largest reference
# score, as raw logits are.
RELATIVE_SCORERS = {"sahara"}
# The tiny models use a character tokenizer: one-character answers are single tokens (as in
# tests/test_conflict.py and tests/test_temporal.py).
CONFLICT_FACTS = [Fact("code", "x", "The code of x is ", "P"),
                  Fact("code", "y", "The code of y is ", "Q")]


def _temporal_tasks() -> dict[str, Task]:
    """Two temporal fact sets (``x``, ``y``) and one invariant set (``z``) for the tiny
    character-level models: pairs of equal length differing in the year."""
    def pairs(subject: str) -> list[TaskItem]:
        return [TaskItem(prompt=f"{subject} in 19{year} was", answer=answer, distractor=other,
                         corrupt_prompt=f"{subject} in 20{year} was", meta={"set": subject})
                for year, answer, other in (("10", "A", "B"), ("55", "C", "D"))]
    temporal = Task("temporal_facts", pairs("x") + pairs("y"), meta={"kind": "temporal"})
    invariant = Task("temporal_facts", [
        TaskItem(prompt="cap of ab is", answer="C", distractor="D",
                 corrupt_prompt="cap of cd is", meta={"set": "z"})], meta={"kind": "invariant"})
    return {"temporal": temporal, "invariant": invariant}


def _scorer_inputs(name: str, model: object) -> tuple[object, dict]:
    """Prompts and parameters that the tiny character-level model can meet for ``name``."""
    scorer = get_scorer(name)
    if name == "dla":
        return Task("tiny_dla", DLA_ITEMS), {}
    if name == "temporal":
        return _temporal_tasks(), {"ig_steps": 5}
    if name == "conflict":
        items = [conflict_item(fact, other, framing, model=model)
                 for fact, other in zip(CONFLICT_FACTS, "KL", strict=True)
                 for framing in (1, 2)]
        return Task("knowledge_conflict", items, meta={"target": "context"}), {}
    if name == "successor_behaviour":  # digit lists; the default facts need whole words
        tasks = {kind: build_task("successor_increment", model, kind=kind, n=4, sets=["digits"])
                 for kind in ("increment", "repeat")}
        return {**tasks, "facts": Task("tiny_facts", DLA_ITEMS)}, {}
    if "task" in scorer.defaults or "pairs" in scorer.needs:
        params = {"metric": "logit_diff"} if "metric" in scorer.defaults else {}
        return Task("tiny_pairs", ITEMS), params
    return None, {"n": 4}


def _retrieval_items(model: object) -> list[TaskItem]:
    """Needle prompts (the 24 characters before " Q?") answered by a word of the model's own
    greedy reply, so that the gate passes on the CPU reference (prompts whose reply has no
    word are left out; at least one must remain)."""
    prompts = ["Note rz<rz<rz<rz<rz<rz<rz<rz<. Q? A:", "Key tztztztztztztztztztztztz. Q? A:",
               "Code abcabcabcabcabcabcabcabc. Q? A:", "See xy1xy1xy1xy1xy1xy1xy1xy1. Q? A:",
               "Tag mo mo mo mo mo mo mo mo mo. Q? A:", "Say 42 42 42 42 42 42 42 42 4. Q? A:"]
    replies = generate(model, prompts, max_new_tokens=6).texts
    items = []
    for prompt, reply in zip(prompts, replies, strict=True):
        words = re.findall(r"[a-z0-9]+", reply.lower())
        if words:
            end = prompt.index(" Q?")
            items.append(TaskItem(Text(prompt, spans={"needle": prompt[end - 24:end]}),
                                  answer=words[0]))
    assert items, f"no reply of the tiny model holds a word: {replies}"
    return items


@pytest.mark.parametrize("name", list_scorers())
def test_scorer_on_device(pair, name):
    (ref, _), (model, spec), tol = pair
    scorer = get_scorer(name)
    hard = {need: why for need, why in scorer.unmet(model, spec).items() if need in HARD_NEEDS}
    if hard:
        pytest.skip(f"the tiny {spec.name} cannot meet {name}'s needs: {hard}")
    prompts, params = _scorer_inputs(name, ref)
    if name == "successor_behaviour" and tol != FP32_TOL:
        pytest.skip("ratios to the random tiny models' near-zero clean logit diffs: bf16 "
                    "rounding is amplified (fp32 is checked)")
    if name == "retrieval":  # trials whose answers are the CPU model's own greedy replies
        if tol != FP32_TOL:
            pytest.skip("retrieval's gate reads the greedy text, which bf16 may change")
        prompts, params = _retrieval_items(ref), {"max_new_tokens": 6}
    try:
        expected = get_scorer(name)(ref, prompts, progress=False, **params)
    except (NotImplementedError, ScorerNeedsError) as refused:
        # an architecture the scorer refuses on the CPU must be refused the same on the device
        with pytest.raises(type(refused)):
            get_scorer(name)(model, prompts, progress=False, **params)
        return
    got = get_scorer(name)(model, prompts, progress=False, **params)
    if name in RELATIVE_SCORERS:
        tol *= max(1.0, float(np.nanmax(np.abs(expected["score"].to_numpy()))))
    _table_close(expected, got, tol, name)


# ---------------------------------------------------------------------------- interventions


@pytest.mark.parametrize("method", [*ABLATIONS, "redistribute_sink"])
def test_intervention_forward_on_device(pair, method):
    """Five ablations and sink redistribution in a forward pass: logits at the last token."""
    (ref, ref_spec), (model, spec), tol = pair
    options = ABLATIONS.get(method, {"beta": 0.2})
    prompts = [item.prompt for item in ITEMS]
    expected = _last_logits(ref, ref_spec, prompts, method, **options)
    got = _last_logits(model, spec, prompts, method, **options)
    _on_device(got)
    _close(expected, got, tol, method, logits=True)
    plain = _last_logits(ref, ref_spec, prompts)
    assert float((plain - expected).abs().max()) > 10 * FP32_TOL  # the method acts


def test_ablation_experiment_on_device(pair):
    """The five ablations through ``ablation_experiment`` (judging on the device) on a task
    whose answers are the CPU model's own next characters; fp32 accuracies equal the CPU's."""
    (ref, ref_spec), (model, _), tol = pair
    with torch.inference_mode():
        first = _last_logits(ref, ref_spec, PROMPTS).argmax(-1)
    items = [TaskItem(prompt, ref.tokenizer.decode([int(token)]))
             for prompt, token in zip(PROMPTS, first, strict=True)]
    task = Task("tiny_self", items, judge="next_token")
    for method, options in ABLATIONS.items():
        kwargs = {"method": method, "n_random": 1, "seed": 0, "progress": False,
                  "n_bootstrap": 0, "method_options": options}
        expected = ablation_experiment(ref, task, HEADS, **kwargs)
        got = ablation_experiment(model, task, HEADS, **kwargs)
        assert got.meta["device"].startswith(torch.device(DEVICE).type)
        accuracy = got.table["accuracy"].to_numpy()
        assert np.isfinite(accuracy).all() and ((accuracy >= 0) & (accuracy <= 1)).all()
        assert expected.table["accuracy"].iloc[0] == 1.0  # baseline, by construction
        if tol == FP32_TOL:
            assert list(got.table["accuracy"]) == list(expected.table["accuracy"]), method


# --------------------------------------------------------------------------------- patching


def _engine(model):
    return P.PatchingEngine(model, [i.prompt for i in ITEMS], [i.corrupt_prompt for i in ITEMS],
                            [i.answer for i in ITEMS], [i.distractor for i in ITEMS])


def test_patching_engine_and_path_patching_on_device(pair):
    (ref, _), (model, spec), tol = pair
    expected, got = _engine(ref), _engine(model)
    _on_device(got.activations("clean", spec.hooks.at("z", 0), 0))
    for metric in ("logit_diff", "kl"):
        _table_close(P.activation_patch_heads(expected, metric=metric, progress=False),
                     P.activation_patch_heads(got, metric=metric, progress=False), tol,
                     f"activation patching ({metric})")
    _table_close(P.path_patch_senders(expected, metric="logit_diff", progress=False),
                 P.path_patch_senders(got, metric="logit_diff", progress=False), tol,
                 "path patching")


@pytest.mark.parametrize("method", ["patch", "zero", "mean"])
def test_fast_scan_on_device(pair, method):
    """The fast scan (the loop scan where the fast one refuses the architecture: gpt2)."""
    (ref, _), (model, _), tol = pair
    kwargs = {"method": method, "metric": "logit_diff", "batch_size": 3, "progress": False}
    try:
        expected = scan_heads(ref, ITEMS, heads_per_pass=3, **kwargs)
    except NotImplementedError:
        with pytest.raises(NotImplementedError, match="loop_scan"):
            scan_heads(model, ITEMS, **kwargs)
        expected, got = loop_scan(ref, ITEMS, **kwargs), loop_scan(model, ITEMS, **kwargs)
    else:
        got = scan_heads(model, ITEMS, heads_per_pass=3, **kwargs)
    assert got.meta["params"]["engine"] == expected.meta["params"]["engine"]
    _table_close(expected, got, tol, f"{method} scan")
    _table_close(expected, got, tol, f"{method} scan mean_ld", column="mean_ld")


@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_attribution_on_device(pair, method):
    (ref, _), (model, _), tol = pair
    expected = attribution_patching(ref, ITEMS, method=method, steps=5, progress=False)
    got = attribution_patching(model, ITEMS, method=method, steps=5, progress=False)
    for node in ("z", "q", "k", "v"):
        _table_close(expected.nodes[node], got.nodes[node], tol, f"{method} {node} nodes")
    _close(expected.mlp["score"].to_numpy(), got.mlp["score"].to_numpy(), tol,
           f"{method} mlp nodes")
    assert list(got.edges["upstream"]) == list(expected.edges["upstream"])
    _close(expected.edges["score"].to_numpy(), got.edges["score"].to_numpy(), tol,
           f"{method} edges")


# ------------------------------------------------------------------------------- generation


def _agreeing_steps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[N, S] bool: steps whose logits are comparable, i.e. every earlier token agrees."""
    same = (a == b).long()
    earlier = torch.cat([torch.ones_like(same[:, :1]), same[:, :-1]], dim=1)
    return earlier.cumprod(dim=1).bool()


def test_cached_generation_on_device(pair):
    """KV-cached greedy decoding equals the recomputing route on the device; both follow the
    CPU fp32 run (in bf16: up to the first token where the argmax differs)."""
    (ref, _), (model, _), tol = pair
    kwargs = {"max_new_tokens": 6, "keep_logits": True}
    expected = generate(ref, PROMPTS, **kwargs)
    cached = generate(model, PROMPTS, use_cache=True, **kwargs)
    recomputed = generate(model, PROMPTS, use_cache=False, **kwargs)
    for got in (cached, recomputed):
        assert got.logits is not None and bool(torch.isfinite(got.logits).all())
    if tol == FP32_TOL:
        assert torch.equal(cached.tokens, recomputed.tokens)
        assert torch.equal(cached.tokens, expected.tokens)
    for a, b, what in ((cached, recomputed, "cached vs recomputed"),
                       (cached, expected, "device vs cpu")):
        comparable = _agreeing_steps(a.tokens, b.tokens)
        assert bool(comparable[:, 0].all())
        _close(b.logits[comparable], a.logits[comparable], tol, what, logits=True)
    with intervene(model, HEADS, "zero"):  # an intervention active in cached decoding
        ablated = generate(model, PROMPTS, use_cache=True, **kwargs)
    with intervene(ref, HEADS, "zero"):
        reference = generate(ref, PROMPTS, use_cache=True, **kwargs)
    comparable = _agreeing_steps(ablated.tokens, reference.tokens)
    _close(reference.logits[comparable], ablated.logits[comparable], tol, "ablated decoding",
           logits=True)
