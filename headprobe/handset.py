"""Hand-set weights on the tiny Llama: circuits whose attention and outputs are known exactly.

For the head-type examples (:mod:`headprobe.examples`): :func:`copy_circuit` wires the tiny
``llama-gqa`` model (:mod:`headprobe.tiny`: d_model 64, 3 layers, 4 query heads of 16 dims
over 2 kv heads, rotary with base 10000, RMSNorm) into the two-head induction circuit of
Olsson et al. 2022 ("In-context Learning and Induction Heads"), every other head and MLP
writing nothing:

- the eight letters ``a`` .. ``h`` (:data:`LETTERS`) are the only tokens with a code; every
  other token (``<s>`` included) is *filler*. Residual dimensions: 0 constant (every token),
  1 filler, 2..9 the current letter, 10..17 the previous letter (written by the
  previous-token head), 18..25 the copied letter (written by the induction head);
- ``L0H0`` is a previous-token head: its query and key read only the constant dimension,
  so with rotary their product is ``s * sum_p cos(w_p (i - j - 1))`` over the 8 rotary
  frequencies ``w_p``: largest at key ``j = i - 1`` by >= 40 logits, so the head puts
  > 1 - 1e-12 of its attention on the previous token; its OV copies the letter code into
  dims 10..17;
- ``L1H2`` is an induction head: its query reads the current letter, its key the previous
  letter (both on the low-frequency rotary pairs, so position barely matters), so it
  attends to the token after an earlier copy of the current letter; its OV copies that
  token's letter into dims 18..25, and the unembedding reads only those dims, so the model
  predicts the copied letter (it continues any letter sequence it has seen).

Every rotary pair, norm and head index used here is a fact of the tiny config; the builders
check the config and raise if it changed.
"""

from __future__ import annotations

from typing import Any

import torch

from headprobe.arch import ModelSpec
from headprobe.tiny import tiny_model

LETTERS = "abcdefgh"
PREVIOUS_HEAD = (0, 0)  # (layer, head) of the hand-set previous-token head
INDUCTION_HEAD = (1, 2)  # (layer, head) of the hand-set induction head

_CONSTANT, _FILLER, _LETTER, _PREVIOUS, _COPIED = 0, 1, 2, 10, 18
# head dimensions of the low-frequency rotary pairs (i, i + 8), i = 4..7: at most 0.3 rad
# of rotation over 30 positions, so content matching barely depends on position
_SLOW_DIMS = (7, 15, 6, 14, 5, 13, 4, 12)


def silenced_llama(seed: int = 0) -> tuple[Any, ModelSpec]:
    """The tiny ``llama-gqa`` model with every head's output, every MLP and the unembedding
    set to zero and every norm weight to one: a model that writes nothing until heads are
    wired into it."""
    model, spec = tiny_model("llama-gqa", seed=seed)
    hf = model.original_model
    config = hf.config
    if (spec.d_model, spec.n_layers, spec.n_heads, spec.n_kv_heads, spec.d_head) != \
            (64, 3, 4, 2, 16) or float(getattr(config, "rope_theta", None) or
                                       config.rope_parameters["rope_theta"]) != 10000.0:
        raise RuntimeError("the tiny llama-gqa config changed; headprobe.handset wires "
                           "d_model 64, 3 layers, 4 heads over 2 kv heads, rotary base 1e4")
    with torch.no_grad():
        for layer in hf.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
            layer.input_layernorm.weight.fill_(1.0)
            layer.post_attention_layernorm.weight.fill_(1.0)
        hf.model.norm.weight.fill_(1.0)
        hf.lm_head.weight.zero_()
    return model, spec


def letter_ids(model: Any) -> list[int]:
    """Token ids of :data:`LETTERS`, in order."""
    return [int(model.tokenizer.convert_tokens_to_ids(c)) for c in LETTERS]


def copy_circuit(seed: int = 0, *, scale: float = 10.0) -> tuple[Any, ModelSpec]:
    """The tiny Llama wired as a previous-token head ``L0H0`` feeding an induction head
    ``L1H2`` that copies (see the module docstring); ``(bridge, spec)``. ``scale`` sets the
    attention logits (10: gaps of >= 40 logits between the wanted key and any other)."""
    model, spec = silenced_llama(seed)
    hf = model.original_model
    d_head = spec.d_head
    letters = letter_ids(model)
    freqs = 10000.0 ** (-torch.arange(8, dtype=torch.float32) * 2 / d_head)
    with torch.no_grad():
        embed = hf.model.embed_tokens.weight
        embed.zero_()
        embed[:, _CONSTANT] = 1.0
        embed[:, _FILLER] = 1.0
        for k, token in enumerate(letters):
            embed[token, _FILLER] = 0.0
            embed[token, _LETTER + k] = 1.0
        unit = (2 / spec.d_model) ** -0.5  # every token's normalised nonzero entries

        attn0 = hf.model.layers[0].self_attn
        head, kv = PREVIOUS_HEAD[1], PREVIOUS_HEAD[1] // 2
        q = attn0.q_proj.weight[head * d_head:(head + 1) * d_head]
        k = attn0.k_proj.weight[kv * d_head:(kv + 1) * d_head]
        v = attn0.v_proj.weight[kv * d_head:(kv + 1) * d_head]
        q.zero_(), k.zero_(), v.zero_()
        # q_p = (1, 0), k_p = (cos w_p, -sin w_p) on pair (p, p + 8): q.k = cos(w_p (i - j - 1))
        q[:8, _CONSTANT] = scale
        k[:8, _CONSTANT] = torch.cos(freqs)
        k[8:, _CONSTANT] = torch.sin(freqs)
        for index in range(len(LETTERS)):
            v[index, _LETTER + index] = 1.0 / unit
            attn0.o_proj.weight[_PREVIOUS + index, head * d_head + index] = 1.0

        attn1 = hf.model.layers[1].self_attn
        head, kv = INDUCTION_HEAD[1], INDUCTION_HEAD[1] // 2
        q = attn1.q_proj.weight[head * d_head:(head + 1) * d_head]
        k = attn1.k_proj.weight[kv * d_head:(kv + 1) * d_head]
        v = attn1.v_proj.weight[kv * d_head:(kv + 1) * d_head]
        q.zero_(), k.zero_(), v.zero_()
        for index, dim in enumerate(_SLOW_DIMS):
            q[dim, _LETTER + index] = 2.0 * scale
            k[dim, _PREVIOUS + index] = 1.0
            v[index, _LETTER + index] = 1.0
            attn1.o_proj.weight[_COPIED + index, head * d_head + index] = 1.0
        for index, token in enumerate(letters):
            hf.lm_head.weight[token, _COPIED + index] = scale
    return model, spec


__all__ = ["INDUCTION_HEAD", "LETTERS", "PREVIOUS_HEAD", "copy_circuit", "letter_ids",
           "silenced_llama"]
