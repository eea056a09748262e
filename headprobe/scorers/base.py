"""The one scorer signature and the bookkeeping every scorer shares.

A scorer is a :class:`Scorer` record in its own module. Calling it::

    table = scorer(model, prompts=None, n=None, seed=0, batch_size=8, progress=True, **params)

checks the model and parameters, builds the scorer's default data when no prompts are
given, times the run and wraps the result in a :class:`~headprobe.headtable.HeadTable`
whose metadata records the model, the parameters, a fingerprint of the data, the seed and
the headprobe version.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import torch

from headprobe.arch import ModelSpec
from headprobe.errors import NonCausalModelError
from headprobe.headtable import HeadTable
from headprobe.models import describe_model


@dataclass
class ScoreResult:
    """What a scorer's ``compute`` returns.

    Attributes:
        score: [L, H] the head score.
        columns: extra [L, H] columns for the table.
        meta: extra metadata (e.g. counts, thresholds, per-domain summaries).
    """

    score: torch.Tensor
    columns: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScorerData:
    """The prepared data of one run: whatever ``compute`` needs, plus a fingerprint."""

    payload: Any
    fingerprint: str
    n_prompts: int
    description: str


# prepare(model, spec, prompts_or_None, n, seed, params) -> ScorerData
Prepare = Callable[[Any, ModelSpec, Any, int, int, dict[str, Any]], ScorerData]
# compute(model, spec, data, params, batch_size, progress) -> ScoreResult
Compute = Callable[[Any, ModelSpec, ScorerData, dict[str, Any], int, bool], ScoreResult]


@dataclass(frozen=True)
class Scorer:
    """A registered head scorer.

    Attributes:
        name: registry name (also the file stem of saved results).
        description: one line for ``headprobe`` listings and reports.
        reference: the paper or source that defines the score.
        prepare: builds the default data (or tokenizes the given prompts).
        compute: runs the model and returns a :class:`ScoreResult`.
        defaults: default values of the scorer's own parameters.
        default_n: default number of prompts.
        requires_causal: refuse encoder (non-causal) models.
        cheap: cheap enough on a CPU to run in ``headprobe atlas``.
    """

    name: str
    description: str
    reference: str
    prepare: Prepare
    compute: Compute
    defaults: Mapping[str, Any] = field(default_factory=dict)
    default_n: int = 32
    requires_causal: bool = True
    cheap: bool = True

    def __call__(
        self,
        model: Any,
        prompts: Any = None,
        *,
        n: int | None = None,
        seed: int = 0,
        batch_size: int = 8,
        progress: bool = True,
        **params: Any,
    ) -> HeadTable:
        spec = describe_model(model)
        if self.requires_causal and not spec.causal:
            raise NonCausalModelError(
                f"scorer {self.name!r} needs a causal (decoder) model; {spec.name} "
                f"({spec.model_type}) is an encoder"
            )
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            known = ", ".join(sorted(self.defaults)) or "none"
            raise TypeError(
                f"scorer {self.name!r} got unknown parameters {unknown}; known: {known}")
        if n is not None and n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        merged = {**self.defaults, **params}
        started = time.perf_counter()
        data = self.prepare(model, spec, prompts, n or self.default_n, seed, merged)
        prepared = time.perf_counter()
        result = self.compute(model, spec, data, merged, batch_size, progress)
        finished = time.perf_counter()
        meta = {
            "scorer": self.name,
            "description": self.description,
            "reference": self.reference,
            "model": spec.name,
            "model_spec": spec.to_dict(),
            "params": merged,
            "seed": seed,
            "batch_size": batch_size,
            "n_prompts": data.n_prompts,
            "data": data.description,
            "data_fingerprint": data.fingerprint,
            "headprobe_version": headprobe_version(),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "timings_s": {
                "prepare": round(prepared - started, 3),
                "compute": round(finished - prepared, 3),
                "total": round(finished - started, 3),
            },
            **result.meta,
        }
        return HeadTable.from_grid(result.score, spec, columns=result.columns, meta=meta)


def headprobe_version() -> str:
    """The installed headprobe version, for result metadata."""
    from headprobe import __version__

    return __version__
