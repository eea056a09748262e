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
