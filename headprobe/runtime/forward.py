"""One forward pass over a :class:`~headprobe.inputs.Batch`, with its absolute positions published.

Every headprobe runner (streaming scorers, patching, scans, DLA, attribution, judging) runs a
padded batch through :func:`forward_batch`, so interventions attached around it address the
absolute position of each token within its prompt (:mod:`headprobe.runtime.positions`)
whatever the padding side, and the batch's extra inputs (``pixel_values``...) reach the model.
"""

from __future__ import annotations

from typing import Any

import torch

from headprobe.inputs import Batch
from headprobe.runtime.positions import forward_positions


def forward_batch(model: Any, batch: Batch, **kwargs: Any) -> torch.Tensor:
    """``model(batch.tokens, attention_mask, position_ids, extra inputs)`` -> logits [B, T, V].

    The caller chooses the grad mode (``torch.inference_mode``, ``no_grad`` or gradients).
    """
    with forward_positions(batch.position_ids):
        return model(batch.tokens, **batch.forward_kwargs(), **kwargs)
