"""The attribution patching entry point: :func:`attribution_patching` and its engine.

Prepares the clean / corrupt batches, collects each run's upstream activations
(:mod:`headprobe.attribution.common`), hands each batch to the estimator of ``method``
(:mod:`headprobe.attribution.inputs_ig` for ``eap`` / ``eap-ig``,
:mod:`headprobe.attribution.activation_ig` for ``eap-ig-act`` / ``eap-ig-act-head``) and turns
the score sums into an :class:`~headprobe.attribution.common.AttributionResult`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from headprobe.attribution.activation_ig import activation_ig_batch
from headprobe.attribution.common import (
    REFERENCE,
    AttributionResult,
    Scores,
    check_method,
    collect_upstream,
    edge_table,
    node_names,
)
from headprobe.attribution.inputs_ig import input_ig_batch
from headprobe.errors import TaskError
from headprobe.headtable import HeadTable
from headprobe.inputs import fingerprint, iter_batches
from headprobe.models import describe_model
from headprobe.provenance import Timer, result_meta
from headprobe.runtime.hooks import model_device
from headprobe.runtime.layers import check_supported
from headprobe.tasks.base import Task, TaskItem
from headprobe.tasks.pairs import ScanData, prepare_scan_data


def attribution_patching(
    model: Any,
    task: Task | Sequence[TaskItem],
    *,
    method: str = "eap-ig",
    steps: int = 5,
    edges: bool = True,
    batch_size: int = 8,
    progress: bool = True,
) -> AttributionResult:
    """Node (z, q, k, v, mlp) and edge attribution scores for a task's clean / corrupt pairs.

    Args:
        model: a TransformerLens bridge (rotary pre-norm decoders: llama family, Gemma 3).
        task: a :class:`Task` or items with prompts, single-token answers and distractors and
            corrupt prompts of equal token length.
        method: ``eap`` (gradient at the clean run: Nanda 2023 / Syed et al. 2023),
            ``eap-ig`` (gradients averaged over ``steps`` points between the corrupt and clean
            input embeddings: Hanna et al. 2024's EAP-IG-inputs) or ``eap-ig-act`` (integrated
            gradients over each upstream layer's own activations, one layer at a time, every
            other upstream activation clean: estimates per-component noising;
            :mod:`headprobe.attribution.activation_ig`) or ``eap-ig-act-head`` (the same with
            each head its own site: tends to exact per-head noising). ``eap-ig-act`` costs
            ``2L + 1`` forward + backward passes (over ``steps x batch`` rows, from the
            interpolated layer on, shared prefix skipped) per batch instead of ``steps``;
            ``eap-ig-act-head`` ``H`` times the rows at the head sites.
        steps: integrated-gradient steps: 5..100 for ``eap-ig`` (right Riemann sum, points
            ``k/m``), 1..100 for ``eap-ig-act(-head)`` (midpoint rule, points
            ``(k - 1/2)/m``);
            ignored for ``eap``.
        edges: also return the edge table (costs an [n_up x n_down] product per batch;
            ``eap-ig-act`` computes the edges in any case, its input nodes are their sums).
        batch_size: prompts per forward / backward pass.
        progress: tqdm bar over batches x steps (``eap-ig-act(-head)``: batches x sites).

    Returns:
        An :class:`AttributionResult`. Every score estimates ``M(clean with the component's
        input / output from the corrupt run) - M(clean)`` in logit-difference units, averaged
        over prompts.

    Raises:
        UsageError: unknown method or steps out of range.
        TaskError: an item has no corrupt prompt.
        NotImplementedError: ``eap-ig-act`` on an architecture
            :func:`headprobe.runtime.layers.run_from_layer` does not support.
    """
    alphas = check_method(method, steps)
    return attribute_with_alphas(model, task, alphas=alphas, edges=edges, batch_size=batch_size,
                                 progress=progress, method=method)


def attribute_with_alphas(model: Any, task: Task | Sequence[TaskItem], *,
                          alphas: Sequence[float], edges: bool, batch_size: int, progress: bool,
                          method: str) -> AttributionResult:
    """The engine behind :func:`attribution_patching` (any list of IG points ``alphas``)."""
    spec = describe_model(model)
    activations = method in ("eap-ig-act", "eap-ig-act-head")
    if activations:
        check_supported(model)
    timer = Timer()
    data: ScanData = prepare_scan_data(model, task, need_corrupt=True)
    if data.corrupt is None:
        raise TaskError("attribution patching needs a corrupt_prompt for every item")
    device = model_device(model)
    pad = spec.pad_token_id if spec.pad_token_id is not None else 0
    clean_batches = list(iter_batches(data.clean, batch_size, pad_token_id=pad, device=device))
    corrupt_batches = list(iter_batches(data.corrupt, batch_size, pad_token_id=pad,
                                        device=device))
    up, down, up_pos, down_pos = node_names(spec)
    scores = Scores.zeros(spec, len(up), len(down))
    ld_clean = ld_corrupt = 0.0
    passes = 0
    if activations:
        total = len(clean_batches) * (2 * spec.n_layers + 1)
    else:
        total = len(clean_batches) * len(alphas)
    bar = tqdm(total=total, desc=method, disable=not progress, leave=False)
    try:
        for clean, corrupt in zip(clean_batches, corrupt_batches, strict=True):
            rows = clean.indices.cpu()
            answers, distractors = data.answers[rows], data.distractors[rows]
            up_clean = collect_upstream(model, spec, clean, answers, distractors)
            up_corrupt = collect_upstream(model, spec, corrupt, answers, distractors)
            ld_clean += float(up_clean.ld.sum())
            ld_corrupt += float(up_corrupt.ld.sum())
            if activations:
                passes += activation_ig_batch(model, spec, clean, corrupt, up_clean,
                                              up_corrupt, answers, distractors, alphas,
                                              scores, bar, method == "eap-ig-act-head")
            else:
                input_ig_batch(model, spec, clean, up_clean, up_corrupt, answers,
                               distractors, alphas, edges, scores, bar)
                passes += len(alphas)
    finally:
        bar.close()
    n = len(data.clean)
    meta = result_meta(
        kind="attribution", name=method, spec=spec,
        params={"method": method, "steps": len(alphas), "edges": edges,
                "batch_size": batch_size},
        fingerprint=fingerprint(data.clean + data.corrupt), n_prompts=n, timer=timer,
        description=f"{method} node and edge attribution scores (logit difference)",
        reference=REFERENCE, method=method, steps=len(alphas), alphas=list(alphas),
        task=data.name, batch_size=batch_size, mean_ld_clean=ld_clean / n,
        mean_ld_corrupt=ld_corrupt / n, backward_passes=passes,
        metric="logit_diff (sum over positions, mean over prompts)")
    nodes = {
        "z": HeadTable.from_grid((scores.z / n).float(), spec,
                                 meta={**meta, "scorer": f"{method}_z"}),
        "q": HeadTable.from_grid((scores.q / n).float(), spec,
                                 meta={**meta, "scorer": f"{method}_q"}),
        "k": HeadTable.from_kv_grid((scores.k / n).float(), spec,
                                    meta={**meta, "scorer": f"{method}_k"}),
        "v": HeadTable.from_kv_grid((scores.v / n).float(), spec,
                                    meta={**meta, "scorer": f"{method}_v"}),
    }
    mlp = pd.DataFrame({"layer": range(spec.n_layers), "score": (scores.mlp / n).numpy()})
    edge_frame = edge_table(scores.edges / n, up, down, up_pos, down_pos) if edges else \
        pd.DataFrame(columns=["upstream", "downstream", "score", "abs_score"])
    edge_frame.attrs = dict(meta)
    return AttributionResult(nodes, mlp, edge_frame, meta)
