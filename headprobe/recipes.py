"""Scripted head-discovery recipes: small TOML files that the CLI runs.

A recipe names a model, the scans to run and what to report::

    name = "induction-heads"
    description = "..."
    model = "smollm2-135m-instruct"

    [[scan]]
    scorer = "induction"
    n = 32
    seed = 0
    params = { seq_len = 50 }

    [report]
    top = 10
    threshold = 0.5

Running it writes each table under ``<out>/<scorer>/`` and a ``summary.json`` with the top
heads and the number of heads above the threshold. A recipe killed half-way and run again with
the same arguments skips the steps already done under the same run key and resumes the
interrupted step per batch where its scorer can (:mod:`headprobe.checkpoint`).
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headprobe.checkpoint import saved_table_matches
from headprobe.errors import RecipeError
from headprobe.headtable import HeadTable, ensure_output_dir, write_json
from headprobe.registry import get_scorer

_SCAN_KEYS = {"scorer", "n", "seed", "batch_size", "params"}


@dataclass
class Recipe:
    name: str
    description: str
    model: str
    scans: list[dict[str, Any]]
    report: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def load_recipe(path: str | Path) -> Recipe:
    """Parse and validate a recipe file; :class:`RecipeError` says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise RecipeError(f"recipe {path} is not valid TOML: {error}") from error
    scans = raw.get("scan")
    if not isinstance(scans, list) or not scans:
        raise RecipeError(f"recipe {path} has no [[scan]] steps")
    for index, step in enumerate(scans):
        unknown = set(step) - _SCAN_KEYS
        if "scorer" not in step or unknown:
            raise RecipeError(
                f"recipe {path}: scan step {index} needs 'scorer' and may have only "
                f"{sorted(_SCAN_KEYS)}; got {sorted(step)}"
            )
        get_scorer(step["scorer"])  # unknown scorer -> UnknownScorerError now, not mid-run
    return Recipe(
        name=str(raw.get("name", path.stem)),
        description=str(raw.get("description", "")),
        model=str(raw.get("model", "smollm2-135m-instruct")),
        scans=scans,
        report=dict(raw.get("report", {})),
        path=path,
    )


def run_recipe(
    recipe: Recipe,
    model: Any,
    out_dir: str | Path,
    *,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    fresh: bool = False,
) -> dict[str, HeadTable]:
    """Run every scan of ``recipe`` on ``model``; save tables and ``summary.json``.

    Resumable: a step whose table is already saved under ``<out_dir>/<scorer>/`` with the same
    run key (:func:`headprobe.checkpoint.saved_table_matches`) is loaded instead of run (and
    ``echo`` says so), and a step whose scorer resumes per batch keeps its checkpoint under
    ``<out_dir>/.checkpoints/``; ``fresh`` recomputes every step.
    """
    folder = ensure_output_dir(out_dir)
    top = int(recipe.report.get("top", 10))
    threshold = recipe.report.get("threshold")
    tables: dict[str, HeadTable] = {}
    summary: dict[str, Any] = {"recipe": recipe.name, "description": recipe.description,
                               "model": recipe.model, "scans": {}}
    for step in recipe.scans:
        scorer = get_scorer(step["scorer"])
        run = scorer.plan(model, n=step.get("n"), seed=int(step.get("seed", 0)),
                          batch_size=int(step.get("batch_size", 8)), **step.get("params", {}))
        saved = folder / scorer.name
        if not fresh and saved_table_matches(saved, run.key, name=scorer.name,
                                             fields=run.key_fields, echo=echo):
            echo(f"{scorer.name}: step already done (same run key, table in {saved}); skipped")
            table = HeadTable.load(saved, scorer=scorer.name)
        else:
            table = run.run(progress=progress, checkpoint_dir=folder, fresh=fresh, echo=echo)
            table.save(saved)
        tables[scorer.name] = table
        best = table.top(top)[["layer", "head", "score"]]
        entry: dict[str, Any] = {"top": best.to_dict(orient="records")}
        if threshold is not None:
            entry["threshold"] = threshold
            entry["n_above_threshold"] = int((table["score"] > threshold).sum())
        summary["scans"][scorer.name] = entry
        echo(f"{scorer.name}: top {top} heads\n{best.to_string(index=False)}")
        if threshold is not None:
            echo(f"{entry['n_above_threshold']} of {len(table)} heads score above {threshold}")
        write_json(folder / "summary.json", summary)  # after every step: nothing lost
    return tables
