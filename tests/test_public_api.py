"""The public face: `import headprobe` is cheap, every public name resolves, notebooks use it."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

import headprobe

ROOT = Path(__file__).resolve().parents[1]

# Heavy modules that `import headprobe` must not import (it imports only headprobe/__init__).
NOT_ON_IMPORT = ("headprobe.fastscan", "headprobe.patching", "headprobe.experiments",
                 "headprobe.models", "headprobe.recipes", "plotly", "peft", "torch",
                 "transformer_lens", "transformers")

# Deep imports a notebook may make besides `headprobe` itself: a head type's own folder (the
# notebook teaches that head type), and internal modules a notebook explicitly teaches.
TAUGHT_MODULES = {
    "headprobe.runtime.observer": "03 teaches the decode-time observer's attention rows",
}


def test_import_headprobe_imports_nothing_heavy():
    code = ("import json, sys; import headprobe; "
            "print(json.dumps(sorted(m for m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    loaded = set(json.loads(out.stdout))
    assert "headprobe" in loaded
    heavy = sorted(m for m in loaded
                   if any(m == name or m.startswith(name + ".") for name in NOT_ON_IMPORT))
    assert heavy == []
    leaves = {"headprobe.version", "headprobe.errors", "headprobe.types"}  # cheap, no torch
    assert sorted(m for m in loaded if m.startswith("headprobe.") and m not in leaves) == []


@pytest.mark.parametrize("name", headprobe.__all__)
def test_every_public_name_resolves(name):
    value = getattr(headprobe, name)
    assert value is not None
    if name == "__version__":
        assert isinstance(value, str) and value
        return
    module, _, attribute = headprobe._PUBLIC[name].partition(":")
    assert value is getattr(importlib.import_module(module), attribute)


def test_all_matches_the_table_and_dir():
    assert headprobe.__all__ == ["__version__", *headprobe._PUBLIC]
    assert len(set(headprobe.__all__)) == len(headprobe.__all__)
    assert set(headprobe.__all__) <= set(dir(headprobe))
    for name in headprobe._PUBLIC:  # every target is written "module:attribute"
        module, sep, attribute = headprobe._PUBLIC[name].partition(":")
        assert sep == ":" and module.startswith("headprobe") and attribute


def test_star_import_gives_every_public_name():
    namespace: dict[str, object] = {}
    exec("from headprobe import *", namespace)
    assert set(headprobe.__all__) <= set(namespace)


def test_docstring_names_every_public_name():
    doc = headprobe.__doc__ or ""
    missing = [name for name in headprobe._PUBLIC if f"`{name}`" not in doc]
    assert missing == []


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        headprobe.no_such_name  # noqa: B018
    # submodules stay importable by their full name
    from headprobe import patching

    assert patching.PatchingEngine is headprobe.PatchingEngine


def test_public_errors_are_headprobe_errors():
    errors = [getattr(headprobe, name) for name in headprobe._PUBLIC
              if headprobe._PUBLIC[name].startswith("headprobe.errors:")]
    assert len(errors) > 10
    assert all(issubclass(error, headprobe.HeadprobeError) for error in errors)


def _notebook_imports(path: Path) -> list[str]:
    modules = []
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.ImportFrom) and node.module:
                modules.append(node.module)
            elif isinstance(node, ast.Import):
                modules.extend(alias.name for alias in node.names)
    return [m for m in modules if m == "headprobe" or m.startswith("headprobe.")]


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")),
                         ids=lambda p: p.stem)
def test_notebooks_import_from_the_public_face(path):
    imports = _notebook_imports(path)
    assert "headprobe" in imports
    deep = [m for m in imports if m != "headprobe" and not m.startswith("headprobe.heads.")
            and m not in TAUGHT_MODULES]
    assert deep == []
