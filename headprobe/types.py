"""The vocabulary every module shares: heads, kv heads, edges, spans, directions, methods,
metric names and the ablation scale ``DEFAULT_EPS``.

Small frozen records and literal types only; no torch, no model. A ``Head`` is a named
``(layer, head)`` tuple (a query head): it equals the plain tuple, so lists of heads stay easy
to write by hand, and every public function that returns heads returns ``Head`` s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple, get_args


class Head(NamedTuple):
    """A query head: ``(layer, head)``. Under GQA query head h reads kv head h // (H // H_kv)."""

    layer: int
    head: int


HeadList = list[Head]

# A pixel box (x0, y0, x1, y1) of an image, exclusive ends: columns x0..x1-1, rows y0..y1-1.
Box = tuple[int, int, int, int]


class KVHead(NamedTuple):
    """A key/value head: ``(layer, kv_head)``; it serves ``H / H_kv`` query heads."""

    layer: int
    kv_head: int


@dataclass(frozen=True)
class Edge:
    """A computational-graph edge from an upstream writer to a downstream reader.

    Names follow :mod:`headprobe.attribution`: upstream ``embed``, ``a{l}.h{h}``, ``m{l}``;
    downstream ``a{l}.h{h}.q``, ``a{l}.kv{g}.k``, ``a{l}.kv{g}.v``, ``m{l}``, ``logits``.
    """

    upstream: str
    downstream: str


@dataclass(frozen=True)
class Span:
    """A named half-open range ``[start, stop)`` of absolute positions within one prompt.

    ``grid``: for image patches, the ``(rows, cols)`` of the patch grid laid out row-major
    over the span (``None`` for text spans).
    """

    start: int
    stop: int
    grid: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.stop:
            raise ValueError(f"a span needs 0 <= start <= stop, got [{self.start}, {self.stop})")
        if self.grid is not None and self.grid[0] * self.grid[1] != self.stop - self.start:
            raise ValueError(f"grid {self.grid} does not cover {self.stop - self.start} patches")

    def __len__(self) -> int:
        return self.stop - self.start

    def positions(self) -> range:
        return range(self.start, self.stop)

    def shifted(self, offset: int) -> Span:
        return Span(self.start + offset, self.stop + offset, self.grid)

    def patch_coordinates(self, position: int) -> tuple[int, int]:
        """``(row, col)`` of the image patch at absolute ``position`` (grid spans only)."""
        if self.grid is None:
            raise ValueError("this span has no patch grid")
        if position not in self.positions():
            raise ValueError(f"position {position} lies outside [{self.start}, {self.stop})")
        return divmod(position - self.start, self.grid[1])


# Patching directions: denoising = run corrupt, write clean activations (sufficiency);
# noising = run clean, write corrupt ones (necessity). One spelling everywhere.
Direction = Literal["denoising", "noising"]
DIRECTIONS: tuple[Direction, ...] = ("denoising", "noising")

# Which run of a clean/corrupt pair.
Which = Literal["clean", "corrupt"]

# Ablation and steering methods of headprobe.interventions (its METHODS table has one entry
# for each, checked by a test).
Method = Literal["zero", "mean", "resample", "uniform_attention", "scale_output", "scale_value",
                 "add_to_output", "set_pattern", "redistribute_sink", "streaming_attention"]

# What a fast all-head scan (headprobe.fastscan) does to each head: "patch" (z from the other
# run of the pair) or one of the interventions' ablations, run as stacked copies. The two
# scaling ablations multiply by ``eps``.
ScanMethod = Literal["patch", "zero", "mean", "scale_output", "uniform_attention"]
SCAN_METHODS: tuple[ScanMethod, ...] = get_args(ScanMethod)
SCALING_METHODS: tuple[ScanMethod, ...] = ("scale_output", "uniform_attention")

# Metric names of the patching engines, scans and experiments (headprobe.metrics; a metric
# may also be a function, see headprobe.metrics.Metric). The fast scans compute logit
# differences only.
MetricName = Literal["logit_diff", "normalized_logit_diff", "kl", "probability"]
METRICS: tuple[MetricName, ...] = get_args(MetricName)
ScanMetric = Literal["logit_diff", "normalized_logit_diff"]
SCAN_METRICS: tuple[ScanMetric, ...] = get_args(ScanMetric)

# The default scale of the Ships ablations (Zhou et al. 2025, "On the Role of Attention Heads
# in Large Language Model Safety": eps 1e-4 .. 1e-5): undifferentiated attention
# (``uniform_attention``) multiplies a head's query by it, scaling contribution
# (``scale_output``) its output z; every intervention and fast scan defaults to it. At 1e-5
# the pattern is uniform to 1e-5 on the tiny test models, which the tests check. The ``ships``
# and ``sahara`` scorers pass eps = 1e-4 (their parameter default: the reference code's
# ``scale_factor``), with which the Ships numbers in README and bench/RESULTS.md were measured.
DEFAULT_EPS = 1e-5

# A token position: an absolute index within each prompt (BOS = 0), "last" (each prompt's
# last real token) or None (every position).
Position = int | Literal["last"] | None

# What a scorer may need beyond a forward pass (read by the atlas and the CLI).
Need = Literal["generation", "chat_template", "images", "gpu", "pairs"]


def normalize_direction(direction: str) -> Direction:
    """``denoising`` / ``noising``; ``ValueError`` for anything else."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'denoising' or 'noising', got {direction!r}")
    return direction  # type: ignore[return-value]


def direction_runs(direction: str) -> tuple[Which, Which]:
    """``(target, source)`` runs of a direction: denoising runs corrupt with clean sources."""
    return ("corrupt", "clean") if normalize_direction(direction) == "denoising" else (
        "clean", "corrupt")
