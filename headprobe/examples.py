"""The tiny-model example of a head type: a scorer run whose answer is known exactly.

Every head type (``headprobe/heads/<type>/example.py``, named by its
:class:`~headprobe.registry.HeadType`'s ``example``) returns an :class:`Example`: a tiny
model built in the example, the scorer run on it with its prompts and parameters, and the
answer the scorer must give. The answer is known in one of two ways, said by ``kind``:

- ``"hand-set"``: the weights were set by hand so that the heads' behaviour is known before
  anything runs (e.g. a previous-token head whose rotary query/key product peaks at the
  previous key by 40 logits, so its score is 1 to 1e-12);
- ``"computed"``: the model is a random tiny model and the expected scores were computed in
  the example by an independent route (full attention matrices of the unwrapped Hugging
  Face model, plain loops) that shares no code with the scorer.

:meth:`Example.check` runs the scorer and raises :class:`ExampleMismatch` (one line per
difference) when its table disagrees with the answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from headprobe.headtable import HeadTable
from headprobe.registry import scan
from headprobe.types import Head


class ExampleMismatch(AssertionError):
    """A head type's example gave another answer than the one it declares."""


@dataclass(frozen=True)
class Example:
    """One scorer run on a tiny model with an exactly known answer.

    Attributes:
        head_type: the head type the example belongs to.
        scorer: the registered scorer name run on ``model``.
        model: the tiny bridge the example built (its spec is not needed to score).
        kind: ``"hand-set"`` (weights set by hand) or ``"computed"`` (expected scores
            computed independently in the example); see the module docstring.
        description: one line: what the model is and why the answer is what it is.
        prompts: what the scorer is given as prompts (its task, items, token ids, ...).
        params: the scorer's keyword arguments (``progress=False`` is always added).
        top: the heads the scorer must rank first, in this order, by ``column``.
        scores: exact expected ``column`` values of some heads ``{(layer, head): value}``.
        grid: the exact expected [n_layers, n_heads] ``column`` grid, when every head's
            value is known (``NaN`` entries are not compared).
        rest_below: every head not in ``top`` must score below this, when given.
        column: the table column compared (default ``score``).
        atol: absolute tolerance of every comparison.
    """

    head_type: str
    scorer: str
    model: Any
    kind: Literal["hand-set", "computed"]
    description: str
    prompts: Any = None
    params: Mapping[str, Any] = field(default_factory=dict)
    top: tuple[Head, ...] = ()
    scores: Mapping[Head, float] = field(default_factory=dict)
    grid: np.ndarray | None = None
    rest_below: float | None = None
    column: str = "score"
    atol: float = 1e-6

    def run(self) -> HeadTable:
        """The scorer's table on the example's model, prompts and parameters."""
        return scan(self.model, self.scorer, self.prompts, progress=False, **dict(self.params))

    def check(self, table: HeadTable | None = None) -> HeadTable:
        """Run the scorer (or take its ``table``) and compare it with the known answer.

        Returns:
            The table, when it agrees.

        Raises:
            ExampleMismatch: a listed difference (wrong top heads, a score off by more than
                ``atol``, a head outside ``top`` at or above ``rest_below``).
        """
        if self.kind not in ("hand-set", "computed"):
            raise ExampleMismatch(f"{self.head_type} example: kind must be hand-set or "
                                  f"computed, got {self.kind!r}")
        if not (self.top or self.scores or self.grid is not None):
            raise ExampleMismatch(f"{self.head_type} example declares no answer (top, scores "
                                  "or grid)")
        table = self.run() if table is None else table
        values = table.pivot(self.column).to_numpy(dtype=float)
        problems: list[str] = []
        if self.top:
            order = table.top(len(values.ravel()), by=self.column)
            got = [(int(r.layer), int(r.head)) for r in order.itertuples()][:len(self.top)]
            if got != [tuple(h) for h in self.top]:
                problems.append(f"top heads by {self.column} are {got}, expected "
                                f"{list(self.top)}")
        for (layer, head), expected in self.scores.items():
            value = values[layer, head]
            if not abs(value - expected) <= self.atol:
                problems.append(f"L{layer}H{head} {self.column} = {value:.8g}, expected "
                                f"{expected:.8g} +- {self.atol:g}")
        if self.grid is not None:
            expected = np.asarray(self.grid, dtype=float)
            if expected.shape != values.shape:
                problems.append(f"{self.column} grid has shape {values.shape}, expected "
                                f"{expected.shape}")
            else:
                off = ~np.isnan(expected) & ~(np.abs(values - expected) <= self.atol)
                for layer, head in np.argwhere(off):
                    problems.append(f"L{layer}H{head} {self.column} = "
                                    f"{values[layer, head]:.8g}, computed independently "
                                    f"{expected[layer, head]:.8g} +- {self.atol:g}")
        if self.rest_below is not None:
            named = {tuple(h) for h in self.top}
            for layer, head in np.argwhere(values >= self.rest_below):
                if (int(layer), int(head)) not in named:
                    problems.append(f"L{layer}H{head} {self.column} = "
                                    f"{values[layer, head]:.8g}, expected below "
                                    f"{self.rest_below:g}")
        if problems:
            raise ExampleMismatch(f"{self.head_type} example ({self.scorer} on "
                                  f"{self.description}): " + "; ".join(problems))
        return table


__all__ = ["Example", "ExampleMismatch"]
