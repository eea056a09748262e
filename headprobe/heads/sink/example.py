"""Example with an exactly known answer (hand-set): one head that attends to ``<s>`` only.

On the tiny Llama with every output silenced (:func:`headprobe.handset.silenced_llama`), the
embeddings get a constant dimension 0 (every token) and a dimension 1 that only ``<s>``
has. Head ``L1H3``'s query reads dimension 0 and its key dimension 1, both on the slowest
rotary pair (under 0.02 rad over 48 positions), so every query's logit on ``<s>`` is > 40
above its logit on any other key (0): its attention on the first token is 1 to 1e-12, and
its ``sink`` score is 1 (to 1e-6); the other heads keep random queries and keys and score
below 0.9.
"""

from __future__ import annotations

import torch

from headprobe.examples import Example
from headprobe.handset import silenced_llama

SINK_HEAD = (1, 3)
PROMPTS = ("The cat sat on the mat.", "def f(x): return x + 1", "2 + 2 = 4, and 3 * 3 = 9")


def example() -> Example:
    """The ``sink`` scorer on a tiny Llama with a hand-set sink head ``L1H3``."""
    model, spec = silenced_llama()
    hf = model.original_model
    bos = int(model.tokenizer.bos_token_id)
    layer, head = SINK_HEAD
    kv = head // (spec.n_heads // spec.n_kv_heads)
    d_head = spec.d_head
    with torch.no_grad():
        embed = hf.model.embed_tokens.weight
        embed[:, 0] = 1.0
        embed[:, 1] = 0.0
        embed[bos, 1] = 1.0
        attn = hf.model.layers[layer].self_attn
        q = attn.q_proj.weight[head * d_head:(head + 1) * d_head]
        k = attn.k_proj.weight[kv * d_head:(kv + 1) * d_head]
        q.zero_(), k.zero_()
        q[7, 0] = 6.0  # about 50 logits; rotary pair (7, 15): 3.2e-4 rad per position
        k[7, 1] = 1.0
    return Example(
        head_type="sink", scorer="sink", model=model, kind="hand-set",
        description="tiny Llama whose head L1H3 has a query on a dimension every token has "
                    "and a key on one only <s> has, on 3 prompts",
        prompts=list(PROMPTS), top=(SINK_HEAD,), scores={SINK_HEAD: 1.0}, rest_below=0.9)
