"""Every head type in ``registry.HEAD_TYPES`` is one complete folder: its scorer(s), task(s),
recipe, notebook and a tiny-model example whose exactly known answer the scorer gives; no head
type imports another, and the generic layers name none."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from headprobe import registry
from headprobe.examples import Example, ExampleMismatch
from headprobe.recipes import load_recipe

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "headprobe"
HEADS = PACKAGE / "heads"
# Head types whose recipe is not shipped yet, and why (each is a TOML to add, not a waiver).


def _declared() -> dict[str, registry.HeadType]:
    return registry.head_types()


@pytest.mark.parametrize("name", registry.HEAD_TYPES)
def test_folder_declares_a_complete_head_type(name):
    head_type = _declared()[name]
    assert (HEADS / name / "__init__.py").is_file()
    assert head_type.summary and head_type.scorers, f"{name} declares no scorer"
    for scorer, module in head_type.scorers.items():
        assert module.startswith(f"headprobe.heads.{name}."), module
        assert registry.scorer_modules()[scorer] == module
        assert registry.get_scorer(scorer).name == scorer
    for task, module in head_type.tasks.items():
        assert module.startswith(f"headprobe.heads.{name}."), module
        assert registry.task_modules()[task] == module
        assert callable(registry.task_maker(task))
    for kind, target in head_type.steps.items():
        assert target.startswith(f"headprobe.heads.{name}.")
        step_kind = registry.resolve(target)
        assert step_kind.name == kind and callable(step_kind.run) and callable(step_kind.check)
    for model, target in head_type.models.items():
        assert target.startswith(f"headprobe.heads.{name}.")
        source = registry.resolve(target)
        assert source.name == model and callable(source.load) and callable(source.status)
    assert head_type.notebook and (ROOT / head_type.notebook).is_file()


@pytest.mark.parametrize("name", registry.HEAD_TYPES)
def test_recipes_scan_the_head_type(name):
    head_type = _declared()[name]
    assert head_type.recipes, f"{name} ships no recipe"
    scanned = set()
    for path in head_type.recipes:
        assert path.endswith(".toml") and (ROOT / path).is_file(), path
        recipe = load_recipe(ROOT / path)
        scanned |= {step.options.get("scorer") for step in recipe.steps if step.kind == "scan"}
    assert scanned & set(head_type.scorers), f"no {name} recipe scans one of its scorers"


@pytest.fixture(scope="module")
def examples():
    """Each head type's example, built once."""
    built: dict[str, Example] = {}

    def get(name: str) -> Example:
        if name not in built:
            built[name] = registry.resolve(_declared()[name].example)()
        return built[name]

    return get


@pytest.mark.parametrize("name", registry.HEAD_TYPES)
def test_example_gives_its_exactly_known_answer(name, examples):
    head_type = _declared()[name]
    assert head_type.example == f"headprobe.heads.{name}.example:example"
    example = examples(name)
    assert isinstance(example, Example) and example.head_type == name
    assert example.scorer in head_type.scorers
    assert example.kind in ("hand-set", "computed")
    assert example.top or example.scores or example.grid is not None
    example.check()


def test_a_wrong_answer_is_reported(examples):
    example = examples("induction")
    table = example.run()
    (head,) = example.top
    wrong = dataclasses.replace(example, scores={head: 0.5}, top=((0, 1),))
    with pytest.raises(ExampleMismatch, match=r"top heads .* expected \[\(0, 1\)\].*"
                                              r"L1H2 score = 1, expected 0.5"):
        wrong.check(table)
    grid = table.pivot().to_numpy().copy()
    grid[0, 3] += 0.01
    with pytest.raises(ExampleMismatch, match="L0H3 score"):
        dataclasses.replace(example, top=(), scores={}, grid=grid).check(table)
    with pytest.raises(ExampleMismatch, match=r"L1H2 score = 1, expected below 0\.5"):
        dataclasses.replace(example, top=(), rest_below=0.5).check(table)


def _imported(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (function bodies included), absolute."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] \
                if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            names.add(module)
            names |= {f"{module}.{alias.name}" for alias in node.names}
    return names


@pytest.mark.parametrize("name", registry.HEAD_TYPES)
def test_head_types_never_import_each_other(name):
    others = [other for other in registry.HEAD_TYPES if other != name]
    sideways = re.compile(rf"^headprobe\.heads\.({'|'.join(others)})(\.|$)")
    for path in sorted((HEADS / name).rglob("*.py")):
        bad = sorted(m for m in _imported(path) if sideways.match(m))
        assert not bad, f"{path.relative_to(ROOT)} imports another head type: {bad}"


def test_generic_modules_name_no_head_type():
    """Outside ``headprobe/heads`` and the registry, no module imports or names a head type's
    module (docstrings included): the generic layers reach head types through the registry."""
    mention = re.compile(rf"headprobe[./]heads[./]({'|'.join(registry.HEAD_TYPES)})\b")
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if HEADS in path.parents or path == PACKAGE / "registry.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if mention.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}")
    assert not found, f"generic modules name a head type's module: {found}"
