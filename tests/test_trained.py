"""The trained ground truth: the shipped attention-only induction model, its causal test,
the scorers on it, and the training recipe (headprobe.trained)."""

from __future__ import annotations

import pytest
import torch

from headprobe import registry
from headprobe.heads.induction.ground_truth_trained import trained_cases
from headprobe.paths import resource_path
from headprobe.trained import (
    CURRENT_TOKEN_HEADS,
    FIRST_HALF_LOSS,
    INDUCTION_HEADS,
    KEY_PATH_REMOVED,
    PREVIOUS_TOKEN_HEADS,
    SECOND_HALF_LOSS,
    SINGLE_HEAD_REMOVED,
    WEIGHTS_FILE,
    TrainSettings,
    causal_head_effects,
    eval_sequences,
    half_losses,
    identify_heads,
    path_effects,
    train_induction_model,
    trained_induction_hf_model,
    trained_induction_model,
)

ALL_HEADS = [(layer, head) for layer in range(2) for head in range(4)]
OUTSIDE = sorted(set(ALL_HEADS) - INDUCTION_HEADS - PREVIOUS_TOKEN_HEADS - CURRENT_TOKEN_HEADS)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a small shared CPU the tiny model runs ~10x faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shipped():
    """(hf_model, held-out tokens) of the shipped weights."""
    hf_model, tokenizer = trained_induction_hf_model()
    return hf_model, eval_sequences(tokenizer)


def test_shipped_model_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert resource_path(WEIGHTS_FILE).is_file()
    assert len(resource_path(WEIGHTS_FILE).read_bytes()) < 400_000
    bridge, spec = trained_induction_model()
    assert (spec.n_layers, spec.n_heads, spec.d_head, spec.d_model) == (2, 4, 16, 64)
    hf = bridge.original_model
    for layer in hf.model.layers:  # attention-only: every MLP writes zero
        assert torch.count_nonzero(layer.mlp.down_proj.weight) == 0
    # the bridge computes what the plain model computes
    tokens = eval_sequences(bridge.tokenizer, n=2)
    with torch.no_grad():
        torch.testing.assert_close(bridge(tokens), hf(tokens).logits, atol=1e-4, rtol=1e-4)


def test_in_context_loss_drop_is_reproduced(shipped):
    hf_model, tokens = shipped
    first, second = half_losses(hf_model, tokens)
    assert first == pytest.approx(FIRST_HALF_LOSS, abs=0.01)
    assert second == pytest.approx(SECOND_HALF_LOSS, abs=0.01)
    assert first - second > 4.0


def test_causal_test_finds_the_known_heads(shipped):
    hf_model, tokens = shipped
    found = identify_heads(hf_model, tokens)
    assert set(found["induction_heads"]) == INDUCTION_HEADS
    assert set(found["previous_token_heads"]) == PREVIOUS_TOKEN_HEADS
    for head, removed in found["single_head_removed"].items():
        assert removed == pytest.approx(SINGLE_HEAD_REMOVED[head], abs=0.01)
    for head in KEY_PATH_REMOVED:
        assert found["layer0_path_removed"][(head, "k")] == pytest.approx(
            KEY_PATH_REMOVED[head], abs=0.01)


def test_ablating_the_known_heads_removes_the_drop_and_other_heads_do_not(shipped):
    """The heads outside the circuit (L0H1 and L1H0, the latter attending like an induction
    head) remove < 10% of the drop, each and together."""
    hf_model, tokens = shipped
    induction = tuple(sorted(INDUCTION_HEADS))
    effects = causal_head_effects(hf_model, tokens, [induction, OUTSIDE,
                                                     *([head] for head in OUTSIDE)])
    assert effects[induction] > 0.9
    assert all(abs(effects[(head,)]) < 0.1 for head in OUTSIDE)
    assert abs(effects[tuple(OUTSIDE)]) < 0.1
    # the previous-token heads act through the layer-1 keys, not the queries or values
    previous = tuple(sorted(PREVIOUS_TOKEN_HEADS))
    paths = path_effects(hf_model, tokens, [previous], reader=1)
    assert paths[(previous, "k")] > 0.9
    assert abs(paths[(previous, "q")]) < 0.1 and abs(paths[(previous, "v")]) < 0.1


@pytest.mark.parametrize("case", trained_cases(), ids=lambda case: case.scorer)
def test_scorers_rank_the_known_heads_first(case):
    table = registry.scan(case.build(), case.scorer, n=case.n, progress=False,
                          **dict(case.params))
    ranked = [(int(row.layer), int(row.head)) for row in
              table.data.sort_values(case.column, ascending=False).itertuples()]
    assert set(ranked[:len(case.known)]) == case.known
    scores = {(int(row.layer), int(row.head)): float(getattr(row, case.column))
              for row in table.data.itertuples()}
    assert all(scores[head] >= case.threshold for head in case.known)


def test_a_short_training_run_lowers_the_loss():
    settings = TrainSettings(steps=40, batch_size=16, max_len=20, warmup=5)
    model, _, report = train_induction_model(0, settings=settings, log_every=20)
    log = report["log"]
    assert [entry["step"] for entry in log] == [0, 20, 40]
    assert log[-1]["second_half"] < log[0]["second_half"] - 0.02
    assert not model.training
    for layer in model.model.layers:  # the MLPs stayed frozen at zero
        assert torch.count_nonzero(layer.mlp.down_proj.weight) == 0
