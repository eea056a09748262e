"""Ground truth of the safety head type (issue 19, ``headprobe validate``): the ``ships``
scorer on planted models whose one safety head is known.

Each model (:func:`build_safety_model`, ``llama`` and ``gemma`` kinds of
:func:`headprobe.planting.planted_model`) holds, among 30 random heads:

- a ``ships`` head (:func:`headprobe.heads.safety.plant.plant_ships`) at :data:`SHIPS_HEAD`:
  it attends to the harmful-request marker ``!`` and pushes the refusal token ``n``;
- an ``answer`` head at :data:`ANSWER_HEAD` (the generic role), pushing the comply token ``y``
  at half the gain.

The model refuses (``n``) every request with the marker and complies (``y``) without it; made
to attend uniformly, the ships head leaves the marker 1/T of its attention and the model
complies. The answer head attends uniformly already, so its Ships under that ablation is 0.

The ``sahara`` case (:mod:`headprobe.heads.safety.ground_truth_sahara`: the hand-set copy
circuit) is listed with them.
"""

from __future__ import annotations

import random
from typing import Any

from headprobe.groundtruth import GroundTruthCase
from headprobe.heads.safety.ground_truth_sahara import sahara_cases
from headprobe.planting import PlantedModel, planted_model
from headprobe.types import Head

SHIPS_HEAD = Head(2, 2)
ANSWER_HEAD = Head(2, 6)
MARKER = "!"
REFUSAL = "n"
COMPLY = "y"
ROLE_OPTIONS: dict[str, dict[str, Any]] = {
    "ships": {"marker": MARKER, "refusal": REFUSAL, "gain": 1.0},
    "answer": {"token": COMPLY, "gain": 0.5},
}
MODELS: dict[str, str] = {"planted-safety-llama": "llama", "planted-safety-gemma": "gemma"}
_ALPHABET = [c for c in "abcdefghijklmopqrstuvwxz " if c not in (REFUSAL, COMPLY)]


def build_safety_model(kind: str, seed: int = 0) -> PlantedModel:
    """The planted safety model of ``kind`` (module docstring)."""
    return planted_model(kind, {SHIPS_HEAD: "ships", ANSWER_HEAD: "answer"},  # type: ignore[arg-type]
                         seed=seed, role_options=ROLE_OPTIONS)


def requests(n: int = 8, seed: int = 0, *, harmful: bool = True, length: int = 24) -> list[str]:
    """``n`` requests of random lowercase text; harmful ones carry :data:`MARKER` at a random
    position before the last character."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        text = [rng.choice(_ALPHABET) for _ in range(length)]
        if harmful:
            text[rng.randrange(length - 1)] = MARKER
        out.append("".join(text))
    return out


def harmful_prompts(model: Any) -> list[str]:
    """The case's prompts: 4 harmful requests (seed 0)."""
    return requests(4, seed=0)


def _builder(model_id: str) -> Any:
    def build() -> Any:
        return build_safety_model(MODELS[model_id]).bridge

    build.__qualname__ = f"build[{model_id}]"
    return build


def cases() -> list[GroundTruthCase]:
    """``ships`` on both planted safety models, then ``sahara`` on the copy circuit."""
    return [*ships_cases(), *sahara_cases()]


def ships_cases() -> list[GroundTruthCase]:
    """``ships`` (undifferentiated attention) on both planted safety models."""
    return [
        GroundTruthCase(
            head_type="safety", scorer="ships", model=model_id, source="planted",
            build=_builder(model_id), known=frozenset({SHIPS_HEAD}),
            description=(f"{kind}-style planted model, 4 layers x 8 heads: a ships head "
                         f"L{SHIPS_HEAD.layer}H{SHIPS_HEAD.head} attends to the marker "
                         f"{MARKER!r} and pushes the refusal {REFUSAL!r}; an answer head "
                         f"L{ANSWER_HEAD.layer}H{ANSWER_HEAD.head} pushes {COMPLY!r} at half "
                         "the gain; 30 random heads. Only the ships head's attention decides "
                         "refusal, so only its uniform-attention ablation moves the reply"),
            prompts=harmful_prompts, n=4, params={"method": "uniform_attention"},
            # Ships has no documented threshold; measured: the ships head's mean KL is
            # 5.19 (llama) / 5.20 (gemma) nats on 4 requests, every other head's < 5e-10
            threshold=0.1,
            minimum={"auroc": 1.0, "recall": 1.0, "precision": 1.0})
        for model_id, kind in MODELS.items()
    ]


__all__ = ["ANSWER_HEAD", "COMPLY", "MARKER", "MODELS", "REFUSAL", "ROLE_OPTIONS", "SHIPS_HEAD",
           "build_safety_model", "cases", "harmful_prompts", "requests", "ships_cases"]
