"""One spelling per idea: the shared vocabulary of headprobe.types, one eps, one version,
unknown names as UnknownNameError, no private names across modules."""

from __future__ import annotations

import ast
import inspect
import tomllib
from pathlib import Path
from typing import get_args

import pytest

import headprobe
from headprobe import types
from headprobe.errors import (
    HeadprobeError,
    InterventionError,
    RecipeError,
    UnknownMethodError,
    UnknownMetricError,
    UnknownModelError,
    UnknownNameError,
)

ROOT = Path(__file__).resolve().parents[1]


def test_version_is_written_once():
    from headprobe.provenance import headprobe_version

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert headprobe.__version__ == headprobe_version() == declared
    assert "__version__ =" not in (ROOT / "headprobe" / "__init__.py").read_text()


def test_one_eps_is_every_default():
    from headprobe import fastscan, interventions
    from headprobe.fastscan.copies import copies_hook
    from headprobe.fastscan.patching import loop_scan, scan_heads

    defaults = {
        "uniform_attention": inspect.signature(interventions.uniform_attention)
        .parameters["eps"].default,
        "scale_output": inspect.signature(interventions.scale_output).parameters["factor"].default,
        **{fn.__name__: inspect.signature(fn).parameters["eps"].default
           for fn in (fastscan.head_effects, fastscan.loop_head_effects, copies_hook,
                      scan_heads, loop_scan)},
    }
    assert defaults == dict.fromkeys(defaults, types.DEFAULT_EPS)
    assert interventions.DEFAULT_EPS is types.DEFAULT_EPS
    for path in (ROOT / "headprobe").rglob("*.py"):
        if path.name != "types.py":
            assert "DEFAULT_EPS =" not in path.read_text(), path


def test_method_and_metric_vocabularies():
    from headprobe import metrics
    from headprobe.interventions import METHODS

    assert get_args(types.Method) == tuple(METHODS)
    assert set(types.SCAN_METHODS) - {"patch"} <= set(get_args(types.Method))
    assert set(types.SCALING_METHODS) <= set(types.SCAN_METHODS)
    assert metrics.METRICS == types.METRICS == get_args(types.MetricName)
    assert set(types.SCAN_METRICS) <= set(types.METRICS)


def _check_unknown(error: pytest.ExceptionInfo, *names: str) -> None:
    assert isinstance(error.value, UnknownNameError) and isinstance(error.value, HeadprobeError)
    text = str(error.value)
    assert "\n" not in text and not text.startswith(("'", '"'))  # one plain line
    for name in names:
        assert name in text


def test_unknown_names_list_the_registered_ones():
    from headprobe.fastscan.patching import check_scan_args
    from headprobe.interventions import get_method
    from headprobe.metrics import resolve_metric
    from headprobe.tiny import TINY_KINDS, tiny_hf_model

    with pytest.raises(UnknownMetricError) as error:
        resolve_metric("accuracy")  # type: ignore[arg-type]
    _check_unknown(error, "'accuracy'", *types.METRICS)
    assert isinstance(error.value, ValueError)  # except ValueError keeps working
    with pytest.raises(UnknownMethodError) as error:
        get_method("zap")
    _check_unknown(error, "'zap'", "uniform_attention", "redistribute_sink")
    assert isinstance(error.value, InterventionError)
    with pytest.raises(UnknownMethodError) as error:
        check_scan_args("zap", "logit_diff", "denoising", 1e-5)
    _check_unknown(error, *types.SCAN_METHODS)
    with pytest.raises(UnknownMetricError) as error:
        check_scan_args("patch", "kl", "denoising", 1e-5)
    _check_unknown(error, *types.SCAN_METRICS)
    with pytest.raises(UnknownModelError) as error:
        tiny_hf_model("nope")
    _check_unknown(error, "'nope'", *TINY_KINDS)


def test_unknown_recipe_step_kind(tmp_path):
    from headprobe.recipes import load_recipe, step_kinds

    path = tmp_path / "r.toml"
    path.write_text('[[step]]\nkind = "probe"\nscorer = "induction"\n')
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    _check_unknown(error, "'probe'", *step_kinds())


def test_no_private_names_cross_modules():
    """No module imports another's ``_name``, and no ``__all__`` lists one."""
    for path in sorted((ROOT / "headprobe").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("headprobe"):
                private = [a.name for a in node.names
                           if a.name.startswith("_") and not a.name.startswith("__")]
                assert not private, f"{path}: imports {private} from {node.module}"
            if (isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
                    and isinstance(node.value, ast.List | ast.Tuple)):
                names = [e.value for e in node.value.elts if isinstance(e, ast.Constant)]
                assert not [n for n in names if n.startswith("_") and not n.startswith("__")]
    from headprobe import attribution

    assert not [name for name in vars(attribution)
                if name.startswith("_") and not name.startswith("__")
                and not inspect.ismodule(getattr(attribution, name))]
