"""Example with an exactly known answer (hand-set): a successor head and a copy head.

The tiny Llama with its layer-0 MLP silenced, so a digit's effective embedding is its
embedding row, set to a basis vector ``e_i`` for digit ``i``. In layer 1, kv head 0's value
reads ``e_i`` and head ``L1H0``'s output writes ``f_{i+1}`` (``f_9`` for digit 9), kv head
1's value likewise and head ``L1H2`` writes ``f_i``; the unembedding row of digit ``j`` is
``f_j``. So ``L1H0``'s OV circuit maps 0..8 to their successors (``successor`` score 1) and
``L1H2``'s maps each digit to itself (score 0), every norm weight being one.
"""

from __future__ import annotations

from typing import Any

import torch

from headprobe.examples import Example
from headprobe.heads.successor.ordinal_sets import tokenize_set
from headprobe.tiny import tiny_model

SUCCESSOR_HEAD = (1, 0)
COPY_HEAD = (1, 2)


def hand_weighted(shift: int = 1) -> tuple[Any, Any]:
    """Tiny Llama whose head L1H0 maps digit i to digit i + ``shift`` (kv head 0) and L1H2
    maps it to itself (kv head 1); MLP0 silenced so E(t) = W_E[t]. ``(bridge, spec)``."""
    model, spec = tiny_model("llama-gqa", seed=3)
    hf = model.original_model
    ids = tokenize_set(model, "digits").token_ids
    d_head = spec.d_head
    with torch.no_grad():
        hf.model.layers[0].mlp.down_proj.weight.zero_()
        hf.model.embed_tokens.weight[ids] = torch.eye(spec.d_model)[:10]
        for norm in (hf.model.layers[1].input_layernorm, hf.model.norm):
            norm.weight.fill_(1.0)
        attn = hf.model.layers[1].self_attn
        attn.v_proj.weight.zero_()
        attn.o_proj.weight.zero_()
        for i in range(10):
            attn.v_proj.weight[i, i] = 1.0  # kv head 0 (query heads 0, 1)
            attn.v_proj.weight[d_head + i, i] = 1.0  # kv head 1 (query heads 2, 3)
            attn.o_proj.weight[10 + min(i + shift, 9), i] = 1.0  # head 0: successor
            attn.o_proj.weight[10 + i, 2 * d_head + i] = 1.0  # head 2: copy
        hf.lm_head.weight[ids] = torch.eye(spec.d_model)[10:20]
    return model, spec


def example() -> Example:
    """The ``successor`` scorer on the digits set: ``L1H0`` scores 1, ``L1H2`` 0."""
    model, _ = hand_weighted(1)
    return Example(
        head_type="successor", scorer="successor", model=model, kind="hand-set",
        description="tiny Llama whose head L1H0 maps digit i to i + 1 and L1H2 maps it to "
                    "itself through their OV circuits",
        params={"sets": ["digits"]}, top=(SUCCESSOR_HEAD,),
        scores={SUCCESSOR_HEAD: 1.0, COPY_HEAD: 0.0}, rest_below=0.5)
