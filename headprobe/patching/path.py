"""Path patching: the effect of sender heads only through chosen receivers.

Path patching (Wang et al. 2022, "Interpretability in the Wild: a Circuit for Indirect Object
Identification in GPT-2 small"; Goldowsky-Dill et al. 2023, "Localizing Model Behavior with
Path Patching") measures the effect of *sender* heads only through chosen *receivers* (the
final residual stream, i.e. the logits, or the q/k/v inputs of chosen heads). The three-step
reference algorithm, for the default ``noising`` direction:

1. run clean and corrupt, caching every head's output ``z``;
2. rerun the clean input with the senders' ``z`` taken from the corrupt run and every other
   head's ``z`` frozen to its clean value (MLPs recomputed unless ``freeze_mlps``), and cache
   the receivers' inputs;
3. rerun the clean input with only the receivers' inputs replaced by the step-2 values
   (for receivers = ``"end"`` step 2's logits are already the answer).

A head's query input is patched through ``hook_q`` (its projected query, ``[B, T, H, d_head]``),
which is a function of that head's query input alone, so replacing it is replacing the head's
query input. With grouped-query attention, keys and values live per *kv head*
(``hook_k``/``hook_v`` ``[B, T, H_kv, d_head]``): a k or v receiver names a kv head and
changes every query head of its group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from headprobe.arch import ModelSpec
from headprobe.headtable import HeadTable
from headprobe.metrics import Metric, final_logits, resolve_metric
from headprobe.patching.engine import PatchingEngine, patch_meta
from headprobe.patching.setters import Setter, head_k, head_q, head_v, run_with_setters
from headprobe.provenance import Timer
from headprobe.types import Direction, Head, Position, direction_runs


@dataclass(frozen=True)
class Receiver:
    """A path-patching receiver: the ``q``, ``k`` or ``v`` input of one head.

    ``head`` is a query head for ``q`` and a **kv head** for ``k``/``v`` (grouped-query
    attention shares keys and values within a group).
    """

    kind: Literal["q", "k", "v"]
    layer: int
    head: int

    def setter(self, spec: ModelSpec, position: Position = None) -> Setter:
        make = {"q": head_q, "k": head_k, "v": head_v}.get(self.kind)
        if make is None:
            raise ValueError(f"receiver kind must be 'q', 'k' or 'v', got {self.kind!r}")
        return make(spec, self.layer, self.head, position)


Receivers = Literal["end"] | Sequence[Receiver | tuple[str, int, int]]


def _receivers(receivers: Receivers) -> list[Receiver] | None:
    if isinstance(receivers, str):
        if receivers != "end":
            raise ValueError(f"receivers must be 'end' or a list of Receiver, got {receivers!r}")
        return None
    out = [r if isinstance(r, Receiver) else Receiver(*r) for r in receivers]  # type: ignore[arg-type]
    if not out:
        raise ValueError("give at least one receiver (or receivers='end')")
    return out


@dataclass
class PathPatchResult:
    """What :func:`path_patch_values` returns.

    Attributes:
        values: [N] per-prompt metric values.
        receiver_acts: ``{hook: activation}`` for the hooks asked for with ``observe``,
            recorded in the final run (step 3, or step 2 for ``"end"``) of the *last* batch.
    """

    values: torch.Tensor
    receiver_acts: dict[str, torch.Tensor] = field(default_factory=dict)


def path_patch_values(
    engine: PatchingEngine,
    senders: Sequence[Head],
    receivers: Receivers = "end",
    *,
    metric: Metric = "normalized_logit_diff",
    direction: Direction = "noising",
    freeze_mlps: bool = False,
    receiver_position: Position = None,
    observe: Sequence[str] = (),
) -> PathPatchResult:
    """Per-prompt values of :func:`path_patch` (and hooks in ``observe`` recorded during the
    final run of the last batch, for tests and inspection)."""
    resolved = resolve_metric(metric)
    spec = engine.spec
    base, source = direction_runs(direction)
    sender_set = {spec.check_head(layer, head) for layer, head in senders}
    if not sender_set:
        raise ValueError("give at least one sender head")
    chosen = _receivers(receivers)
    z_hooks = [spec.hooks.at("z", layer) for layer in range(spec.n_layers)]
    mlp_hooks = [spec.hooks.at("mlp_out", layer) for layer in range(spec.n_layers)]
    engine.cache(base, z_hooks + (mlp_hooks if freeze_mlps else []))
    sender_layers = sorted({layer for layer, _ in sender_set})
    engine.cache(source, [spec.hooks.at("z", layer) for layer in sender_layers])
    receiver_setters = [] if chosen is None else [r.setter(spec, receiver_position)
                                                  for r in chosen]
    seen: dict[str, torch.Tensor] = {}
    out = []
    for index, pair in enumerate(engine.batches()):
        # Step 2: base input; senders from the source run, every other head frozen to base.
        patches: list[tuple[Setter, torch.Tensor]] = []
        for layer in range(spec.n_layers):
            hook = spec.hooks.at("z", layer)
            mine = tuple(h for h in range(spec.n_heads) if (layer, h) in sender_set)
            others = tuple(h for h in range(spec.n_heads) if (layer, h) not in sender_set)
            if others:
                patches.append((Setter(hook, others), engine._cache[(base, hook)][index]))
            if mine:
                patches.append((Setter(hook, mine), engine._cache[(source, hook)][index]))
            if freeze_mlps:
                mlp_hook = spec.hooks.at("mlp_out", layer)
                patches.append((Setter(mlp_hook), engine._cache[(base, mlp_hook)][index]))
        batch = pair.inputs(base)
        step2_observe = [s.hook for s in receiver_setters]
        logits, seen = run_with_setters(engine.model, batch, patches,
                                        observe=step2_observe if chosen else observe)
        if chosen is not None:
            # Step 3: base input, only the receivers' inputs replaced by their step-2 values.
            step3 = [(s, seen[s.hook]) for s in receiver_setters]
            logits, seen = run_with_setters(engine.model, batch, step3, observe=observe)
        out.append(engine.values(resolved, final_logits(logits, batch.last), pair))
    return PathPatchResult(torch.cat(out), {k: seen[k] for k in observe})


def path_patch(
    engine: PatchingEngine,
    senders: Sequence[Head],
    receivers: Receivers = "end",
    *,
    metric: Metric = "normalized_logit_diff",
    direction: Direction = "noising",
    freeze_mlps: bool = False,
    receiver_position: Position = None,
) -> float:
    """Effect of ``senders`` (query heads) on the metric through ``receivers`` only.

    Three-step algorithm of Wang et al. 2022 / Goldowsky-Dill et al. 2023 (see the module
    docstring). ``noising`` (default): base run clean, senders' ``z`` from corrupt, every other
    head's ``z`` frozen to clean; ``denoising`` swaps clean and corrupt.

    Args:
        senders: ``(layer, head)`` query heads whose output is patched (all positions).
        receivers: ``"end"`` (the final residual stream, i.e. the logits) or a list of
            :class:`Receiver` / ``(kind, layer, head)`` with kind ``q``/``k``/``v`` (``head`` a
            kv head for ``k``/``v``). Receivers in layers <= a sender's layer see no change
            from it.
        freeze_mlps: also freeze every MLP output to the base run in step 2 (only direct
            head-to-receiver paths remain); default False (MLPs recomputed, as in Wang et al.).
        receiver_position: patch the receivers at one position only (``"last"`` = the
            final token) instead of all positions.

        metric: a name or a function (:func:`headprobe.metrics.resolve_metric`); a
            function's per-prompt values are aggregated as their mean.

    Returns:
        The aggregated metric (normalised: 1 = unpatched clean behaviour when noising).
    """
    result = path_patch_values(engine, senders, receivers, metric=metric, direction=direction,
                               freeze_mlps=freeze_mlps, receiver_position=receiver_position)
    return engine.aggregate(metric, result.values)


def path_patch_senders(
    engine: PatchingEngine,
    receivers: Receivers = "end",
    *,
    metric: Metric = "normalized_logit_diff",
    direction: Direction = "noising",
    layers: Sequence[int] | None = None,
    freeze_mlps: bool = False,
    receiver_position: Position = None,
    progress: bool = True,
) -> HeadTable:
    """Path-patch every head of ``layers`` (default all) as a single sender.

    One step-2 forward per sender (plus one step-3 forward when receivers are heads). Senders
    in a layer at or after the last receiver layer cannot reach a receiver: their score is the
    unpatched value, filled in without running. Heads of layers not scanned are NaN.

    Returns:
        A :class:`HeadTable`: ``score`` [L, H] the metric, ``effect`` = score - unpatched
        (negative = the sender, through the receivers, supports the clean behaviour, when
        noising the normalised logit difference).
    """
    resolved = resolve_metric(metric)
    spec = engine.spec
    chosen_receivers = _receivers(receivers)
    chosen = spec.check_layers(layers)
    timer = Timer()
    target, _ = direction_runs(direction)
    unpatched = engine.baseline(resolved)[target]
    limit = spec.n_layers if chosen_receivers is None else max(r.layer for r in
                                                               chosen_receivers)
    grid = np.full((spec.n_layers, spec.n_heads), np.nan)
    todo = []
    for layer in chosen:
        for head in range(spec.n_heads):
            if layer >= limit:
                grid[layer, head] = unpatched
            else:
                todo.append((layer, head))
    for layer, head in tqdm(todo, desc="path patching", disable=not progress, leave=False):
        grid[layer, head] = path_patch(engine, [(layer, head)], receivers, metric=resolved,
                                       direction=direction, freeze_mlps=freeze_mlps,
                                       receiver_position=receiver_position)
    shown = "end" if chosen_receivers is None else [
        (r.kind, r.layer, r.head) for r in chosen_receivers]
    meta = patch_meta(engine, "path", "path_patching", resolved, direction, timer,
                      receivers=shown,
                      layers=chosen, freeze_mlps=freeze_mlps,
                      receiver_position=receiver_position)
    return HeadTable.from_grid(grid, spec, columns={"effect": grid - meta["unpatched"]},
                               meta=meta)
