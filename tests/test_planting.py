"""Planted models (:mod:`headprobe.planting`): each planted role does what it says, checked
on the attention patterns and logits of the bridge (never through a scorer), and the builder
refuses what it cannot plant."""

from __future__ import annotations

import pytest
import torch

from headprobe import registry
from headprobe.errors import PlantingError, UnknownNameError
from headprobe.heads.retrieval.ground_truth import needle_trials
from headprobe.heads.successor.plant import successor_pairs
from headprobe.planted_cases import ANSWER_TOKEN, PLANTED_MODELS, build_planted, generic_cases
from headprobe.planting import KINDS, planted_model, spread_codes
from headprobe.types import Head

CORE = {(0, 0): "previous_token", (0, 4): "duplicate_token", (1, 2): "induction",
        (1, 4): "previous_token", (2, 6): "induction"}


@pytest.fixture(scope="module", params=KINDS)
def core(request):
    return planted_model(request.param, CORE)


def repeated(planted, length=40, seed=1):
    """[1, 1 + 2 * length] BOS + r + r with r distinct random non-special tokens."""
    tokenizer = planted.tokenizer
    pool = torch.tensor(sorted(set(range(len(tokenizer))) - set(tokenizer.all_special_ids)))
    generator = torch.Generator().manual_seed(seed)
    r = pool[torch.randperm(len(pool), generator=generator)[:length]]
    return torch.cat([torch.tensor([tokenizer.bos_token_id]), r, r])[None]


def patterns(planted, ids):
    """logits [T, V] and {layer: [H, T, T]} attention patterns from the bridge's hooks."""
    with torch.no_grad():
        logits, cache = planted.bridge.run_with_cache(ids)
    return logits[0], {layer: cache[f"blocks.{layer}.attn.hook_pattern"][0]
                       for layer in range(planted.spec.n_layers)}


def previous_mass(pattern):
    """[H] mean attention from i to i - 1 over i >= 1."""
    rows = torch.arange(1, pattern.shape[-1])
    return pattern[:, rows, rows - 1].mean(-1)


def induction_mass(pattern, length):
    """[H] mean attention from the second copy's tokens to the token after their first copy."""
    rows = torch.arange(length + 2, 2 * length + 1)
    return pattern[:, rows, rows - length + 1].mean(-1)


def test_planted_roles_attend_where_they_should(core):
    length = 40
    ids = repeated(core, length)
    _, pattern = patterns(core, ids)
    for head in core.known("previous_token"):
        assert previous_mass(pattern[head.layer])[head.head] > 0.99
    for head in core.known("induction"):
        assert induction_mass(pattern[head.layer], length)[head.head] > 0.99
    for head in core.known("duplicate_token"):
        rows = torch.arange(length + 1, 2 * length + 1)
        earlier = pattern[head.layer][head.head, rows, rows - length]
        own = pattern[head.layer][head.head, rows, rows]
        assert (earlier / (1 - own)).min() > 0.99  # all mass off the diagonal on the copy


def test_random_heads_are_not_like_planted_ones(core):
    length = 40
    ids = repeated(core, length)
    _, pattern = patterns(core, ids)
    for layer in range(core.spec.n_layers):
        prev = previous_mass(pattern[layer])
        ind = induction_mass(pattern[layer], length)
        for head in range(core.spec.n_heads):
            if Head(layer, head) not in core.roles:
                assert prev[head] < 0.5 and ind[head] < 0.5, (layer, head)


def test_induction_model_predicts_the_copied_token(core):
    for seed in range(3):
        ids = repeated(core, 40, seed)
        logits, _ = patterns(core, ids)
        predicted = logits.argmax(-1)[41:-1]
        assert torch.equal(predicted, ids[0, 42:])


def test_unknown_role_lists_the_roles():
    with pytest.raises(UnknownNameError, match=r"previous_token.*induction"):
        planted_model("llama", {(0, 0): "no_such_role"})


def test_shared_kv_group_is_refused():
    with pytest.raises(PlantingError, match="share kv head 0"):
        planted_model("llama", {(0, 0): "previous_token", (0, 1): "duplicate_token"})


def test_induction_needs_an_earlier_previous_token_head():
    with pytest.raises(PlantingError, match="previous_token head in an earlier layer"):
        planted_model("llama", {(1, 0): "previous_token", (1, 2): "induction"})


def test_spread_codes_are_unit_and_apart(core):
    codes = core.codes[[t for t in range(len(core.codes)) if t != core.tokenizer.bos_token_id]]
    cosines = (codes @ codes.T).fill_diagonal_(0.0)
    assert torch.allclose(codes.norm(dim=1), torch.ones(len(codes)), atol=1e-5)
    assert cosines.abs().max() < 0.3
    assert torch.equal(spread_codes(5, 8, seed=0), torch.eye(8)[:5])  # one-hot when it fits


