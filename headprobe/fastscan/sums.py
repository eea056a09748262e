"""Additive per-head accumulators of an all-head scan, and the table made from them.

A scan's result is a mean over prompts of per-prompt effects, so every quantity the table
needs is a sum over prompts: per (layer, head) the effect, its square and the intervened
logit difference; per layer the number of prompts and the clean / corrupt / base logit
differences (kept per layer so that a shard scanning only some layers carries its own
counts). Two scans of disjoint prompts, or of the same prompts at disjoint layers, therefore
merge by plain addition (:meth:`ScanSums.merge`), and the merged sums give the same table as
one scan of everything (:func:`scan_table`): what the Ray-sharded scan
(:mod:`headprobe.distributed`) relies on, and what a resumable run checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from headprobe.arch import ModelSpec
from headprobe.errors import MetricError
from headprobe.headtable import HeadTable
from headprobe.provenance import Timer, result_meta

__all__ = ["ScanSums", "merge_sums", "scan_table"]

REFERENCE = ("activation patching: Meng et al. 2022 (ROME); Wang et al. 2022 (IOI); "
             "TransformerLens patching.get_act_patch_attn_head_out_all_pos")

_GRIDS = ("effect", "effect_sq", "value")  # [L, H] float64
_LAYER_SUMS = ("n", "ld_clean", "ld_corrupt", "ld_base")  # [L] float64


@dataclass
class ScanSums:
    """Sums over prompts of one scan (or one shard of it).

    Attributes:
        effect: [L, H] sum over prompts of the per-prompt effect (the metric's value minus
            the base, or the per-prompt normalised ratio).
        effect_sq: [L, H] sum of its squares (for ``std``).
        value: [L, H] sum of the intervened logit differences.
        n: [L] prompts summed at each layer (0: layer not scanned).
        ld_clean, ld_corrupt, ld_base: [L] sums of the clean, corrupt and base (unintervened)
            logit differences over the prompts summed at that layer.
        prefix_lengths: ``{index of a batch's first prompt: shared prefix length P}`` (the
            positions the batch did not rerun; 0 without prefix reuse).
        has_corrupt: whether the prompts had corrupt versions.
    """

    effect: torch.Tensor
    effect_sq: torch.Tensor
    value: torch.Tensor
    n: torch.Tensor
    ld_clean: torch.Tensor
    ld_corrupt: torch.Tensor
    ld_base: torch.Tensor
    prefix_lengths: dict[int, int] = field(default_factory=dict)
    has_corrupt: bool = False

    @classmethod
    def zeros(cls, n_layers: int, n_heads: int, *, has_corrupt: bool) -> ScanSums:
        grid = {name: torch.zeros(n_layers, n_heads, dtype=torch.float64) for name in _GRIDS}
        per_layer = {name: torch.zeros(n_layers, dtype=torch.float64) for name in _LAYER_SUMS}
        return cls(**grid, **per_layer, has_corrupt=has_corrupt)

    @property
    def scanned(self) -> torch.Tensor:
        """[L] bool: layers with at least one prompt."""
        return self.n > 0

    def merge(self, other: ScanSums) -> ScanSums:
        """The sums of both (disjoint prompts, or disjoint layers of the same prompts).

        Raises:
            ValueError: different grid shapes, or one has corrupt prompts and the other not.
        """
        if self.effect.shape != other.effect.shape:
            raise ValueError(f"cannot merge scans of shapes {tuple(self.effect.shape)} and "
                             f"{tuple(other.effect.shape)}")
        if self.has_corrupt != other.has_corrupt:
            raise ValueError("cannot merge a scan with corrupt prompts and one without")
        added = {name: getattr(self, name) + getattr(other, name)
                 for name in (*_GRIDS, *_LAYER_SUMS)}
        return ScanSums(**added, prefix_lengths={**self.prefix_lengths, **other.prefix_lengths},
                        has_corrupt=self.has_corrupt)

    def state(self) -> dict[str, Any]:
        """Plain tensors and containers (for checkpoints and for sending between processes)."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["prefix_lengths"] = {str(k): int(v) for k, v in self.prefix_lengths.items()}
        return out

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ScanSums:
        values = dict(state)
        values["prefix_lengths"] = {int(k): int(v)
                                    for k, v in dict(values["prefix_lengths"]).items()}
        values["has_corrupt"] = bool(values["has_corrupt"])
        return cls(**values)


