"""EAP and EAP-IG over the input embeddings (``method="eap"`` / ``"eap-ig"``).

Attribution patching (Nanda 2023, "Attribution Patching: Activation Patching At Industrial
Scale") takes the gradient of M at the clean run; EAP-IG (Hanna, Pezzelle & Belinkov 2024,
"Have Faith in Faithfulness: Going Beyond Circuit Overlap When Finding Model Mechanisms")
replaces it by its average over ``m`` points on the straight line between the corrupt and the
clean input embeddings (integrated gradients, Sundararajan et al. 2017)::

    grad_v = (1/m) sum_{k=1..m} dM/dx_v |_{e_corrupt + (k/m)(e_clean - e_corrupt)}

With ``m = 1`` this is plain EAP (the gradient at the clean run). This is Hanna et al.'s
"EAP-IG-inputs" (their code takes ``k = 0..m-1``, i.e. includes the corrupt end instead of the
clean one; on the IOI benchmark the endpoint rule changes nothing that matters). Node and edge
scores are then formed from these gradients as in :mod:`headprobe.attribution.common`; cost:
``m`` forward + backward passes per batch.

Why input-IG disagrees with exact noising of one head (measured on IOI, ``bench/RESULTS.md``):
along the input path every upstream activation moves from corrupt to clean *together*, so a
head's gradient is taken where the rest of the circuit is half-corrupted. There the downstream
circuit is at its most sensitive (the gradient at the top head's z is 5x its value at the
clean run halfway along the path), and heads whose single-head noising effect is small, because
the rest of the clean circuit compensates, get large scores. Input-IG apportions the *joint*
clean -> corrupt change among the heads (as the exact IG flow through each head, its
conductance, does; Dhamdhere et al. 2018), a different quantity from per-head noising (or
denoising), and no choice of endpoints or more steps changes that. Interpolating one site's own
activations with everything else clean follows the noising path itself
(:mod:`headprobe.attribution.activation_ig`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from headprobe.arch import ModelSpec
from headprobe.attribution.common import (
    Grads,
    Scores,
    Upstream,
    downstream_grads,
    gradient_mode,
)
from headprobe.inputs import Batch
from headprobe.metrics import final_logits, logit_difference
from headprobe.runtime.forward import forward_batch
from headprobe.runtime.hooks import attached

# gradient kind -> HookNames field. The bridge's hook_resid_mid (ln2.hook_in) carries the
# whole residual stream after attention (the skip connection reads the hooked value), so its
# gradient is the total one; the MLP branch's own gradient is that minus the gradient at
# hook_resid_post.
_GRAD_HOOKS = {"q": "q_input", "k": "k_input", "v": "v_input", "mid": "resid_mid",
               "post": "resid_post", "z": "z"}


def integrated_grads(model: Any, spec: ModelSpec, batch: Batch, clean_embed: torch.Tensor,
                     corrupt_embed: torch.Tensor, answers: torch.Tensor,
                     distractors: torch.Tensor, alphas: Sequence[float]) -> Grads:
    """Average gradients of sum_b LD_b over the inputs ``e_corrupt + alpha (e_clean - e_corrupt)``.
    """
    grads = Grads()
    weight = 1.0 / len(alphas)

    def grab(kind: str, layer: int) -> Callable[..., torch.Tensor]:
        # The hook returns the tensor it got: for hooks whose shape the bridge converts
        # (hook_z is o.hook_in reshaped to [B, T, H, d_head]) only a returned tensor stays
        # on the graph, so only then does its gradient hook fire.
        def hook(act: torch.Tensor, hook: Any = None) -> torch.Tensor:
            if act.requires_grad:
                act.register_hook(lambda g: grads.add(kind, layer, g.detach().float(),
                                                      weight))
            return act
        return hook

    grab_hooks = [(spec.hooks.at(field_name, layer), grab(kind, layer))
                  for kind, field_name in _GRAD_HOOKS.items() for layer in range(spec.n_layers)]
    grab_hooks.append((spec.hooks.final_norm_in, grab("logits", -1)))
    for alpha in alphas:
        embed = (corrupt_embed + alpha * (clean_embed - corrupt_embed)).requires_grad_(True)

        def replace(act: torch.Tensor, hook: Any = None, embed: torch.Tensor = embed
                    ) -> torch.Tensor:
            return embed

        hooks = [(spec.hooks.at("resid_pre", 0), replace), *grab_hooks]
        with attached(model, hooks):
            logits = forward_batch(model, batch)
            metric = logit_difference(final_logits(logits, batch.last), answers,
                                      distractors).sum()
            metric.backward()
    return grads


def input_ig_batch(model: Any, spec: ModelSpec, clean: Batch, up_clean: Upstream,
                   up_corrupt: Upstream, answers: torch.Tensor, distractors: torch.Tensor,
                   alphas: Sequence[float], edges: bool, scores: Scores, bar: Any) -> None:
    """EAP / EAP-IG (input interpolation) scores of one batch, added to ``scores``."""
    with gradient_mode(model):
        grads = Grads()
        for alpha in alphas:  # one point at a time keeps the bar honest
            step = integrated_grads(model, spec, clean, up_clean.resid_pre[0],
                                    up_corrupt.resid_pre[0], answers, distractors, [alpha])
            for kind in ("q", "k", "v", "mid", "post", "z"):
                for layer, grad in getattr(step, kind).items():
                    grads.add(kind, layer, grad, 1.0 / len(alphas))
            assert step.logits is not None
            grads.add("logits", -1, step.logits, 1.0 / len(alphas))
            bar.update(1)
    real = clean.attention_mask[:, :, None].to(torch.float64)
    with torch.no_grad():
        for layer in range(spec.n_layers):
            dz = up_corrupt.z[layer].double() - up_clean.z[layer].double()
            scores.z[layer] += (dz * grads.z[layer].double()).sum((0, 1, 3)).cpu()
            dx = ((up_corrupt.resid_pre[layer].double()
                   - up_clean.resid_pre[layer].double()) * real)
            scores.q[layer] += torch.einsum("btd,bthd->h", dx, grads.q[layer].double()).cpu()
            scores.k[layer] += torch.einsum("btd,bthd->h", dx, grads.k[layer].double()).cpu()
            scores.v[layer] += torch.einsum("btd,bthd->h", dx, grads.v[layer].double()).cpu()
            dm = ((up_corrupt.resid_mid[layer].double()
                   - up_clean.resid_mid[layer].double()) * real)
            scores.mlp[layer] += (dm * grads.mlp(layer).double()).sum().cpu()
        if edges:
            delta = (up_corrupt.writes - up_clean.writes) * real.float()[None]
            down_grads = downstream_grads(grads, spec).float()
            scores.edges += torch.einsum("und,vnd->uv", delta.flatten(1, 2),
                                         down_grads.flatten(1, 2)).double().cpu()
