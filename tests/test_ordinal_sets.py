"""Ordinal token sets: data, tokenization, the dropped-item pair rule, errors."""

from __future__ import annotations

import pytest
import torch

from headprobe.errors import TokenSetError
from headprobe.heads.successor.ordinal_sets import (
    ORDINAL_SETS,
    tokenize_set,
    tokenize_sets,
    variant_names,
)


class _FakeModel:
    """``to_tokens`` over a vocabulary in which the texts of ``split`` are two tokens."""

    def __init__(self, split=()):
        self.split = set(split)
        self.vocab: dict[str, int] = {}

    def to_tokens(self, text, prepend_bos=False, truncate=False):
        if text in self.split:
            return torch.tensor([[1, 2]])
        return torch.tensor([[self.vocab.setdefault(text, 100 + len(self.vocab))]])


def test_sets_are_data_with_wrapping_days_and_months():
    assert ORDINAL_SETS["days"].cyclic and ORDINAL_SETS["months"].cyclic
    assert not ORDINAL_SETS["letters"].cyclic
    assert ORDINAL_SETS["numbers"].items[0] == "1" and ORDINAL_SETS["numbers"].items[-1] == "200"
    assert len(ORDINAL_SETS["roman"].items) == 20
    assert variant_names("both", ["days"]) == ["days", "days_space"]
    assert variant_names(False, ["days"]) == ["days"]


def test_cyclic_set_wraps():
    tset = tokenize_set(_FakeModel(), "days_space")
    assert tset.items[0] == " Monday"
    assert tset.pairs.tolist()[-1] == [6, 0]  # Sunday -> Monday
    assert len(tset.pairs) == 7


def test_dropped_item_breaks_both_of_its_pairs():
    tset = tokenize_set(_FakeModel(split={"10"}), "numbers")
    assert tset.dropped == ("10",) and tset.n_dropped == 1
    pairs = [(tset.items[a], tset.items[b]) for a, b in tset.pairs.tolist()]
    assert ("9", "11") not in pairs and ("8", "9") in pairs and ("11", "12") in pairs
    assert len(pairs) == 199 - 2  # 1..200 has 199 pairs; 9->10 and 10->11 are gone


def test_dropped_item_in_cyclic_set_has_no_wrap_pair():
    tset = tokenize_set(_FakeModel(split={"Sunday"}), "days")
    pairs = [(tset.items[a], tset.items[b]) for a, b in tset.pairs.tolist()]
    assert pairs == [("Monday", "Tuesday"), ("Tuesday", "Wednesday"),
                     ("Wednesday", "Thursday"), ("Thursday", "Friday"), ("Friday", "Saturday")]


def test_tiny_tokenizer_keeps_single_characters(tiny_llama):
    model, _ = tiny_llama
    digits = tokenize_set(model, "digits")
    assert digits.items == tuple("0123456789") and len(digits.pairs) == 9
    assert digits.chance == pytest.approx(0.1)
    with pytest.raises(TokenSetError, match="'days'"):
        tokenize_set(model, "days")  # multi-character words are not single tokens
    with pytest.raises(TokenSetError, match=r"'roman'.*no successor pair"):
        tokenize_set(model, "roman")  # I, V, X remain, but no two are consecutive


def test_errors_name_the_set(tiny_llama):
    model, _ = tiny_llama
    with pytest.raises(TokenSetError, match="unknown ordinal set 'weekdays'"):
        tokenize_set(model, "weekdays")
    with pytest.raises(TokenSetError, match="'days_space'"):
        tokenize_sets(model, ["days_space"])  # an explicit variant must be usable
    with pytest.raises(TokenSetError, match="'months'"):
        tokenize_sets(model, ["months"])  # no variant of a named base set is usable
    with pytest.raises(TokenSetError, match="with_space"):
        tokenize_sets(model, ["digits"], with_space="maybe")
    sets, skipped = tokenize_sets(model)  # default: unusable variants skipped, reported
    assert {s.name for s in sets} >= {"digits", "letters"}
    assert "days" in skipped and "digits_space" in skipped
