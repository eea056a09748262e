"""``headprobe validate``: the subcommand's parser and its run (``headprobe.cli`` adds it;
building the parser imports nothing heavy).

Exit status 0 when every case meets its floors, 1 when one falls below (each printed with
why), 2 for bad input (an unknown ``--scorers`` name, one line listing them).
"""

from __future__ import annotations

import argparse
from typing import Any

from headprobe.errors import UsageError

DEFAULT_OUT = "runs/validate"
PRINTED = ["head_type", "scorer", "model", "source", "n_known", "auroc", "precision", "recall",
           "top_k_precision", "average_precision", "passed"]


def add_validate(sub: Any) -> None:
    """Add ``validate`` to the ``headprobe`` subparsers ``sub``."""
    parser = sub.add_parser(
        "validate", help="measure each scorer against heads of known function",
        description="Run every registered scorer on its ground-truth models (hand-set, "
        "planted, compiled or trained heads of known function) and report AUROC, precision "
        "and recall at its threshold, top-k precision and average precision; exit 1 when a "
        "case falls below its floor.")
    parser.add_argument("--fast", action="store_true",
                        help="only the fast cases (tiny models; what the test suite runs)")
    parser.add_argument("--scorers", default=None,
                        help="comma-separated subset of scorers (default: all with a case)")
    parser.add_argument("--causal", action="store_true",
                        help="also ablate each case's known heads vs random same-layer sets on "
                        "its causal task (cases that name one)")
    parser.add_argument("--n-random", type=int, default=None,
                        help="random head sets of the causal check (default: "
                        "headprobe.validate.run.DEFAULT_N_RANDOM, 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help="write validation.csv|parquet|html, meta.json and each case's "
                        "scores here (default: %(default)s)")
    parser.add_argument("--fresh", action="store_true",
                        help="run every case again (by default cases saved in --out by an "
                        "earlier run with the same key are loaded)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=cmd_validate)


def cmd_validate(args: argparse.Namespace) -> int:
    """Run the cases, print the table and every failure; 1 when a case failed."""
    from headprobe.registry import list_scorers
    from headprobe.validate.cases import case_id, collect_cases, parse_scorers, select_cases
    from headprobe.validate.run import DEFAULT_N_RANDOM, validate

    n_random = DEFAULT_N_RANDOM if args.n_random is None else args.n_random
    if n_random < 0:
        raise UsageError(f"--n-random must be >= 0, got {n_random}")
    names = parse_scorers(args.scorers)
    skipped: dict[str, str] = {}
    cases = select_cases(collect_cases(args.fast, skipped=skipped), names)
    with_cases = {case.scorer for case in cases}
    wanted = names if names is not None else list_scorers()
    missing = [name for name in wanted if name not in with_cases]
    table = validate(cases, out=args.out, causal=args.causal, progress=not args.quiet,
                     n_random=n_random, seed=args.seed, fresh=args.fresh, echo=print)
    columns = PRINTED + (["separates"] if args.causal else [])
    print(table[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if missing:
        print(f"no ground-truth case ({'fast ' if args.fast else ''}setting) for: "
              + ", ".join(missing))
    for head_type, reason in skipped.items():
        print(f"the {head_type} example gives no case: {reason}")
    failed = [(case, row) for case, row in zip(cases, table.itertuples(), strict=True)
              if not row.passed]
    for case, row in failed:
        print(f"FAILED {case_id(case)} ({case.source}): {row.failed_floors}")
    print(f"{len(table) - len(failed)} of {len(table)} cases passed; wrote "
          f"{table.attrs.get('report', args.out)}")
    return 1 if failed else 0


__all__ = ["add_validate", "cmd_validate"]
