import pytest
import torch

from headprobe.arch import (
    ARCHITECTURES,
    architecture_facts,
    spec_from_hf_config,
    vision_language_facts,
)
from headprobe.errors import HeadIndexError
from headprobe.models import describe_model
from headprobe.tiny import tiny_model
from headprobe.weights import head_output_weights, hf_module, unwrap


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


# --- a vision-language wrapper: one entry keyed by the top-level model_type --------------------

@pytest.fixture(scope="module")
def tiny_llava():
    """The tiny LLaVA: a Llama text model (2 layers, 4 heads over 2 kv heads) under
    ``model.language_model`` of ``LlavaForConditionalGeneration``."""
    return tiny_model("llava")


def test_llava_spec_takes_sizes_from_text_config_and_paths_from_its_entry(tiny_llava):
    model, spec = tiny_llava
    text = model.original_model.config.text_config
    assert (spec.model_type, spec.n_layers, spec.n_heads, spec.n_kv_heads, spec.d_model) == (
        "llama", text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads,
        text.hidden_size)
    assert spec.facts is ARCHITECTURES["llava"] and spec.facts.vision_language
    assert spec.facts.decoder == "model.language_model"
    # a bridge booted by hand is described the same way, from the top-level config
    kept = model.headprobe_spec
    try:
        del model.headprobe_spec
        described = describe_model(model)
        assert described.facts is ARCHITECTURES["llava"] and described.n_layers == spec.n_layers
    finally:
        model.headprobe_spec = kept


def test_llava_module_paths_exist_in_the_hf_model(tiny_llava):
    model, spec = tiny_llava
    facts = spec.facts
    hf = model.original_model
    decoder = hf_module(model, facts.decoder)
    assert decoder is unwrap(hf.model.language_model)
    assert hf_module(model, facts.final_norm) is unwrap(hf.model.language_model.norm)
    assert hf_module(model, facts.unembed) is unwrap(hf.lm_head)
    assert hf_module(model, facts.rotary) is unwrap(hf.model.language_model.rotary_emb)
    for layer in range(spec.n_layers):
        path = f"{facts.layers_path}.{layer}.{facts.attention_module}"
        attention = hf_module(model, path)
        assert attention is unwrap(unwrap(decoder.layers[layer]).self_attn)
        assert hf_module(model, f"{path}.{facts.o_proj}").weight.shape == (
            spec.d_model, spec.n_heads * spec.d_head)
    # the decoder's own config is the text config (masks are built from it)
    assert decoder.config.model_type == spec.model_type


def test_llava_head_output_weights_are_the_o_proj_columns(tiny_llava):
    model, spec = tiny_llava
    w_o = head_output_weights(model, spec)
    assert w_o.shape == (spec.n_layers, spec.n_heads, spec.d_head, spec.d_model)
    for layer in range(spec.n_layers):
        o_proj = hf_module(model, f"{spec.facts.layers_path}.{layer}.self_attn.o_proj").weight
        for head in range(spec.n_heads):
            columns = o_proj[:, head * spec.d_head:(head + 1) * spec.d_head]
            assert torch.equal(w_o[layer, head], columns.T.detach())


def test_vision_language_entry_is_chosen_by_the_top_level_model_type():
    import transformers as tf

    text = tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, vocab_size=50)
    vision = tf.CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, image_size=16, patch_size=8)
    wrapped = spec_from_hf_config("vlm", tf.LlavaConfig(vision_config=vision, text_config=text))
    assert wrapped.facts is ARCHITECTURES["llava"]
    assert (wrapped.model_type, wrapped.n_layers, wrapped.n_kv_heads) == ("llama", 2, 2)
    plain = spec_from_hf_config("llm", text)
    assert plain.facts is ARCHITECTURES["llama"] and not plain.facts.vision_language
    assert plain.facts.layers_path == "model.layers"
    # a text-model entry is never taken for a wrapper, whatever the key
    assert vision_language_facts(text) is None
    assert all(facts.vision_language == (key in ("llava", "qwen2_5_vl"))
               for key, facts in ARCHITECTURES.items())
