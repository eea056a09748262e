"""Activation patching of every head: all positions (-> HeadTable) or one position at a time.

Per-(layer, head) loops of :class:`~headprobe.patching.engine.PatchingEngine` runs, one forward
pass each (Meng et al. 2022, "Locating and Editing Factual Associations in GPT"; Heimersheim &
Nanda 2024, "How to use and interpret activation patching"). They are deliberately simple: the
reference that :mod:`headprobe.fastscan` is checked against.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from headprobe.arch import ModelSpec
from headprobe.errors import HeadIndexError, PromptPairError
from headprobe.headtable import HeadTable
from headprobe.metrics import Metric, resolve_metric
from headprobe.patching.engine import PatchingEngine, patch_meta
from headprobe.patching.setters import head_q, head_z
from headprobe.provenance import Timer
from headprobe.types import Direction, direction_runs


def activation_patch_heads(
    engine: PatchingEngine,
    *,
    metric: Metric = "normalized_logit_diff",
    direction: Direction = "denoising",
    component: Literal["z", "q"] = "z",
    layers: Sequence[int] | None = None,
    progress: bool = True,
) -> HeadTable:
    """Patch each head's ``z`` (or query) at all positions, one forward per (layer, head).

    ``denoising``: run corrupt, write the head's clean activation; ``noising``: run clean,
    write the corrupt one. Reference: TransformerLens ``get_act_patch_attn_head_out_all_pos``.

    Returns:
        A :class:`HeadTable`: ``score`` [L, H] is the metric after patching the head,
        ``effect`` = score - the unpatched target run's metric (0 = no effect). Heads in
        layers not scanned are NaN. Metadata: baselines, direction, metric, timings.
    """
    resolved = resolve_metric(metric)
    if component not in ("z", "q"):
        raise ValueError(f"component must be 'z' or 'q', got {component!r}")
    target, source = direction_runs(direction)
    spec = engine.spec
    chosen = spec.check_layers(layers)
    timer = Timer()
    engine.cache(source, [spec.hooks.at(component, layer) for layer in chosen])
    grid = np.full((spec.n_layers, spec.n_heads), np.nan)
    make = head_z if component == "z" else head_q
    todo = [(layer, head) for layer in chosen for head in range(spec.n_heads)]
    for layer, head in tqdm(todo, desc=f"patching {component}", disable=not progress,
                            leave=False):
        grid[layer, head] = engine.run([make(spec, layer, head)], target=target, source=source,
                                       metric=resolved)
    meta = patch_meta(engine, "activation", "activation_patching", resolved, direction, timer,
                      component=component, layers=chosen, positions="all")
    return HeadTable.from_grid(grid, spec, columns={"effect": grid - meta["unpatched"]},
                               meta=meta)


def activation_patch_heads_by_position(
    engine: PatchingEngine,
    *,
    metric: Metric = "normalized_logit_diff",
    direction: Direction = "denoising",
    component: Literal["z", "q"] = "z",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Patch each head's ``z`` (or query) at one position at a time.

    Needs every prompt pair to have the same token length (positions must mean the same
    thing across prompts): e.g. IOI items of one template.

    Reference: TransformerLens ``get_act_patch_attn_head_out_by_pos``.

    Returns:
        A long DataFrame, one row per (layer, head, position): ``layer``, ``head``,
        ``kv_head``, ``position``, ``token`` (the first clean prompt's token there),
        ``score`` (metric after patching) and ``effect`` (score - unpatched). ``attrs`` holds
        the metadata; :func:`position_grid` turns it into an [L, H, T] array.
    """
    resolved = resolve_metric(metric)
    target, source = direction_runs(direction)
    spec = engine.spec
    lengths = set(engine.seq_lens)
    if len(lengths) != 1:
        raise PromptPairError(
            f"per-position patching needs all prompts to have the same token length; got "
            f"lengths {sorted(lengths)}. Use prompts of one template (e.g. ioi template=0)")
    n_tokens = lengths.pop()
    chosen = spec.check_layers(layers)
    pos_list = list(range(n_tokens)) if positions is None else list(positions)
    for pos in pos_list:
        if not 0 <= pos < n_tokens:
            raise HeadIndexError(f"position {pos} is outside prompts of {n_tokens} tokens")
    timer = Timer()
    make = head_z if component == "z" else head_q
    engine.cache(source, [spec.hooks.at(component, layer) for layer in chosen])
    tokens = [engine.model.tokenizer.decode([int(t)]) for t in engine.clean_tokens[0]]
    rows = []
    todo = [(layer, head, pos) for layer in chosen for head in range(spec.n_heads)
            for pos in pos_list]
    for layer, head, pos in tqdm(todo, desc=f"patching {component} by position",
                                 disable=not progress, leave=False):
        score = engine.run([make(spec, layer, head, position=pos)], target=target,
                           source=source, metric=resolved)
        rows.append((layer, head, spec.kv_head(head), pos, tokens[pos], score))
    frame = pd.DataFrame(rows, columns=["layer", "head", "kv_head", "position", "token", "score"])
    meta = patch_meta(engine, "activation", "activation_patching_by_position", resolved,
                      direction, timer, component=component, layers=chosen, positions=pos_list)
    frame["effect"] = frame["score"] - meta["unpatched"]
    meta["n_tokens"] = n_tokens
    frame.attrs = meta
    return frame


def position_grid(frame: pd.DataFrame, value: str = "score",
                  spec: ModelSpec | None = None) -> np.ndarray:
    """[L, H, T] array from :func:`activation_patch_heads_by_position` (NaN where not run)."""
    n_layers = spec.n_layers if spec else int(frame["layer"].max()) + 1
    n_heads = spec.n_heads if spec else int(frame["head"].max()) + 1
    n_tokens = int(frame.attrs.get("n_tokens", int(frame["position"].max()) + 1))
    grid = np.full((n_layers, n_heads, n_tokens), np.nan)
    grid[frame["layer"].to_numpy(), frame["head"].to_numpy(),
         frame["position"].to_numpy()] = frame[value].to_numpy()
    return grid


def unpatched_value(engine: PatchingEngine, metric: Metric, direction: Direction) -> float:
    """The metric on the unpatched target run of ``direction``."""
    target, _ = direction_runs(direction)
    return engine.baseline(metric)[target]
