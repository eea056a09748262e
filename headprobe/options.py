"""Option records shared by several entry points, each list written once.

- :class:`RunOptions`: how a scorer run is carried out (count, seed, batching, progress,
  checkpoints) — never a scorer parameter; :data:`RUN_OPTIONS` are the keyword names a
  scorer's parameter record may not use (:class:`headprobe.scorers.base.Scorer` refuses them).
- :class:`ScanOptions`: the all-head scan's choices, as :func:`headprobe.fastscan.scan_heads`,
  :func:`~headprobe.fastscan.loop_scan` and :func:`headprobe.distributed.ray_scan` take them.
- :class:`ControlOptions`: the random-head-set controls of an ablation experiment or a dose
  response (:func:`headprobe.experiments.ablation_experiment`,
  :func:`~headprobe.experiments.dose_response`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunOptions:
    """How a scorer run is carried out (the keywords of ``Scorer.__call__`` besides the
    model, the prompts and the scorer's own parameters).

    Attributes:
        n: prompts of the default data (None: the scorer's ``default_n``).
        seed: seed of the default data.
        batch_size: prompts per forward pass.
        progress: show progress bars.
        checkpoint_dir: keep a resumable checkpoint under ``<dir>/.checkpoints/``.
        fresh: discard a stored checkpoint.
        echo: receives the checkpoint's "resuming" lines.
    """

    n: int | None = None
    seed: int = 0
    batch_size: int = 8
    progress: bool = True
    checkpoint_dir: str | Path | None = None
    fresh: bool = False
    echo: Callable[[str], None] | None = None


# keywords of a scorer call that are not scorer parameters
RUN_OPTIONS: frozenset[str] = frozenset(
    {item.name for item in dataclasses.fields(RunOptions)} | {"model", "prompts"})


@dataclass(frozen=True)
class ScanOptions:
    """The choices of an all-head scan (see :func:`headprobe.fastscan.scan_heads`).

    Attributes:
        method: ``patch`` or an ablation (``zero``, ``mean``, ...).
        metric: ``logit_diff`` or ``normalized_logit_diff``.
        direction: ``denoising`` or ``noising`` (patching).
        layers: layers to scan (None: all).
        batch_size: prompts per forward pass.
        heads_per_pass: heads in one batched pass of the fast scan (None: all).
        progress: show progress bars.
    """

    method: str = "patch"
    metric: str = "normalized_logit_diff"
    direction: str = "denoising"
    layers: Sequence[int] | None = None
    batch_size: int = 8
    heads_per_pass: int | None = None
    progress: bool = True

    def loop_kwargs(self) -> dict[str, Any]:
        """Keywords of :func:`~headprobe.fastscan.loop_scan` (no ``heads_per_pass``)."""
        return {"method": self.method, "metric": self.metric, "direction": self.direction,
                "layers": self.layers, "batch_size": self.batch_size,
                "progress": self.progress}

    def kwargs(self) -> dict[str, Any]:
        """Keywords of :func:`~headprobe.fastscan.scan_heads` and
        :func:`headprobe.distributed.ray_scan`."""
        return {**self.loop_kwargs(), "heads_per_pass": self.heads_per_pass}


@dataclass(frozen=True)
class ControlOptions:
    """The random-head-set controls of an ablation experiment or a dose response.

    Attributes:
        n_random: random head sets (of the target's size) to ablate as controls.
        random_from: draw them from the target's layers (``same_layers``) or ``uniform``ly
            (:data:`headprobe.experiments.controls.RandomFrom`).
        n_bootstrap: bootstrap resamples of the prompts for the confidence intervals.
        seed: seed of the random sets and the bootstrap.
        match: with ``random_from = "matched"``, the
            :class:`~headprobe.experiments.matching.MatchOn` the sets are matched on.
    """

    n_random: int = 10
    random_from: str = "same_layers"
    n_bootstrap: int = 1000
    seed: int = 0
    match: Any = None

    def kwargs(self) -> dict[str, Any]:
        """The keywords as the experiment functions take them (``match`` only when set)."""
        out = {item.name: getattr(self, item.name) for item in dataclasses.fields(self)}
        if out["match"] is None:
            del out["match"]
        return out
