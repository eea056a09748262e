"""Tests of headprobe.metrics: each metric against a hand computation, the callable route,
aggregation on the means, and errors."""

from __future__ import annotations

import math

import pytest
import torch

from headprobe.errors import MetricError, TaskError
from headprobe.metrics import (
    METRICS,
    aggregate_metric,
    check_finite,
    final_logits,
    kl_divergence,
    logit_difference,
    per_prompt_metric,
    probability,
    resolve_metric,
)

# Two prompts, a vocabulary of three tokens.
LOGITS = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
CLEAN = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
ANSWER = torch.tensor([1, 2])
DISTRACTOR = torch.tensor([0, 1])


def _softmax(row: list[float]) -> list[float]:
    exps = [math.exp(x) for x in row]
    return [e / sum(exps) for e in exps]


def test_final_logits_picks_each_prompts_last_position():
    logits = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    out = final_logits(logits, torch.tensor([2, 0]))
    torch.testing.assert_close(out, torch.stack([logits[0, 2], logits[1, 0]]))


def test_logit_difference_and_probability_by_hand():
    torch.testing.assert_close(logit_difference(LOGITS, ANSWER, DISTRACTOR),
                               torch.tensor([2.0 - 1.0, 3.0 - (-1.0)]))
    expected = [_softmax([1.0, 2.0, 0.5])[1], _softmax([0.0, -1.0, 3.0])[2]]
    torch.testing.assert_close(probability(LOGITS, ANSWER), torch.tensor(expected))


def test_kl_by_hand():
    expected = []
    for base, new in zip(CLEAN.tolist(), LOGITS.tolist(), strict=True):
        p, q = _softmax(base), _softmax(new)
        expected.append(sum(a * (math.log(a + 1e-12) - math.log(b + 1e-12))
                            for a, b in zip(p, q, strict=True)))
    torch.testing.assert_close(kl_divergence(CLEAN, LOGITS), torch.tensor(expected))
    assert float(kl_divergence(LOGITS, LOGITS).abs().max()) < 1e-6


def test_named_metrics_through_resolve_metric():
    assert set(METRICS) == {"logit_diff", "normalized_logit_diff", "kl", "probability"}
    ld = per_prompt_metric("logit_diff", LOGITS, ANSWER, DISTRACTOR)
    torch.testing.assert_close(ld, torch.tensor([1.0, 4.0]))
    torch.testing.assert_close(
        per_prompt_metric("normalized_logit_diff", LOGITS, ANSWER, DISTRACTOR), ld)
    torch.testing.assert_close(per_prompt_metric("kl", LOGITS, ANSWER, None, CLEAN),
                               kl_divergence(CLEAN, LOGITS))
    torch.testing.assert_close(per_prompt_metric("probability", LOGITS, ANSWER, None),
                               probability(LOGITS, ANSWER))
    assert resolve_metric("normalized_logit_diff").normalized
    assert not resolve_metric("logit_diff").normalized
    assert resolve_metric("kl").needs_clean


def test_callable_metric_route():
    def answer_logit(logits, answer, distractor, clean_logits):
        assert clean_logits.shape == logits.shape
        return logits[torch.arange(logits.shape[0]), answer] - clean_logits.max(-1).values

    resolved = resolve_metric(answer_logit)
    assert resolved.name == "answer_logit" and not resolved.normalized
    values = per_prompt_metric(answer_logit, LOGITS, ANSWER, None, CLEAN)
    torch.testing.assert_close(values, torch.tensor([2.0 - 2.0, 3.0 - 1.0]))
    # a function is aggregated as the mean of its values, whatever the baselines
    assert float(aggregate_metric(answer_logit, values, torch.ones(2), torch.zeros(2))) == 1.0
    with pytest.raises(MetricError, match="one value per prompt"):
        per_prompt_metric(lambda logits, a, d, c: logits.sum(), LOGITS, ANSWER, None, CLEAN)
    with pytest.raises(ValueError, match="clean"):
        per_prompt_metric(answer_logit, LOGITS, ANSWER, None, None)


def test_aggregate_normalises_on_the_means():
    values = torch.tensor([1.0, 3.0])
    clean = torch.tensor([4.0, 6.0])
    corrupt = torch.tensor([0.0, -2.0])
    # (mean 2 - mean -1) / (mean 5 - mean -1) = 3 / 6
    assert float(aggregate_metric("normalized_logit_diff", values, clean, corrupt)) == 0.5
    assert float(aggregate_metric("logit_diff", values, clean, corrupt)) == 2.0
    with pytest.raises(MetricError, match="undefined"):
        aggregate_metric("normalized_logit_diff", values, clean, clean)


def test_metric_errors():
    with pytest.raises(ValueError, match="unknown metric"):
        resolve_metric("accuracy")  # type: ignore[arg-type]
    with pytest.raises(TaskError, match="distractor"):
        per_prompt_metric("logit_diff", LOGITS, ANSWER, None)
    with pytest.raises(ValueError, match="clean"):
        per_prompt_metric("kl", LOGITS, ANSWER, None, None)
    with pytest.raises(MetricError, match=r"prompt 1: 'b'"):
        check_finite(torch.tensor([0.0, float("nan")]), "x", ["a", "b"])


def test_bf16_logits_give_float32_values():
    """Differences and softmaxes of bf16 logits are taken in float32."""
    low = LOGITS.to(torch.bfloat16)
    assert logit_difference(low, ANSWER, DISTRACTOR).dtype == torch.float32
    assert probability(low, ANSWER).dtype == torch.float32
    assert kl_divergence(CLEAN.to(torch.bfloat16), low).dtype == torch.float32
