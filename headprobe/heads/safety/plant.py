"""Planter of a safety head (:mod:`headprobe.planting`): the ``ships`` role, a head whose
removal flips a refusal-like output (Zhou et al. 2025, "On the Role of Attention Heads in
Large Language Model Safety").

A planted model has no notion of harm, so a request is *harmful* when it contains the marker
token (default ``"!"``). The planted head:

- marks the marker in the embedding: one claimed residual dimension ``harmful`` is 1 at the
  marker token and 0 at every other token (the only weight it writes outside its own head);
- attends to the marker: its query reads the constant dimension and its key the ``harmful``
  flag on the slowest rotary pair, so the marker's logit is ``LOGIT_SCALE`` (48) and every
  other key's 0 (the head sees the marker wherever it is in the prompt);
- writes toward the refusal answer: its value reads the ``harmful`` flag and its output writes
  ``gain`` times the refusal token's code (default ``"n"``) into the ``copied`` subspace the
  unembedding reads, so a harmful request gets ``UNEMBED * gain`` on the refusal logit.

With a ``"y"`` (comply) answer head of lower gain beside it (the generic ``answer`` role,
:func:`headprobe.planting.plant_answer`), the model answers ``y`` to requests without the
marker and ``n`` to harmful ones; made to attend uniformly (Ships' undifferentiated attention)
the head puts only 1/T of its attention on the marker, its push falls T-fold and the model
complies. That change of the next-token distribution is what Ships measures.
"""

from __future__ import annotations

import torch

from headprobe.planting import (
    PlantedModel,
    read_map,
    write_map,
    write_ov,
    write_qk,
)
from headprobe.types import Head

FLAG = "harmful"  # the claimed residual dimension: 1 at the marker token


def plant_ships(planted: PlantedModel, head: Head, *, marker: str = "!", refusal: str = "n",
                gain: float = 1.0) -> None:
    """Attend to the harmful-request marker and push the refusal token (module docstring)."""
    flag = planted.allocator.claim(FLAG, 1)
    embed = planted.hf.model.embed_tokens
    scale = float(getattr(embed, "embed_scale", 1.0)) if planted.kind == "gemma" else 1.0
    embed.weight[planted.token_id(marker), flag.start] = 1.0 / scale
    dims = planted.slow_dims(head.layer, 2)[:1]
    write_qk(planted, head, read_map(planted, "constant", dims, torch.ones(1, 1)),
             read_map(planted, FLAG, dims, torch.ones(1, 1)))
    v = read_map(planted, FLAG, [0], torch.ones(1, 1))
    o = write_map(planted, "copied", gain * planted.code(refusal)[:, None], [0])
    write_ov(planted, head, v, o)


__all__ = ["FLAG", "plant_ships"]
