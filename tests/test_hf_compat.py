"""The KV cache on both sides of transformers' 5.24 rename (``headprobe.runtime.hf_compat``)."""

import inspect

import pytest
import torch
import transformers
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaDecoderLayer

from headprobe.runtime.hf_compat import (
    bridge_attention_cache,
    cache_kwarg,
    needs_bridge_hooks,
    output_cache,
)


@pytest.mark.parametrize(("version", "name"), [
    ("4.56.0", "past_key_values"), ("5.23.0", "past_key_values"), ("5.24.0.dev0", "cache"),
    ("5.24.0", "cache"), ("5.25.0", "cache"), ("6.0.0", "cache")])
def test_cache_kwarg_by_version(version, name):
    assert cache_kwarg(version) == name
    assert needs_bridge_hooks(version) == (name == "cache")


def test_cache_kwarg_is_the_installed_signatures_name():
    """The name picked for the installed transformers is the one its decoder layer and
    attention declare (``inspect`` follows ``deprecate_kwarg``'s wrapper)."""
    name = cache_kwarg()
    for forward in (LlamaDecoderLayer.forward, LlamaAttention.forward):
        assert name in inspect.signature(forward).parameters, (transformers.__version__,
                                                               forward.__qualname__)


def _pre_hooks(model) -> int:
    return sum(len(m._forward_pre_hooks) for m in model.modules())


def test_bridge_hooks_scoped_and_removed_on_error(tiny_llama, tiny_gpt2):
    for model, spec in (tiny_llama, tiny_gpt2):
        before = _pre_hooks(model)
        with bridge_attention_cache(model) as hooked:
            assert hooked == (spec.n_layers if needs_bridge_hooks() else 0)
            assert _pre_hooks(model) == before + hooked
        assert _pre_hooks(model) == before
        with pytest.raises(RuntimeError, match="boom"), bridge_attention_cache(model):
            raise RuntimeError("boom")
        assert _pre_hooks(model) == before


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_cached_hf_forward_fills_the_cache_and_equals_the_full_one(fixture, request):
    """The route the decode takes where there is no layer runner: the HF model's own forward
    with a ``DynamicCache`` under :func:`cache_kwarg`, inside :func:`bridge_attention_cache`;
    the cache holds every column afterwards and the next column's logits equal the full
    forward's (with transformers >= 5.24 and no adapter the cache would stay empty)."""
    from transformers import DynamicCache

    model, spec = request.getfixturevalue(fixture)
    ids = torch.randint(0, spec.d_vocab, (2, 7), generator=torch.Generator().manual_seed(0))
    hf = model.original_model
    with torch.inference_mode():
        full = hf(input_ids=ids, use_cache=False).logits
        cache = DynamicCache()
        with bridge_attention_cache(model):
            out = hf(input_ids=ids[:, :6], use_cache=True, **{cache_kwarg(): cache})
            assert output_cache(out).get_seq_length() == 6
            out = hf(input_ids=ids[:, 6:], use_cache=True,
                     **{cache_kwarg(): output_cache(out)})
    assert output_cache(out).get_seq_length() == 7
    torch.testing.assert_close(out.logits[:, -1], full[:, -1], atol=1e-4, rtol=0)
