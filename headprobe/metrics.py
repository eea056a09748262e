"""Metrics on final-position logits shared by patching, DLA and experiments.

All functions take ``logits`` [B, V] at the position being scored (see
:func:`final_logits`) and return one value per prompt, [B].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from headprobe.errors import MetricError


def final_logits(logits: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """[B, T, V] logits and [B] last real positions -> [B, V]."""
    return logits[torch.arange(logits.shape[0], device=logits.device), last.to(logits.device)]


def logit_difference(logits: torch.Tensor, correct: torch.Tensor,
                     incorrect: torch.Tensor) -> torch.Tensor:
    """logit[correct] - logit[incorrect], per prompt."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, correct.to(logits.device)] - logits[rows, incorrect.to(logits.device)]


def normalized_logit_difference(value: torch.Tensor, clean: torch.Tensor,
                                corrupt: torch.Tensor) -> torch.Tensor:
    """(value - corrupt) / (clean - corrupt): 1 = clean behaviour, 0 = corrupt behaviour."""
    return (value - corrupt) / (clean - corrupt)


def probability(logits: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """Softmax probability of ``token`` per prompt."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits.float().softmax(-1)[rows, token.to(logits.device)]


def kl_divergence(base_logits: torch.Tensor, new_logits: torch.Tensor,
                  eps: float = 1e-12) -> torch.Tensor:
    """KL(p_base || p_new) = sum p_base (log p_base - log p_new), per prompt (nats).

    ``eps`` is added to both distributions inside the logs, as in the Ships reference code.
    """
    base = base_logits.float().softmax(-1)
    new = new_logits.float().softmax(-1)
    return (base * ((base + eps).log() - (new + eps).log())).sum(-1)


def check_finite(values: torch.Tensor, what: str, prompts: Sequence[str] | None = None,
                 offset: int = 0) -> torch.Tensor:
    """Raise :class:`MetricError` naming the first prompt whose value is NaN or infinite."""
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        index = int(torch.nonzero(bad.reshape(bad.shape[0], -1).any(-1))[0]) + offset
        shown = f": {prompts[index - offset]!r}" if prompts is not None else ""
        raise MetricError(f"{what} is not finite for prompt {index}{shown}")
    return values
