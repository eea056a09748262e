"""Direct logit attribution (DLA) of every component to a logit difference.

Method (Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits"; the logit
lens of nostalgebraist 2020, "interpreting GPT: the logit lens"): the
residual stream at the final position is a sum of component outputs,

    x = embed (+ pos_embed) + sum_L [ sum_h z_h W_O^h + b_O^L ] + sum_L mlp_L,

and with the final norm's scale ``s`` frozen at its value from the run, the final norm is a
linear map: RMSNorm ``x -> x / s * w`` (Gemma: ``* (1 + w)``), LayerNorm
``x -> (x - mean(x)) / s * w + b`` (centering is linear; ``b`` is its own component). So the
logit difference ``logit[c] - logit[i]`` splits exactly into one term per component:

    DLA(component) = norm_linear(component_output) . (W_U[c] - W_U[i]),

plus ``b . (W_U[c] - W_U[i])`` for a LayerNorm bias and ``b_U[c] - b_U[i]`` for an unembedding
bias. On Gemma 3 the attention output passes through a post-attention RMSNorm before joining
the residual; that norm acts on the summed attention output, so with its scale ``s_L`` frozen
each head's output is divided by ``s_L`` and multiplied by ``1 + w_post`` as well.

The computation reads activations through hooks (nothing is patched) and weights from the
Hugging Face modules; the user's model is never changed (no weight folding, no compatibility
mode). The sum of all components is compared with the logit difference measured in the same
run; the difference (``error``) is float rounding, about 1e-5 on real models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from headprobe.arch import ModelSpec
from headprobe.errors import TaskError
from headprobe.inputs import (
    Batch,
    Encoded,
    PaddingSide,
    encode_prompts,
    fingerprint,
    iter_batches,
)
from headprobe.metrics import final_logits
from headprobe.models import describe_model
from headprobe.runtime.forward import forward_batch
from headprobe.runtime.hooks import attached, model_device
from headprobe.scorers.base import Scorer, ScorerData, ScoreResult
from headprobe.scorers.params import Params, param
from headprobe.tasks.base import Task, TaskItem
from headprobe.tasks.pairs import item_answer_ids, task_items
from headprobe.weights import head_output_weights, hf_module, read_weight

REFERENCE = ("Elhage et al. 2021, A Mathematical Framework for Transformer Circuits; "
             "nostalgebraist 2020, the logit lens")


@dataclass
class Attribution:
    """Per-prompt direct logit attribution of every component (float64, CPU).

    Attributes:
        heads: [N, L, H] each attention head (``z_h W_O^h``, through the post-attention norm
            where the model has one).
        mlps: [N, L] each MLP's output as added to the residual stream.
        embed: [N] the token embedding (with Gemma's sqrt(d_model) scale).
        pos_embed: [N] a learned position embedding (GPT-2), else None.
        attn_bias: [N, L] each attention output bias ``b_O`` (plus a post-attention norm bias),
            None when the model has none.
        final_norm_bias: [N] the final LayerNorm bias, None for RMSNorm.
        unembed_bias: [N] ``b_U[c] - b_U[i]``, None when the unembedding has no bias.
        measured: [N] the logit difference measured in the same forward pass (before a final
            logit soft-cap, which is undone, as it is not linear).
        correct, incorrect: [N] the token ids compared.
        prompts: the N prompt texts.
    """

    heads: torch.Tensor
    mlps: torch.Tensor
    embed: torch.Tensor
    pos_embed: torch.Tensor | None
    attn_bias: torch.Tensor | None
    final_norm_bias: torch.Tensor | None
    unembed_bias: torch.Tensor | None
    measured: torch.Tensor
    correct: torch.Tensor
    incorrect: torch.Tensor
    prompts: list[str]

    def total(self) -> torch.Tensor:
        """[N] the sum of every component's DLA (equals :attr:`measured` up to rounding)."""
        out = self.heads.sum((1, 2)) + self.mlps.sum(1) + self.embed
        for extra in (self.pos_embed, self.final_norm_bias, self.unembed_bias):
            if extra is not None:
                out = out + extra
        if self.attn_bias is not None:
            out = out + self.attn_bias.sum(1)
        return out

    @property
    def error(self) -> torch.Tensor:
        """[N] measured logit difference minus the sum of components."""
        return self.measured - self.total()

    def components(self) -> list[tuple[str, str, int | None, int | None, torch.Tensor]]:
        """``(name, kind, layer, head, [N] values)`` for every component, in residual order."""
        rows: list[tuple[str, str, int | None, int | None, torch.Tensor]] = [
            ("embed", "embed", None, None, self.embed)]
        if self.pos_embed is not None:
            rows.append(("pos_embed", "pos_embed", None, None, self.pos_embed))
        n_layers, n_heads = self.heads.shape[1:]
        for layer in range(n_layers):
            for head in range(n_heads):
                rows.append((f"L{layer}H{head}", "head", layer, head, self.heads[:, layer, head]))
            if self.attn_bias is not None:
                rows.append((f"L{layer} attn bias", "attn_bias", layer, None,
                             self.attn_bias[:, layer]))
            rows.append((f"L{layer} mlp", "mlp", layer, None, self.mlps[:, layer]))
        if self.final_norm_bias is not None:
            rows.append(("final norm bias", "norm_bias", None, None, self.final_norm_bias))
        if self.unembed_bias is not None:
            rows.append(("unembed bias", "unembed_bias", None, None, self.unembed_bias))
        return rows

    def to_frame(self, per_prompt: bool = False) -> pd.DataFrame:
        """Every component as a long DataFrame.

        Columns: ``component``, ``kind`` (embed, pos_embed, head, attn_bias, mlp, norm_bias,
        unembed_bias), ``layer``, ``head`` (nullable ints), then per prompt ``prompt``
        (index), ``text``, ``dla``; or averaged ``dla`` (mean), ``std``, ``frac_positive``.
        ``attrs``: ``measured_logit_diff`` and ``sum_of_components`` (means over prompts),
        ``max_abs_error`` and ``mean_abs_error`` of the decomposition, ``n_prompts``.
        """
        rows = self.components()
        names = [r[0] for r in rows]
        kinds = [r[1] for r in rows]
        layers = pd.array([r[2] for r in rows], dtype="Int64")
        heads = pd.array([r[3] for r in rows], dtype="Int64")
        values = torch.stack([r[4] for r in rows]).numpy()  # [C, N]
        if per_prompt:
            n = values.shape[1]
            frame = pd.DataFrame({
                "prompt": np.repeat(np.arange(n), len(rows)),
                "text": np.repeat(np.array(self.prompts, dtype=object), len(rows)),
                "component": np.tile(np.array(names, dtype=object), n),
                "kind": np.tile(np.array(kinds, dtype=object), n),
                "layer": pd.array(np.tile(layers, n), dtype="Int64"),
                "head": pd.array(np.tile(heads, n), dtype="Int64"),
                "dla": values.T.ravel(),
            })
        else:
            frame = pd.DataFrame({
                "component": names, "kind": kinds, "layer": layers, "head": heads,
                "dla": values.mean(1), "std": values.std(1), "frac_positive": (values > 0).mean(1),
            })
        frame.attrs = self.summary()
        return frame

    def summary(self) -> dict[str, float]:
        """Means over prompts of the measured difference and the sum; decomposition errors."""
        error = self.error.abs()
        return {
            "measured_logit_diff": float(self.measured.mean()),
            "sum_of_components": float(self.total().mean()),
            "max_abs_error": float(error.max()),
            "mean_abs_error": float(error.mean()),
            "n_prompts": int(self.measured.shape[0]),
        }


def logit_attribution(
    model: Any,
    task_or_items: Task | Sequence[TaskItem],
    *,
    per_prompt: bool = False,
    batch_size: int = 8,
    padding_side: PaddingSide = "right",
    progress: bool = False,
) -> pd.DataFrame:
    """Direct logit attribution of EVERY component to ``logit[answer] - logit[distractor]``.

    Args:
        model: a TransformerLens bridge (not modified).
        task_or_items: a :class:`Task` or a sequence of :class:`TaskItem`, every item with a
            single-token ``answer`` and ``distractor``.
        per_prompt: one row per (prompt, component) instead of the mean over prompts.
        batch_size, padding_side, progress: batching of the forward passes.

    Returns:
        A DataFrame (see :meth:`Attribution.to_frame`) whose ``dla`` column sums, per prompt
        or on average, to the measured logit difference (``attrs["measured_logit_diff"]``).
    """
    attribution = attribute(model, task_or_items, batch_size=batch_size,
                            padding_side=padding_side, progress=progress)
    return attribution.to_frame(per_prompt=per_prompt)


def attribute(
    model: Any,
    task_or_items: Task | Sequence[TaskItem],
    *,
    batch_size: int = 8,
    padding_side: PaddingSide = "right",
    progress: bool = False,
) -> Attribution:
    """Per-prompt DLA tensors of every component; see :class:`Attribution`."""
    spec = describe_model(model)
    task = as_task(task_or_items)
    correct, incorrect = checked_answer_ids(model, task)
    token_lists = encode_prompts(model, task.prompts, spec)  # any prompt kind, images included
    return attribute_tokens(model, spec, token_lists, correct, incorrect, prompts=task.prompts,
                            batch_size=batch_size, padding_side=padding_side, progress=progress)


def as_task(task_or_items: Task | Sequence[TaskItem]) -> Task:
    """A :class:`Task` from a task or a sequence of items; :class:`TaskError` otherwise."""
    if isinstance(task_or_items, Task):
        return task_or_items
    items, _ = task_items(task_or_items)
    return Task("custom", items)


def checked_answer_ids(model: Any, task: Task) -> tuple[torch.Tensor, torch.Tensor]:
    """[N] answer and [N] distractor ids (through :mod:`headprobe.answers`);
    :class:`TaskError` naming the item when an answer or distractor is missing or is not one
    token."""
    correct, incorrect = item_answer_ids(model, list(task.items),
                                         why="DLA of a logit difference needs one")
    assert incorrect is not None
    return correct, incorrect


# ---------------------------------------------------------------------------------------------
# The computation


def _param(model: Any, module: Any, name: str) -> torch.Tensor | None:
    """``module.<name>`` in float64 (``None`` when absent), loaded first under a device map."""
    if getattr(module, name, None) is None:
        return None
    return read_weight(model, module, name).double()


@dataclass
class _Weights:
    """Float64 weights the decomposition needs (on the model's device)."""

    w_o: torch.Tensor  # [L, H, d_head, d_model]
    w_u: torch.Tensor  # [V, d_model] (rows of lm_head)
    b_u: torch.Tensor | None  # [V]
    final_w: torch.Tensor | None  # [d_model]
    final_b: torch.Tensor | None  # [d_model]
    b_o: torch.Tensor | None  # [L, d_model]
    post_w: torch.Tensor | None  # [L, d_model]
    post_b: torch.Tensor | None  # [L, d_model]


def _weights(model: Any, spec: ModelSpec) -> _Weights:
    facts = spec.facts
    w_o = head_output_weights(model, spec).double()
    unembed = hf_module(model, facts.unembed)
    final = hf_module(model, facts.final_norm)
    layers = [f"{facts.layers_path}.{layer}" for layer in range(spec.n_layers)]
    o_bias = [_param(model, hf_module(model, f"{p}.{facts.attention_module}.{facts.o_proj}"),
                     "bias")
              for p in layers]
    post_w = post_b = None
    if facts.has_post_attention_norm:
        if facts.post_attention_norm is None:
            raise RuntimeError(f"{spec.model_type}: has_post_attention_norm without a module name")
        posts = [hf_module(model, f"{p}.{facts.post_attention_norm}") for p in layers]
        weights = [_param(model, m, "weight") for m in posts]
        biases = [_param(model, m, "bias") for m in posts]
        post_w = torch.stack(weights) if all(w is not None for w in weights) else None  # type: ignore[misc]
        post_b = torch.stack(biases) if all(b is not None for b in biases) else None  # type: ignore[misc]
    return _Weights(
        w_o=w_o,
        w_u=read_weight(model, unembed).double(),
        b_u=_param(model, unembed, "bias"),
        final_w=_param(model, final, "weight"),
        final_b=_param(model, final, "bias"),
        b_o=torch.stack(o_bias) if all(b is not None for b in o_bias) else None,  # type: ignore[misc]
        post_w=post_w,
        post_b=post_b,
    )


def _through_norm(direction: torch.Tensor, weight: torch.Tensor | None, scale: torch.Tensor,
                  offset: float, center: bool) -> torch.Tensor:
    """Pull a read-out direction back through a norm with its scale frozen.

    For ``y = norm(x) = C(x) / s * (offset + w)`` (``C`` = mean-centering for LayerNorm, the
    identity for RMSNorm), ``y . d = x . C(d * (offset + w) / s)`` as ``C`` is symmetric.

    Args:
        direction: [B, d_model] read-out direction ``d`` applied to the norm's output.
        weight: [d_model] the norm's weight (None: no elementwise weight).
        scale: [B] the norm's scale from the run.
    Returns:
        [B, d_model] the direction to apply to the norm's input.
    """
    gain = (offset + weight) if weight is not None else torch.full_like(direction[0], 1.0 + offset)
    out = direction * gain / scale[:, None]
    if center:
        out = out - out.mean(-1, keepdim=True)
    return out


def attribute_tokens(
    model: Any,
    spec: ModelSpec,
    token_lists: Sequence[torch.Tensor | Encoded],
    correct: torch.Tensor,
    incorrect: torch.Tensor,
    *,
    prompts: Sequence[str] | None = None,
    batch_size: int = 8,
    padding_side: PaddingSide = "right",
    progress: bool = False,
) -> Attribution:
    """DLA of every component at each prompt's last real token.

    Args:
        token_lists: N prompts: 1-D id tensors [T_i] or :class:`Encoded` (any kind; image
            prompts carry their pixel values to the forward pass).
        correct, incorrect: [N] token ids; the score is ``logit[correct] - logit[incorrect]``.
    """
    from tqdm.auto import tqdm

    facts, hooks = spec.facts, spec.hooks
    n, n_layers = len(token_lists), spec.n_layers
    if correct.shape != (n,) or incorrect.shape != (n,):
        raise TaskError(f"need {n} correct and {n} incorrect ids, got shapes "
                        f"{tuple(correct.shape)} and {tuple(incorrect.shape)}")
    device = model_device(model)
    weights = _weights(model, spec)
    center = facts.norm == "layernorm"
    offset = facts.norm_weight_offset
    cap = spec.final_logit_softcap
    out = {
        "heads": torch.zeros(n, n_layers, spec.n_heads, dtype=torch.float64),
        "mlps": torch.zeros(n, n_layers, dtype=torch.float64),
        "embed": torch.zeros(n, dtype=torch.float64),
        "pos_embed": torch.zeros(n, dtype=torch.float64) if facts.learned_pos_embed else None,
        "attn_bias": (torch.zeros(n, n_layers, dtype=torch.float64)
                      if weights.b_o is not None or weights.post_b is not None else None),
        "final_norm_bias": torch.zeros(n, dtype=torch.float64)
        if weights.final_b is not None else None,
        "unembed_bias": torch.zeros(n, dtype=torch.float64) if weights.b_u is not None else None,
        "measured": torch.zeros(n, dtype=torch.float64),
    }
    pad = spec.pad_token_id if spec.pad_token_id is not None else 0
    batches = iter_batches(token_lists, batch_size, pad_token_id=pad, padding_side=padding_side,
                           device=device)
    for batch in tqdm(batches, total=-(-n // batch_size), desc="dla", disable=not progress,
                      leave=False):
        grabbed: dict[str, torch.Tensor] = {}
        names = {"embed": hooks.embed, "final_scale": hooks.final_norm_scale}
        if facts.learned_pos_embed:
            names["pos_embed"] = hooks.pos_embed
        for layer in range(n_layers):
            names[f"z{layer}"] = hooks.at("z", layer)
            names[f"mlp{layer}"] = hooks.at("mlp_out", layer)
            if facts.has_post_attention_norm:
                names[f"post{layer}"] = hooks.at("post_attention_norm_scale", layer)
        fwd = [(name, partial(_grab_last, grabbed, key, batch)) for key, name in names.items()]
        with torch.inference_mode(), attached(model, fwd):
            logits = forward_batch(model, batch)
        missing = sorted(set(names) - set(grabbed))
        if missing:
            raise RuntimeError(f"hooks did not fire: {[names[k] for k in missing]}")
        rows = batch.indices.cpu()
        c, i = correct[rows].to(device), incorrect[rows].to(device)
        last = final_logits(logits, batch.last).double()  # [B, V]
        if cap:  # undo tanh soft-capping: the decomposition is of the raw logits
            last = cap * torch.atanh(last / cap)
        br = torch.arange(batch.size, device=device)
        out["measured"][rows] = (last[br, c] - last[br, i]).cpu()
        d_u = weights.w_u[c] - weights.w_u[i]  # [B, d_model]
        u = _through_norm(d_u, weights.final_w, grabbed["final_scale"].reshape(-1), offset,
                          center)
        out["embed"][rows] = (grabbed["embed"] * u).sum(-1).cpu()
        if out["pos_embed"] is not None:
            out["pos_embed"][rows] = (grabbed["pos_embed"] * u).sum(-1).cpu()
        for layer in range(n_layers):
            u_layer = u
            if facts.has_post_attention_norm:
                post_w = weights.post_w[layer] if weights.post_w is not None else None
                u_layer = _through_norm(u, post_w, grabbed[f"post{layer}"].reshape(-1), offset,
                                        center)
            per_head = torch.einsum("hdm,bm->bhd", weights.w_o[layer], u_layer)  # [B, H, d_head]
            out["heads"][rows, layer] = (grabbed[f"z{layer}"] * per_head).sum(-1).cpu()
            out["mlps"][rows, layer] = (grabbed[f"mlp{layer}"] * u).sum(-1).cpu()
            if out["attn_bias"] is not None:
                bias = torch.zeros(batch.size, dtype=torch.float64, device=device)
                if weights.b_o is not None:
                    bias = bias + (weights.b_o[layer] * u_layer).sum(-1)
                if weights.post_b is not None:
                    bias = bias + (weights.post_b[layer] * u).sum(-1)
                out["attn_bias"][rows, layer] = bias.cpu()
        if out["final_norm_bias"] is not None:
            out["final_norm_bias"][rows] = (weights.final_b * d_u).sum(-1).cpu()  # type: ignore[operator]
        if out["unembed_bias"] is not None:
            b_u = weights.b_u
            out["unembed_bias"][rows] = (b_u[c] - b_u[i]).cpu()  # type: ignore[index]
    return Attribution(correct=correct.cpu(), incorrect=incorrect.cpu(),
                       prompts=list(prompts) if prompts is not None else [""] * n,
                       **out)  # type: ignore[arg-type]


def _grab_last(store: dict[str, torch.Tensor], key: str, batch: Batch,
               activation: torch.Tensor, hook: Any) -> None:
    """Keep the activation at each prompt's last real token, as float64: [B, ...]."""
    rows = torch.arange(batch.size, device=activation.device)
    store[key] = activation[rows, batch.last.to(activation.device)].detach().double()


# ---------------------------------------------------------------------------------------------
# The scorer


@dataclass(frozen=True)
class DLAParams(Params):
    """Parameters of :data:`SCORER` (``dla``)."""

    relation: str = param("capital", "relation of the default facts task (e.g. 'capital')")
    padding_side: Literal["right", "left"] = param("right", "'right' or 'left' padding of "
                                                   "batched prompts")


def _prepare(model: Any, spec: ModelSpec, prompts: Any, n: int, seed: int,
             params: dict[str, Any]) -> ScorerData:
    if prompts is None:
        from headprobe.tasks.facts import make_task

        task = make_task(n=n, relation=params["relation"], seed=seed, model=model)
        description = f"facts task ({params['relation']}), {len(task)} items, seed {seed}"
    else:
        task = as_task(prompts)
        description = f"task {task.name!r}, {len(task)} items"
    correct, incorrect = checked_answer_ids(model, task)
    token_lists = encode_prompts(model, task.prompts, spec)  # any prompt kind, images included
    digest = fingerprint([*token_lists, correct, incorrect])
    return ScorerData((task, token_lists, correct, incorrect), digest, len(task), description)


def _compute(model: Any, spec: ModelSpec, data: ScorerData, params: dict[str, Any],
             batch_size: int, progress: bool) -> ScoreResult:
    task, token_lists, correct, incorrect = data.payload
    result = attribute_tokens(model, spec, token_lists, correct, incorrect, prompts=task.prompts,
                              batch_size=batch_size, padding_side=params["padding_side"],
                              progress=progress)
    heads = result.heads
    others = {name: float(values.mean()) for name, kind, _, _, values in result.components()
              if kind not in ("head", "mlp")}
    return ScoreResult(
        score=heads.mean(0),
        columns={"dla_std": heads.std(0, unbiased=False),
                 "frac_positive": (heads > 0).double().mean(0)},
        meta={
            **result.summary(),
            "decomposition_error": result.summary()["max_abs_error"],
            "mlp_dla": [float(v) for v in result.mlps.mean(0)],
            "other_components_dla": others,
            "metric": "logit[answer] - logit[distractor] at the final position",
        },
    )


SCORER = Scorer(
    name="dla",
    description="direct logit attribution of each head to logit[answer] - logit[distractor] "
                "(final norm scale frozen)",
    reference=REFERENCE,
    prepare=_prepare,
    compute=_compute,
    prompts="None (the facts task of the relation parameter), a Task, or a list of TaskItem "
            "(prompt, single-token answer and distractor); prompts of any kind",
    params=DLAParams,
    default_n=64,
    cheap=True,
)
