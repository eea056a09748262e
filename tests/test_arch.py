import pytest

from headprobe.arch import ARCHITECTURES, architecture_facts
from headprobe.errors import HeadIndexError


def test_gqa_grouping_from_tiny_llama(tiny_llama):
    _, spec = tiny_llama
    assert (spec.n_heads, spec.n_kv_heads, spec.group_size) == (4, 2, 2)
    assert [spec.kv_head(h) for h in range(4)] == [0, 0, 1, 1]
    assert spec.norm == "rmsnorm" and spec.causal


def test_facts_per_family(tiny_gpt2, tiny_gemma, tiny_bert):
    assert tiny_gpt2[1].norm == "layernorm" and tiny_gpt2[1].group_size == 1
    gemma = tiny_gemma[1]
    assert gemma.facts.has_qk_norm and gemma.facts.has_post_attention_norm
    assert [gemma.kv_head(h) for h in range(4)] == [0, 0, 0, 0]
    assert not tiny_bert[1].causal


def test_unknown_model_type_gets_generic_facts():
    facts = architecture_facts("some_new_decoder")
    assert facts.causal and facts.norm == "rmsnorm"
    assert "llama" in ARCHITECTURES


@pytest.mark.parametrize("layer,head", [(3, 0), (-1, 0), (0, 4), (0, -1)])
def test_check_head_out_of_range(tiny_llama, layer, head):
    _, spec = tiny_llama
    with pytest.raises(HeadIndexError, match="out of range"):
        spec.check_head(layer, head)


def test_hook_names_exist_on_bridge(tiny_llama):
    model, spec = tiny_llama
    for kind in ("pattern", "z", "q", "k", "v", "resid_pre", "resid_post", "attn_out"):
        assert spec.hooks.at(kind, 0) in model.hook_dict
