from pathlib import Path

import pytest

from headprobe.errors import RecipeError, UnknownScorerError
from headprobe.recipes import load_recipe

RECIPES = sorted(Path("recipes").glob("*.toml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_parse(path):
    recipe = load_recipe(path)
    assert recipe.scans and recipe.model


def test_recipe_errors(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(bad)
    empty = tmp_path / "empty.toml"
    empty.write_text('name = "x"\n')
    with pytest.raises(RecipeError, match="no \\[\\[scan\\]\\]"):
        load_recipe(empty)
    typo = tmp_path / "typo.toml"
    typo.write_text('[[scan]]\nscorer = "induction"\nseeed = 1\n')
    with pytest.raises(RecipeError, match="may have only"):
        load_recipe(typo)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('[[scan]]\nscorer = "inductionn"\n')
    with pytest.raises(UnknownScorerError):
        load_recipe(unknown)


def test_recipe_resumes_steps_and_batches(tiny_llama, tmp_path, monkeypatch):
    """A recipe killed in its second step's second batch, run again, skips the finished step,
    resumes the second one at batch 1, and writes what an uninterrupted run writes."""
    import json

    import pandas as pd

    from headprobe.checkpoint import Checkpoint
    from headprobe.recipes import run_recipe

    model, _ = tiny_llama
    path = tmp_path / "two.toml"
    path.write_text('name = "two"\nmodel = "tiny:llama-gqa"\n'
                    '[[scan]]\nscorer = "previous_token"\nn = 2\nparams = { seq_len = 8 }\n'
                    '[[scan]]\nscorer = "induction"\nn = 3\nbatch_size = 1\n'
                    'params = { seq_len = 8 }\n[report]\ntop = 3\n')
    recipe = load_recipe(path)
    reference = run_recipe(recipe, model, tmp_path / "reference", progress=False,
                           echo=lambda line: None)

    class Killed(Exception):
        pass

    original = Checkpoint.save
    saves: list[str] = []
    kill = [True]

    def save(self, state, progress=""):
        original(self, state, progress)
        saves.append(self.name)
        if self.name == "induction" and kill[0]:
            kill[0] = False
            raise Killed  # killed after the first induction batch

    monkeypatch.setattr(Checkpoint, "save", save)
    out = tmp_path / "run"
    with pytest.raises(Killed):
        run_recipe(recipe, model, out, progress=False, echo=lambda line: None)
    assert set(json.loads((out / "summary.json").read_text())["scans"]) == {"previous_token"}
    saves.clear()
    lines: list[str] = []
    tables = run_recipe(recipe, model, out, progress=False, echo=lines.append)
    assert any(line.startswith("previous_token: step already done") for line in lines)
    assert any("induction: resuming" in line and "batch 1 of 3 done" in line for line in lines)
    assert saves == ["induction", "induction"]  # previous_token not rerun; 2 batches left
    for name, table in tables.items():
        pd.testing.assert_frame_equal(table.to_frame(), reference[name].to_frame(),
                                      check_exact=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads((tmp_path / "reference" / "summary.json").read_text())
    assert not (out / ".checkpoints").exists()
