import pytest
import torch

from headprobe.errors import ContextLengthError, EmptyPromptsError
from headprobe.inputs import fingerprint, iter_batches, tokenize_prompts


def test_tokenize_prepends_bos(tiny_llama):
    model, spec = tiny_llama
    (ids,) = tokenize_prompts(model, ["abc"], spec)
    assert ids.tolist()[0] == spec.bos_token_id and len(ids) == 4


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_layout(side):
    lists = [torch.tensor([5, 6, 7]), torch.tensor([8])]
    (batch,) = list(iter_batches(lists, 4, pad_token_id=0, padding_side=side))
    assert batch.tokens.shape == (2, 3)
    assert batch.lengths.tolist() == [3, 1]
    row = batch.tokens[1].tolist()
    assert row == ([0, 0, 8] if side == "left" else [8, 0, 0])
    assert batch.position_ids[1][batch.attention_mask[1]].tolist() == [0]
    assert batch.last.tolist() == [2, 2 if side == "left" else 0]
    assert batch.start.tolist() == [0, 2 if side == "left" else 0]


def test_key_query_mask_is_causal_and_excludes_pads():
    (batch,) = list(iter_batches([torch.tensor([1, 2, 3]), torch.tensor([4])], 2,
                                 padding_side="left"))
    mask = batch.key_query_mask()
    assert mask[0].equal(torch.ones(3, 3, dtype=torch.bool).tril())
    assert mask[1].sum() == 1 and mask[1, 2, 2]


def test_empty_and_too_long(tiny_llama):
    model, spec = tiny_llama
    with pytest.raises(EmptyPromptsError):
        tokenize_prompts(model, [], spec)
    with pytest.raises(EmptyPromptsError, match="prompt 1"):
        tokenize_prompts(model, ["ok", ""], spec)
    with pytest.raises(ContextLengthError, match="prompt 0 has 301 tokens"):
        tokenize_prompts(model, ["x" * 300], spec)
    with pytest.raises(TypeError):
        tokenize_prompts(model, "not a list", spec)


def test_fingerprint_changes_with_data():
    a = [torch.tensor([1, 2, 3])]
    assert fingerprint(a) == fingerprint([torch.tensor([1, 2, 3])])
    assert fingerprint(a) != fingerprint([torch.tensor([1, 2, 4])])