# ---- the ground-truth models: every role of planted_cases.LAYOUT at once ------------------


@pytest.fixture(scope="module", params=sorted(PLANTED_MODELS))
def full(request):
    return request.param, build_planted(request.param)


def test_sink_heads_attend_to_bos(full):
    _, planted = full
    _, pattern = patterns(planted, repeated(planted, 40))
    for head in planted.known("sink"):
        assert pattern[head.layer][head.head, 1:, 0].min() > 0.99


def test_successor_ov_maps_each_item_to_the_next(full):
    _, planted = full
    pairs = successor_pairs(planted)
    assert len(pairs) >= 50  # digits, numbers 1..9, both letter cases
    sources = torch.tensor([s for s, _ in pairs])
    embed = planted.hf.model.embed_tokens(sources)  # [P, d_model] (Gemma's scale included)
    normed = embed / embed.pow(2).mean(-1, keepdim=True).sqrt()
    for head in planted.known("successor"):
        attn = planted.attention(head.layer)
        kv = planted.kv_head(head)
        d_head = planted.spec.d_head
        z = normed @ attn.v_proj.weight[kv * d_head:(kv + 1) * d_head].T
        out = z @ attn.o_proj.weight[:, head.head * d_head:(head.head + 1) * d_head].T
        logits = (out @ planted.hf.lm_head.weight.T).detach()  # [P, vocab]
        for row, (_, successor) in enumerate(pairs):
            candidates = [t for _, t in pairs] + [s for s, _ in pairs]
            best = max(candidates, key=lambda t, row=row: float(logits[row, t]))
            assert best == successor


def test_retrieval_heads_copy_the_needle(full):
    _, planted = full
    item = needle_trials(planted.bridge, n=1)[0]
    text = item.prompt.text
    ids = planted.tokenizer(text, return_tensors="pt")["input_ids"]
    logits, pattern = patterns(planted, ids)
    answer = item.answer  # the needle but its first digit, which ends the prompt
    target = 1 + text.index(answer)  # BOS first: the needle's second digit
    assert planted.tokenizer.decode([int(logits[-1].argmax())]) == answer[0]
    for head in planted.known("retrieval"):
        assert pattern[head.layer][head.head, -1, target] > 0.99
    for head in planted.known("induction"):  # digits are not theirs to copy
        assert pattern[head.layer][head.head, -1].max() < 0.5


def test_answer_head_pushes_its_token(full):
    _, planted = full
    (head,) = planted.known("answer")
    ids = planted.tokenizer("abc def", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        _, cache = planted.bridge.run_with_cache(ids)
    out = cache[f"blocks.{head.layer}.attn.hook_z"][0, -1, head.head]  # [d_head]
    d_head = planted.spec.d_head
    written = planted.attention(head.layer).o_proj.weight[
        :, head.head * d_head:(head.head + 1) * d_head] @ out
    logits = planted.hf.lm_head.weight @ written
    assert int(logits.argmax()) == planted.token_id(ANSWER_TOKEN)


def _floors(table, case):
    """auroc, recall and precision of ``case.known`` in ``table``'s ``case.column`` ranking."""
    scores = {Head(int(r.layer), int(r.head)): float(getattr(r, case.column))
              for r in table.to_frame().itertuples()}
    positives = [scores[h] for h in case.known]
    negatives = [s for h, s in scores.items() if h not in case.known]
    auroc = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives) / (
        len(positives) * len(negatives))
    called = {h for h, s in scores.items() if s >= case.threshold}
    recall = len(called & case.known) / len(case.known)
    precision = len(called & case.known) / len(called) if called else 0.0
    return {"auroc": auroc, "recall": recall, "precision": precision}


def test_every_planted_case_meets_its_floors(full):
    model_id, planted = full
    cases = [case for case in all_planted_cases() if case.model == model_id]
    assert {case.scorer for case in cases} >= {"previous_token", "duplicate_token", "induction",
                                               "sink", "retrieval", "successor", "dla"}
    for case in cases:
        prompts = case.prompts(planted.bridge) if case.prompts is not None else None
        table = registry.scan(planted.bridge, case.scorer, prompts, n=case.n, progress=False,
                              **case.params)
        measured = _floors(table, case)
        for name, floor in case.minimum.items():
            assert measured[name] >= floor, (case.scorer, model_id, measured)


def all_planted_cases():
    cases = list(generic_cases())
    for head_type in registry.head_types().values():
        if head_type.ground_truth:
            cases += registry.resolve(head_type.ground_truth)()
    return [case for case in cases if case.source == "planted"]


def test_cases_of_one_model_id_share_its_builder():
    by_model = {}
    for case in all_planted_cases():
        by_model.setdefault(case.model, set()).add(case.build.__qualname__)
    assert by_model and all(len(builders) == 1 for builders in by_model.values())
