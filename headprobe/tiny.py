"""Tiny random-weight models built from a config, for fast unit tests only.

They need no download: the tokenizer is a character-level ``PreTrainedTokenizerFast`` built
in memory. Kinds cover the code paths that differ between architectures:

- ``llama-gqa``: RMSNorm, rotary, grouped-query attention (4 query heads, 2 kv heads);
- ``gpt2``: LayerNorm, learned positions, one kv head per query head;
- ``gemma3``: RMSNorm with q/k norms and post-attention (sandwich) norms, one kv head;
- ``bert``: a non-causal encoder (to check that causal scorers refuse it).

Real claims about heads are never made on these models.
"""

from __future__ import annotations

import string
from typing import Any

import torch

from headprobe.arch import ModelSpec

TINY_KINDS = ("llama-gqa", "gpt2", "gemma3", "bert")

_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def char_tokenizer() -> Any:
    """A character-level tokenizer (printable ASCII + specials) that prepends ``<s>``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(string.printable) - set("\x0b\x0c\r"))
    vocab = {tok: i for i, tok in enumerate(_SPECIALS + chars)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=256,
    )
    # The post-processor already prepends <s>; saying so stops TransformerLens from trying to
    # reload the tokenizer by name (which would need a hub).
    tokenizer.init_kwargs["add_bos_token"] = True
    tokenizer.init_kwargs["name_or_path"] = "headprobe-char-tokenizer"
    return tokenizer


def _config(kind: str, vocab_size: int) -> Any:
    import transformers as tf

    common: dict[str, Any] = {"vocab_size": vocab_size, "bos_token_id": 1, "eos_token_id": 2,
                              "pad_token_id": 0}
    if kind == "llama-gqa":
        return tf.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                              max_position_embeddings=256, tie_word_embeddings=False,
                              architectures=["LlamaForCausalLM"], **common)
    if kind == "gpt2":
        return tf.GPT2Config(n_embd=64, n_layer=3, n_head=4, n_positions=256, n_inner=128,
                             architectures=["GPT2LMHeadModel"], **common)
    if kind == "gemma3":
        return tf.Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                                   max_position_embeddings=256, sliding_window=64,
                                   layer_types=["full_attention"] * 3,
                                   architectures=["Gemma3ForCausalLM"], **common)
    if kind == "bert":
        return tf.BertConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=256,
                             architectures=["BertForMaskedLM"], **common)
    raise ValueError(f"unknown tiny model kind {kind!r}; choose one of {TINY_KINDS}")


def tiny_model(kind: str = "llama-gqa", seed: int = 0) -> tuple[Any, ModelSpec]:
    """A random-weight tiny model of ``kind`` wrapped in a bridge: ``(bridge, spec)``."""
    import transformers as tf

    from headprobe.models import wrap_hf_model

    tokenizer = char_tokenizer()
    config = _config(kind, vocab_size=len(tokenizer))
    config._attn_implementation = "eager"
    generator_state = torch.random.get_rng_state()
    try:  # seed the init without leaving the global RNG changed
        torch.manual_seed(seed)
        model_class = tf.BertForMaskedLM if kind == "bert" else tf.AutoModelForCausalLM
        hf_model = (
            model_class(config) if kind == "bert" else model_class.from_config(config)
        )
        _spread_weights(hf_model)
    finally:
        torch.random.set_rng_state(generator_state)
    return wrap_hf_model(hf_model, tokenizer, name=f"tiny-{kind}", hf_name=f"tiny-{kind}",
                         device="cpu")


def _spread_weights(model: torch.nn.Module) -> None:
    """Give norms non-trivial weights and biases, so tests catch a norm that is not applied."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name.lower() or "ln" in name.lower():
                param.add_(0.3 * torch.randn_like(param))
            elif param.ndim >= 2:
                param.normal_(0.0, 0.08)
