"""The ``headprobe`` command line.

Subcommands: ``models`` (what can be loaded here), ``scorers``, ``scan``, ``atlas``,
``ablate`` (ablation experiment against random heads) and ``recipe``. Errors caused by
input (unknown model or scorer, bad output path...) print one line and exit with status 2;
``--quiet`` turns progress bars off.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from headprobe.errors import HeadprobeError

DEFAULT_MODEL = "smollm2-135m-instruct"


def _parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    return text


def _params(pairs: Sequence[str]) -> dict[str, Any]:
    params = {}
    for pair in pairs:
        if "=" not in pair:
            raise HeadprobeError(f"--param takes KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        params[key.strip()] = _parse_value(value.strip())
    return params


def _load(spec: str) -> Any:
    from headprobe.models import load_model

    model, _ = load_model(spec)
    return model


def cmd_models(args: argparse.Namespace) -> int:
    from headprobe.models import available_models, cache_dir

    print(f"{'name':24} {'installed':9} {'cached':6}  description")
    for row in available_models():
        print(f"{row['name']:24} {('yes' if row['installed'] else 'no'):9} "
              f"{('yes' if row['cached'] else 'no'):6}  {row['description']}")
        if row["install"]:
            print(f"{'':42}install: {row['install']}")
    print("\nAlso accepted: a local .gguf file, a local Hugging Face model folder, or a hub name "
          f"(online only). Cache: {cache_dir()}")
    return 0


def cmd_scorers(args: argparse.Namespace) -> int:
    from headprobe.registry import get_scorer, list_scorers

    for name in list_scorers():
        scorer = get_scorer(name)
        flag = "" if scorer.cheap else " (not in atlas: slow on CPU)"
        print(f"{name:18} {scorer.description}{flag}")
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    from headprobe.headtable import ensure_output_dir
    from headprobe.registry import get_scorer

    scorer = get_scorer(args.scorer)  # fail before loading the model
    out = ensure_output_dir(args.out)
    model = _load(args.model)
    table = scorer(model, n=args.n, seed=args.seed, batch_size=args.batch_size,
                   progress=not args.quiet, **_params(args.param))
    table.save(out)
    print(table.top(args.top)[["layer", "head", "kv_head", "score"]].to_string(index=False))
    print(f"wrote {out}/{scorer.name}.csv|parquet|html and {out}/meta.json "
          f"({table.meta['timings_s']['total']} s)")
    return 0


def cmd_atlas(args: argparse.Namespace) -> int:
    from headprobe.atlas import build_atlas
    from headprobe.headtable import ensure_output_dir
    from headprobe.registry import get_scorer

    names = args.scorers.split(",") if args.scorers else None
    for name in names or []:
        get_scorer(name)
    out = ensure_output_dir(args.out)
    model = _load(args.model)
    result = build_atlas(model, out, scorers=names, n=args.n, seed=args.seed,
                         batch_size=args.batch_size, progress=not args.quiet)
    for table in result.tables:
        best = table.top(3)
        heads = ", ".join(f"L{r.layer}H{r.head} {r.score:.2f}" for r in best.itertuples())
        print(f"{table.scorer:16} {heads}")
    for name, reason in result.skipped.items():
        print(f"{name:16} skipped: {reason}")
    print(f"wrote {result.report} ({result.seconds:.1f} s)")
    return 0


def cmd_recipe(args: argparse.Namespace) -> int:
    from headprobe.recipes import load_recipe, run_recipe

    recipe = load_recipe(args.path)
    out = Path(args.out) if args.out else Path("runs") / recipe.name
    model = _load(args.model or recipe.model)
    run_recipe(recipe, model, out, progress=not args.quiet)
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="headprobe", description="Score, test and steer the attention heads of a model.")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("models", help="what can be loaded here and now").set_defaults(func=cmd_models)
    sub.add_parser("scorers", help="registered scorers").set_defaults(func=cmd_scorers)

    scan = sub.add_parser("scan", help="score every head with one scorer")
    scan.add_argument("scorer")
    scan.add_argument("--model", default=DEFAULT_MODEL)
    scan.add_argument("--out", required=True)
    scan.add_argument("--n", type=int, default=None, help="number of prompts")
    scan.add_argument("--seed", type=int, default=0)
    scan.add_argument("--batch-size", type=int, default=8)
    scan.add_argument("--top", type=int, default=10, help="heads to print")
    scan.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                      help="scorer parameter (repeatable)")
    scan.add_argument("--quiet", action="store_true", help="no progress bars")
    scan.set_defaults(func=cmd_scan)

    atlas = sub.add_parser("atlas", help="every CPU-cheap scorer, one HTML report")
    atlas.add_argument("--model", default=DEFAULT_MODEL)
    atlas.add_argument("--out", required=True)
    atlas.add_argument("--scorers", default=None, help="comma-separated subset")
    atlas.add_argument("--n", type=int, default=None)
    atlas.add_argument("--seed", type=int, default=0)
    atlas.add_argument("--batch-size", type=int, default=8)
    atlas.add_argument("--quiet", action="store_true")
    atlas.set_defaults(func=cmd_atlas)

    from headprobe.experiments_cli import add_ablate_parser

    add_ablate_parser(sub)

    recipe = sub.add_parser("recipe", help="run a head-discovery recipe (TOML)")
    recipe.add_argument("path")
    recipe.add_argument("--out", default=None)
    recipe.add_argument("--model", default=None, help="override the recipe's model")
    recipe.add_argument("--quiet", action="store_true")
    recipe.set_defaults(func=cmd_recipe)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "quiet", False):
        logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        return int(args.func(args))
    except HeadprobeError as error:
        print(f"headprobe: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
