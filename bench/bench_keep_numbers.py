"""Re-measure the project's headline numbers with one script, so two versions of the code can be
compared number for number (issue 18: a restructuring must keep every reported number).

Runs on SmolLM2-135M-Instruct (the safety organism for Ships, ``ocr-reader`` for OCR) with each
scorer's defaults, and writes ``bench/keep_numbers.json`` (or ``--out``): the top heads and
their scores, DLA's sum check, the zero-ablation delta of the top induction heads on
``induction_copy``, the IOI activation-patching top heads and the fast scan's time, the
retrieval, Ships (L18H8), successor, temporal-free OCR top heads. Uses only the public names that
existed before and after the restructuring (``load_model``, ``scan``, ``get_task``,
``ablation_experiment``), so the same file runs on both.

    python bench/bench_keep_numbers.py --out /tmp/after.json
    python bench/bench_keep_numbers.py --compare /tmp/before.json /tmp/after.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def top(table: Any, k: int = 5, column: str = "score") -> list[list[Any]]:
    frame = table.data.sort_values(column, ascending=False).head(k)
    return [[int(r.layer), int(r.head), round(float(getattr(r, column)), 6)]
            for r in frame.itertuples()]


def measure(only: set[str] | None, out_path: Path) -> dict[str, Any]:
    """Each measurement in turn, cheapest first; the record is rewritten after each one, so a
    run that dies keeps what it measured."""
    from headprobe import load_model, scan
    from headprobe.experiments import ablation_experiment
    from headprobe.tasks import get_task

    out: dict[str, Any] = {}

    def want(name: str) -> bool:
        return only is None or name in only

    def done() -> None:
        out_path.write_text(json.dumps(out, indent=1) + "\n")

    model, _ = load_model("smollm2-135m-instruct")
    if want("induction"):
        table = scan(model, "induction", progress=False)
        out["induction_top"] = top(table)
        done()
        if want("ablation"):
            heads = [(row[0], row[1]) for row in top(table, 6)]
            result = ablation_experiment(model, get_task("induction_copy"), heads,
                                         method="zero", n_random=5, seed=0, progress=False,
                                         n_bootstrap=200)
            out["induction_ablation"] = {k: (round(v, 6) if isinstance(v, float) else v)
                                         for k, v in result.summary.items()
                                         if isinstance(v, (int, float))}
            done()
    if want("dla"):
        table = scan(model, "dla", progress=False)
        out["dla_top"] = top(table)
        out["dla_score_sum"] = round(float(table.data["score"].sum()), 5)
        done()
    if want("successor"):
        out["successor_top"] = top(scan(model, "successor", progress=False))
        done()
    if want("ioi"):
        started = time.perf_counter()
        table = scan(model, "activation_patching", n=8, progress=False)
        out["ioi_patching_seconds"] = round(time.perf_counter() - started, 2)
        out["ioi_patching_top"] = top(table)
        done()
    if want("ships"):
        safety, _ = load_model("smollm2-135m-safety")
        table = scan(safety, "ships", n=8, progress=False)
        out["ships_top"] = top(table)
        frame = table.data
        row = frame[(frame["layer"] == 18) & (frame["head"] == 8)].iloc[0]
        out["ships_L18H8"] = round(float(row["score"]), 6)
        done()
        del safety
    if want("ocr"):
        reader, _ = load_model("ocr-reader")
        out["ocr_top"] = top(scan(reader, "ocr", n=32, progress=False))
        done()
    if want("retrieval"):
        out["retrieval_top"] = top(scan(model, "retrieval", progress=False))
        done()
    return out


def compare(before: dict[str, Any], after: dict[str, Any]) -> int:
    bad = 0
    for key in sorted(set(before) | set(after)):
        if key.endswith("_seconds"):
            print(f"{key}: {before.get(key)} -> {after.get(key)}")
            continue
        same = before.get(key) == after.get(key)
        bad += not same
        print(f"{'same' if same else 'DIFFERENT'}  {key}: {after.get(key)}"
              + ("" if same else f" (before {before.get(key)})"))
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/keep_numbers.json"))
    parser.add_argument("--only", default=None, help="comma-separated subset of measurements")
    parser.add_argument("--compare", nargs=2, type=Path, default=None)
    args = parser.parse_args()
    if args.compare:
        return compare(*(json.loads(p.read_text()) for p in args.compare))
    only = set(args.only.split(",")) if args.only else None
    started = time.perf_counter()
    record = measure(only, args.out)
    record["total_seconds"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
