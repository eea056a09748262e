"""Attention sinks and active / dormant heads.

Sink score (Xiao et al. 2023, "Efficient Streaming Language Models with Attention Sinks"):
for each prompt and each query position ``i >= 1``, the attention on the prompt's first
position; averaged over queries and prompts, separately per prompt domain.

Active / dormant split (Guo et al. 2024, "Active-Dormant Attention Heads: Mechanistically
Demystifying Extreme-Token Phenomena in LLMs"): a head is *dormant* on a domain when almost
all its attention sits on the sink (sink share >= ``dormant_sink``, default 0.9) and its
output is small (mean ``||z_h W_O^h||`` over positions below ``dormant_norm_ratio`` (0.5)
times the median over all heads on that domain); otherwise it is *active*. A head's
``status`` is ``dormant`` (dormant on every domain), ``active`` (on none) or
``domain-dependent``.

``score`` is the sink share averaged over domains.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from headprobe.arch import ModelSpec
from headprobe.checkpoint import Checkpoint
from headprobe.errors import EmptyPromptsError
from headprobe.inputs import Batch, encode_prompts, fingerprint
from headprobe.prompts import load_resource, repeated_random_tokens
from headprobe.runtime.stream import ReduceContext, stream_reduce
from headprobe.scorers.base import Scorer, ScorerData, ScoreResult
from headprobe.scorers.params import Params, param
from headprobe.weights import head_output_weights


@dataclass(frozen=True)
class SinkParams(Params):
    """Parameters of :data:`SCORER` (``sink``)."""

    dormant_sink: float = param(0.9, "sink share at or above which a head can be dormant on a "
                                "domain", ge=0, le=1)
    dormant_norm_ratio: float = param(0.5, "a dormant head's mean output norm is below this "
                                      "times the median head's", ge=0)
    padding_side: Literal["right", "left"] = param("right", "'right' or 'left' padding of "
                                                   "batched prompts")


def _prepare(model: Any, spec: ModelSpec, prompts: Any, n: int, seed: int,
             params: dict[str, Any]) -> ScorerData:
    """Per-domain encoded prompts; user prompts (a list, or ``{domain: list}``) may be any
    prompt kind, image prompts included (their pixel values reach the forward pass)."""
    if prompts is None:
        texts = {k: v for k, v in load_resource("sink_domains.json").items()
                 if not k.startswith("_")}
        domains = {name: encode_prompts(model, items[:n], spec) for name, items in texts.items()}
        domains["random"] = repeated_random_tokens(model, spec, min(n, 8), seq_len=48,
                                                   repeats=2, seed=seed)
        description = "project-written prose/code/math/dialogue prompts + repeated random tokens"
    else:
        if not isinstance(prompts, Mapping):
            prompts = {"prompts": prompts}
        if not prompts:
            raise EmptyPromptsError("the sink scorer needs at least one domain of prompts")
        domains = {str(name): encode_prompts(model, items, spec)
                   for name, items in prompts.items()}
        description = f"user prompts in domains {sorted(domains)}"
    everything = [ids for name in sorted(domains) for ids in domains[name]]
    return ScorerData(domains, fingerprint(everything), len(everything), description)


def _compute(model: Any, spec: ModelSpec, data: ScorerData, params: dict[str, Any],
             batch_size: int, progress: bool,
             checkpoint: Checkpoint | None = None) -> ScoreResult:
    """Per-domain sink shares and output norms; with a ``checkpoint`` the running sums of every
    domain and its finished batch count are saved after each batch, and a run started again
    under the same run key restores them and skips the finished batches (bitwise the same
    sums: the additions happen in the same order)."""
    w_o = head_output_weights(model, spec).float()
    saved = checkpoint.load() if checkpoint is not None else None
    sums: dict[str, dict[str, torch.Tensor]] = dict(saved["sums"]) if saved else {}
    done: dict[str, int] = dict(saved["batches_done"]) if saved else {}
    columns: dict[str, torch.Tensor] = {}
    dormant_count = torch.zeros(spec.n_layers, spec.n_heads)
    sink_shares = []
    summary = {}
    for domain, token_lists in data.payload.items():
        restored = sums.get(domain, {})
        sink_sum = restored.get("sink_sum", torch.zeros(spec.n_layers, spec.n_heads)).clone()
        norm_sum = restored.get("norm_sum", torch.zeros(spec.n_layers, spec.n_heads)).clone()
        n_prompts = restored.get("n_prompts", torch.zeros(1)).clone()
        sums[domain] = {"sink_sum": sink_sum, "norm_sum": norm_sum, "n_prompts": n_prompts}
        n_batches = -(-len(token_lists) // batch_size)
        start = done.get(domain, 0)

        def on_pattern(pattern: torch.Tensor, context: ReduceContext,
                       sink_sum: torch.Tensor = sink_sum) -> None:
            batch, layer = context.batch, context.layer
            rows = torch.arange(batch.size, device=pattern.device)
            sink = pattern[rows, :, :, batch.start].float()  # [B, H, T_q]
            queries = _query_mask(batch)  # [B, T_q] real and not the first position
            per_prompt = (sink * queries[:, None]).sum(-1) / queries.sum(-1).clamp_min(1)[:, None]
            sink_sum[layer] += per_prompt.sum(0).cpu()

        def on_z(z: torch.Tensor, context: ReduceContext,
                 norm_sum: torch.Tensor = norm_sum, n_prompts: torch.Tensor = n_prompts) -> None:
            batch, layer = context.batch, context.layer
            out = torch.einsum("bthd,hdm->bthm", z.float(), w_o[layer].to(z.device))
            norms = out.norm(dim=-1)  # [B, T, H]
            queries = _query_mask(batch)
            counts = queries.sum(-1).clamp_min(1)[:, None]
            per_prompt = (norms * queries[:, :, None]).sum(1) / counts
            norm_sum[layer] += per_prompt.sum(0).cpu()
            if layer == 0:
                n_prompts += batch.size

        def on_batch_end(batch: Batch, domain: str = domain, n_batches: int = n_batches) -> None:
            done[domain] = done.get(domain, 0) + 1
            if checkpoint is not None:
                checkpoint.save({"sums": sums, "batches_done": done},
                                progress=f"{domain}: batch {done[domain]} of {n_batches} done")

        stream_reduce(model, spec, token_lists, {"pattern": on_pattern, "z": on_z},
                      batch_size=batch_size, padding_side=params["padding_side"],
                      progress=progress, desc=f"sink[{domain}]", on_batch_end=on_batch_end,
                      start_batch=start)
        sink_share = sink_sum / n_prompts
        out_norm = norm_sum / n_prompts
        dormant = (sink_share >= params["dormant_sink"]) & (
            out_norm < params["dormant_norm_ratio"] * out_norm.median())
        columns[f"sink_{domain}"] = sink_share
        columns[f"out_norm_{domain}"] = out_norm
        columns[f"dormant_{domain}"] = dormant
        dormant_count += dormant.float()
        sink_shares.append(sink_share)
        summary[domain] = {"n_prompts": int(n_prompts.item()), "n_dormant": int(dormant.sum())}
    n_domains = len(data.payload)
    status = [["dormant" if c == n_domains else "active" if c == 0 else "domain-dependent"
               for c in row] for row in dormant_count.int().tolist()]
    columns["n_dormant_domains"] = dormant_count.int()
    columns["status"] = status
    return ScoreResult(score=torch.stack(sink_shares).mean(0), columns=columns,
                       meta={"domains": summary})


def _query_mask(batch: Batch) -> torch.Tensor:
    """[B, T] real query positions after the first one."""
    mask = batch.attention_mask.clone()
    mask[torch.arange(batch.size, device=mask.device), batch.start] = False
    return mask


SCORER = Scorer(
    name="sink",
    description="attention on the first token, per prompt domain, with the active/dormant split",
    reference="Xiao et al. 2023 (attention sinks); Guo et al. 2024, Active-Dormant Attention Heads",
    prepare=_prepare,
    compute=_compute,
    prompts="None (project-written prose/code/math/dialogue prompts + repeated random "
            "tokens, n per domain), a list of prompts of any kind, or {domain: list of prompts}",
    params=SinkParams,
    default_n=8,
)