def merge_sums(parts: Iterable[ScanSums]) -> ScanSums:
    """:meth:`ScanSums.merge` over ``parts`` (at least one)."""
    parts = list(parts)
    if not parts:
        raise ValueError("no scan sums to merge")
    total = parts[0]
    for part in parts[1:]:
        total = total.merge(part)
    return total


def scan_table(sums: ScanSums, spec: ModelSpec, *, metric: str, params: Mapping[str, Any],
               fingerprint: str | None, task: str, batch_size: int,
               timer: Timer | None = None, **meta_extra: Any) -> HeadTable:
    """The scan's :class:`HeadTable` from its sums.

    ``score`` is the mean effect over prompts (``normalized_logit_diff``: ``(mean LD - mean
    LD_corrupt) / (mean LD_clean - mean LD_corrupt)``, normalised on the means), ``std`` the
    spread of the per-prompt effects, ``mean_ld`` the mean intervened logit difference;
    layers not scanned are NaN.

    Raises:
        ValueError: the scanned layers summed different numbers of prompts (a shard missing).
        MetricError: ``normalized_logit_diff`` with equal mean clean and corrupt logit
            differences.
    """
    scanned = sums.scanned
    counts = sorted({int(c) for c in sums.n[scanned].tolist()})
    if not counts:
        raise ValueError("the scan has no scanned layer")
    if len(counts) > 1:
        raise ValueError(f"scanned layers summed different numbers of prompts ({counts}): "
                         "a shard is missing or was merged twice")
    n = counts[0]
    first = int(torch.nonzero(scanned)[0])
    clean_mean = float(sums.ld_clean[first]) / n
    corrupt_mean = float(sums.ld_corrupt[first]) / n if sums.has_corrupt else None
    base_mean = float(sums.ld_base[first]) / n
    mean = sums.effect / n
    std = (sums.effect_sq / n - mean ** 2).clamp_min(0).sqrt()
    mean_ld = sums.value / n
    if metric == "normalized_logit_diff":
        # normalise on the means, as headprobe.patching.aggregate_metric does (Heimersheim &
        # Nanda 2024): per-prompt ratios explode where a prompt's clean-corrupt gap is small.
        # `std` stays the spread of the per-prompt ratios.
        reference = corrupt_mean if corrupt_mean is not None else 0.0
        if abs(clean_mean - reference) < 1e-9:
            raise MetricError(
                f"mean clean and corrupt logit differences are equal ({clean_mean:.4g}): the "
                "normalised logit difference is undefined; use metric='logit_diff'")
        mean = (mean_ld - reference) / (clean_mean - reference)
    nan = torch.full_like(mean, float("nan"))
    keep = scanned[:, None]
    method = params["method"]
    meta = result_meta(
        kind="scan", name=f"{'patch' if method == 'patch' else method + '_ablation'}_{metric}",
        spec=spec, params=dict(params), fingerprint=fingerprint, n_prompts=n,
        timer=timer or Timer(), description=f"all-head {method} scan (all positions), {metric}",
        reference=REFERENCE, task=task, batch_size=batch_size, mean_ld_clean=clean_mean,
        mean_ld_corrupt=corrupt_mean, mean_ld_base=base_mean,
        shared_prefix_lengths=[sums.prefix_lengths[k] for k in sorted(sums.prefix_lengths)],
        **meta_extra)
    return HeadTable.from_grid(
        torch.where(keep, mean, nan).float(), spec,
        columns={"std": torch.where(keep, std, nan).float(),
                 "mean_ld": torch.where(keep, mean_ld, nan).float()},
        meta=meta)
