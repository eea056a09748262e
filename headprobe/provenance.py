"""The one metadata builder: what every saved result records about how it was made.

Every result (HeadTable, ablation experiment, attribution result, atlas, recipe summary)
calls :func:`result_meta`, so each records the same keys: ``kind`` and ``name`` of the
result, ``model`` and ``model_spec`` (dtype and device included), ``params``,
``data_fingerprint``, ``n_prompts``, ``seed``, ``headprobe_version``, ``torch_version``,
``created`` (UTC) and ``timings_s``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from headprobe.arch import ModelSpec
from headprobe.version import __version__


def headprobe_version() -> str:
    """The installed headprobe version (package metadata, :mod:`headprobe.version`)."""
    return __version__


class Timer:
    """Named laps since creation: ``timer.lap("prepare")``; ``timer.timings()`` -> seconds."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.last = self.started
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.last, 3)
        self.last = now

    def timings(self) -> dict[str, float]:
        return {**self.laps, "total": round(time.perf_counter() - self.started, 3)}


def result_meta(
    *,
    kind: str,
    name: str,
    spec: ModelSpec,
    params: Mapping[str, Any] | None = None,
    fingerprint: str | None = None,
    n_prompts: int | None = None,
    seed: int | None = None,
    timer: Timer | None = None,
    description: str = "",
    reference: str = "",
    **extra: Any,
) -> dict[str, Any]:
    """Metadata of one result.

    Args:
        kind: what produced it (``scorer``, ``patching``, ``scan``, ``attribution``,
            ``experiment``, ``atlas``, ``recipe``).
        name: the scorer / experiment name (also the file stem of a saved HeadTable, under
            the key ``scorer`` for backward compatibility of saved tables).
        spec: the model's :class:`ModelSpec`.
        params: the parameters the result depends on.
        fingerprint: sha256 prefix of the tokenized data (:func:`headprobe.inputs.fingerprint`).
        timer: a :class:`Timer` started when the work began.
        extra: result-specific keys (baselines, summaries...).
    """
    import torch

    meta: dict[str, Any] = {
        "kind": kind,
        "scorer": name,
        "description": description,
        "reference": reference,
        "model": spec.name,
        "model_spec": spec.to_dict(),
        "dtype": spec.dtype,
        "device": spec.device,
        "params": dict(params or {}),
        "data_fingerprint": fingerprint,
        "n_prompts": n_prompts,
        "seed": seed,
        "headprobe_version": headprobe_version(),
        "torch_version": torch.__version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "timings_s": timer.timings() if timer is not None else {},
    }
    meta.update(extra)
    return meta
