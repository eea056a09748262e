"""``ships``: safety-head importance per head (Ships; Zhou et al. 2025, "On the Role of
Attention Heads in Large Language Model Safety").

Method, as the paper's reference code computes it (github.com/ydyjya/SafetyHeadAttribution,
``lib/SHIPS/get_ships.py``): for each harmful query ``q`` and head ``h``,
``Ships(q, h) = KL(p_base || p_ablated)`` of the next-token distribution at the last prompt
position, where the ablated model has head ``h``

- ``uniform_attention`` ("undifferentiated attention"): its query multiplied by ``eps``
  after any query norm, so its attention is ~uniform over the visible keys;
- ``scale_output`` ("scaling contribution"): its output ``z`` (attention @ V, before W_O)
  multiplied by ``eps``.

Table: ``score`` = mean Ships over the queries for the first of ``ablations``; per ablation
``a`` (short names ``uniform`` / ``scaled``): ``<a>_mean``, ``<a>_median`` and ``<a>_top10``
(share of queries whose 10 highest-Ships heads include the head). A high Ships means that
disabling the head changes what the model says first to harmful requests the most; on a
safety-tuned model the first token decides refusal ("I" / "Sorry") or compliance.

Data: the project's harmful requests (:func:`headprobe.heads.safety.request_sets.load_requests`,
``split``), each rendered with ``template`` (``chat``: the model's chat template, which a
chat model must have; ``sahara``: ``"## Query:{q}\\n## Answer:"`` for base models), or the
prompts given. Runs on the fast-scan engine (:func:`headprobe.fastscan.head_effects`: one
forward per layer with its heads stacked, from the cached residual), or with
``engine="loop"`` the reference's one forward per head; resumable per batch of queries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from headprobe.arch import ModelSpec
from headprobe.checkpoint import Checkpoint
from headprobe.errors import ScorerParamError, TaskError
from headprobe.fastscan.effects import head_effects, loop_head_effects
from headprobe.heads.safety.request_sets import Split, load_requests, request_prompt
from headprobe.inputs import encode_prompts, fingerprint
from headprobe.runtime.layers import check_supported
from headprobe.scorers.base import Scorer, ScorerData, ScoreResult
from headprobe.scorers.params import Params, param
from headprobe.scorers.task_scan import ENGINE_HELP, Engine
from headprobe.tasks.base import Task, TaskItem

REFERENCE = ('Zhou et al. 2025, "On the Role of Attention Heads in Large Language Model '
             'Safety" (Ships)')
SHORT = {"uniform_attention": "uniform", "scale_output": "scaled"}
TOP = 10

ShipsMethod = Literal["uniform_attention", "scale_output"]
PROMPTS = ("None (the first n shipped harmful requests of the split, rendered with the "
           "template), a Task, or a non-empty list of prompts (strings, prompt items or task "
           "items)")


@dataclass(frozen=True)
class ShipsParams(Params):
    """Parameters of :data:`SCORER` (``ships``)."""

    renamed: ClassVar[Mapping[str, str]] = {"ablations": "method"}

    method: ShipsMethod | tuple[ShipsMethod, ...] = param(
        ("uniform_attention", "scale_output"), "ablation(s) to score, the first gives `score`: "
        "uniform_attention (query * eps after any q norm) and/or scale_output (head output * "
        "eps)")
    eps: float = param(1e-4, "the ablation's scale, > 0 (the paper: 1e-4 .. 1e-5)", gt=0)
    template: Literal["chat", "sahara", "plain"] = param(
        "chat", "how the default harmful requests are rendered: chat (the model's chat "
        "template), sahara ('## Query:{q}\\n## Answer:') or plain")
    split: Split = param("train", "split of the shipped harmful requests: train, heldout or all")
    engine: Engine = param("auto", ENGINE_HELP)
    heads_per_pass: int | None = param(None, "heads ablated in one stacked pass of the fast "
                                       "scan (None: all)", ge=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not ablation_list(self.method):
            raise ScorerParamError("parameter method=() is not allowed; name one or both of "
                                   f"{', '.join(SHORT)}")


def ablation_list(method: str | Sequence[str]) -> list[str]:
    """The ablations a ``method`` value names (one name or several), in order."""
    return [method] if isinstance(method, str) else list(method)


def prepare_queries(model: Any, spec: ModelSpec, prompts: Any, n: int, seed: int,
                    params: dict[str, Any]) -> ScorerData:
    """Token ids of the harmful queries (the first ``n`` shipped requests of ``split``, or
    the prompts / task items given)."""
    if prompts is None:
        requests = load_requests("harmful", params["split"])[:n]
        items = [request_prompt(r.prompt, params["template"]) for r in requests]
        description = (f"{len(items)} shipped harmful requests ({params['split']}), "
                       f"{params['template']} template")
    else:
        if isinstance(prompts, Task):
            prompts = list(prompts.items)
        if isinstance(prompts, str) or not len(prompts):
            raise TaskError("ships needs a non-empty list of harmful prompts (strings, prompt "
                            "items or task items)")
        items = [p.prompt if isinstance(p, TaskItem) else p for p in prompts]
        description = f"{len(items)} given prompts"
    if not items:
        raise TaskError("ships: the harmful set is empty; give prompts or a non-empty split")
    encoded = encode_prompts(model, items, spec)
    ids = [e.ids for e in encoded]
    return ScorerData(ids, fingerprint(ids), len(ids), description)


def summarize(effects: dict[str, torch.Tensor], eps: float) -> ScoreResult:
    """Dataset-level Ships from per-query effects ``{ablation: [N, L, H] KL}``."""
    columns: dict[str, torch.Tensor] = {}
    first = next(iter(effects))
    meta: dict[str, Any] = {"ablations": list(effects), "eps": eps, "top": TOP}
    for ablation, kl in effects.items():
        short = SHORT[ablation]
        n, layers, heads = kl.shape
        flat = kl.reshape(n, layers * heads)
        top = flat.topk(min(TOP, flat.shape[1]), dim=1).indices  # [N, TOP]
        in_top = torch.zeros_like(flat, dtype=torch.bool)
        in_top[torch.arange(n)[:, None], top] = True
        columns[f"{short}_mean"] = kl.mean(0)
        columns[f"{short}_median"] = kl.median(0).values
        columns[f"{short}_top10"] = in_top.double().mean(0).reshape(layers, heads)
        best = flat.argmax(1)  # each query's top head
        meta[f"{short}_top_head_per_query"] = [
            [int(i // heads), int(i % heads)] for i in best.tolist()]
    return ScoreResult(score=columns[f"{SHORT[first]}_mean"].float(),
                       columns={k: v.float() for k, v in columns.items()}, meta=meta)


def compute(model: Any, spec: ModelSpec, data: ScorerData, params: dict[str, Any],
            batch_size: int, progress: bool,
            checkpoint: Checkpoint | None = None) -> ScoreResult:
    """Ships of every head for each ablation (fast scan, or the loop with ``engine``)."""
    ablations = ablation_list(params["method"])
    eps = float(params["eps"])
    engine = params["engine"]
    if engine == "auto":
        try:
            check_supported(model)
            engine = "fast"
        except NotImplementedError:
            engine = "loop"
    effects = {}
    for ablation in ablations:
        if engine == "fast":
            part = checkpoint.part(ablation) if checkpoint is not None else None
            effects[ablation] = head_effects(
                model, data.payload, method=ablation, eps=eps, batch_size=batch_size,
                heads_per_pass=params["heads_per_pass"], progress=progress, checkpoint=part)
        else:
            effects[ablation] = loop_head_effects(model, data.payload, method=ablation,
                                                  eps=eps, batch_size=batch_size,
                                                  progress=progress)
    result = summarize(effects, eps)
    result.meta["engine"] = engine
    return result


SCORER = Scorer(
    name="ships",
    description="safety-head importance: KL of the next-token distribution on harmful "
                "requests when the head is ablated (uniform attention / scaled output)",
    reference=REFERENCE,
    prepare=prepare_queries,
    compute=compute,
    prompts=PROMPTS,
    params=ShipsParams,
    default_n=32,
    cheap=False,
)
