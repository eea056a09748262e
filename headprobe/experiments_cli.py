"""``headprobe ablate``: ablate a head set on a task and compare with random head sets.

Wiring into the main CLI is two lines::

    from headprobe.experiments_cli import add_ablate_parser   # 1: import
    add_ablate_parser(subparsers)                              # 2: register (sets func=run_ablate)

``add_ablate_parser`` sets ``func=run_ablate`` as the sub-command's default, so a main that
dispatches with ``args.func(args)`` needs nothing else.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path
from typing import Any

from headprobe.errors import HeadprobeError, InterventionError
from headprobe.interventions import METHODS

# Methods that need no tensor option, so that they can be run from the command line.
CLI_METHODS = tuple(name for name, m in METHODS.items() if name not in
                    ("add_to_output", "set_pattern"))


def add_ablate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``ablate`` sub-command to an ``argparse`` sub-parser collection."""
    from headprobe.models import DEFAULT_MODEL

    parser = subparsers.add_parser(
        "ablate",
        help="ablate heads on a task and compare with random head sets",
        description="Judge a task on the clean model, with the target heads ablated, and with "
        "random head sets of the same size ablated; report accuracies, deltas and bootstrap "
        "95%% intervals.",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model spec (default: %(default)s)")
    parser.add_argument("--task", required=True, help="registered task name (e.g. induction_copy)")
    parser.add_argument("--heads", required=True,
                        help="'LAYER.HEAD,...' (e.g. 18.6,17.3), or a folder / file written by "
                        "HeadTable.save (then --top K picks the K best heads)")
    parser.add_argument("--top", type=int, default=None,
                        help="number of top heads to take from a head table (default 5), or "
                        "the first K of a list")
    parser.add_argument("--method", default="zero", choices=CLI_METHODS,
                        help="intervention (default: %(default)s)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="method option, e.g. --option factor=1e-5 (repeatable)")
    parser.add_argument("--n-random", type=int, default=10,
                        help="random head sets (default: %(default)s)")
    parser.add_argument("--random-from", default="same_layers", choices=("same_layers", "uniform"))
    parser.add_argument("--n", type=int, default=None, help="number of task prompts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    parser.add_argument("--out", default=None,
                        help="write ablation.csv, ablation.html and meta.json here")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run_ablate)
    return parser


def _parse_options(pairs: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise InterventionError(f"--option {pair!r}: write KEY=VALUE, e.g. factor=1e-5")
        value: Any = raw
        for cast in (int, float):
            try:
                value = cast(raw)
                break
            except ValueError:
                continue
        if raw in ("true", "false"):
            value = raw == "true"
        options[key] = value
    return options


def resolve_heads(text: str, top: int | None) -> tuple[list[tuple[int, int]], str]:
    """Heads from ``--heads``/``--top``, and a one-line description of where they came from."""
    from headprobe.experiments import parse_heads
    from headprobe.headtable import HeadTable

    path = Path(text)
    if path.exists():
        try:
            if path.is_dir():
                table = HeadTable.load(path)
            elif path.name == "meta.json":
                table = HeadTable.load(path.parent)
            else:
                table = HeadTable.load(path.parent, scorer=path.stem)
        except FileNotFoundError as error:
            raise InterventionError(
                f"--heads {text}: not a head table written by HeadTable.save ({error})"
            ) from error
        k = 5 if top is None else top
        if k < 1:
            raise InterventionError(f"--top must be >= 1, got {k}")
        return table.heads(k=k), f"top {k} heads of {table.scorer} ({path})"
    if "/" in text or text.endswith((".parquet", ".csv", ".json")):
        raise InterventionError(f"--heads {text}: no such file or folder")
    heads = parse_heads(text)
    if top is not None:
        if top < 1:
            raise InterventionError(f"--top must be >= 1, got {top}")
        heads = heads[:top]
    return heads, "given list"


def _make_task(name: str, n: int | None, seed: int) -> Any:
    from headprobe.tasks import TASK_MODULES, get_task

    options: dict[str, Any] = {}
    if name in TASK_MODULES:
        import importlib

        params = inspect.signature(importlib.import_module(TASK_MODULES[name]).make_task).parameters
        if n is not None and "n" in params:
            options["n"] = n
        if "seed" in params:
            options["seed"] = seed
    return get_task(name, **options)


def load_model(spec: str) -> Any:
    """Load ``spec`` (a seam that tests replace with a tiny model)."""
    from headprobe.models import load_model as _load

    return _load(spec)


def run_ablate(args: argparse.Namespace) -> int:
    """Run ``headprobe ablate``; returns the exit code (0 ok, 2 bad input)."""
    from headprobe.experiments import ablation_experiment

    try:
        heads, source = resolve_heads(args.heads, args.top)
        options = _parse_options(args.option)
        task = _make_task(args.task, args.n, args.seed)
        model, spec = load_model(args.model)
        result = ablation_experiment(
            model, task, heads, method=args.method, n_random=args.n_random, seed=args.seed,
            random_from=args.random_from, batch_size=args.batch_size,
            progress=not args.quiet, n_bootstrap=args.n_bootstrap, method_options=options,
        )
    except HeadprobeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary = result.summary
    print(f"{spec.name} · task {task.name} ({len(task)} prompts) · method {args.method}")
    print(f"heads ({source}): {result.meta['heads']}")
    columns = ["condition", "heads", "accuracy", "delta", "delta_ci_low", "delta_ci_high"]
    print(result.table[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    low, high = summary["target_delta_ci"]
    line = (f"baseline {summary['baseline_accuracy']:.3f} · target delta "
            f"{summary['target_delta']:+.3f} [{low:+.3f}, {high:+.3f}]")
    if "mean_random_delta" in summary:
        line += (f" · mean random delta {summary['mean_random_delta']:+.3f} · share of random "
                 f"sets as low: {summary['share_random_as_low']:.2f}")
    print(line)
    if args.out:
        try:
            folder = result.save(args.out)
        except HeadprobeError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"wrote {folder}/ablation.csv, ablation.html, meta.json")
    return 0
