"""Temporal heads (Park et al. 2025, "Does Time Have Its Place? Temporal Heads"): find them,
check them causally, edit facts through them.

A Python recipe because the edit step is no TOML step kind. It runs, through
:func:`headprobe.recipes.run_recipe` (so each step is saved under ``<out>/<step>/``, summarised
in ``summary.json`` and skipped on a re-run with the same run key):

1. ``temporal``: the ``temporal`` scorer (EAP-IG circuits per fact set on the facts the model
   knows; heads in >= 90% of temporal circuits and <= 25% of invariant ones; agreement of the
   EAP-IG node scores with exact noising patching on the temporal pairs);
2. ``ablate_temporal`` / ``ablate_invariant``: zero-ablate the temporal heads vs random
   same-layer head sets on the known temporal and invariant facts (the paper: temporal recall
   drops, invariant recall does not). When no head meets the rule, the ``fallback_top`` heads by
   score are used and the summary says so;
3. ``temporal_edit``: add c x (1, 2, 3) each temporal head's ``z`` from the other year's prompt
   at the last token (:func:`headprobe.heads.temporal.temporal_edit.temporal_edit`), vs random
   heads; saved under ``<out>/temporal_edit/`` and added to ``summary.json``.

Run::

    python recipes/temporal_heads.py --out runs/temporal_heads [--model gemma3-270m]
        [--steps 5] [--method eap-ig-act] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from headprobe.headtable import write_json
from headprobe.recipes import Recipe, run_recipe
from headprobe.recipes.format import Step

NAME = "temporal-heads"
DESCRIPTION = ("Temporal heads: EAP-IG circuits of dated vs time-invariant facts, ablation of "
               "the heads present in the temporal circuits only, and temporal editing through "
               "them.")


def scan_step(params: dict[str, Any]) -> Step:
    """The ``temporal`` scan step with the scorer parameters ``params``."""
    return Step("scan", "temporal", {"scorer": "temporal", "seed": 0, "params": dict(params)})


def ablate_step(kind: str, heads: Sequence[tuple[int, int]], *, method: str, n_random: int,
                n_bootstrap: int, sets: Sequence[str] | None) -> Step:
    """Ablate ``heads`` vs random heads on the known ``kind`` facts."""
    options: dict[str, Any] = {"kind": kind, "known_only": True}
    if sets is not None:
        options["sets"] = list(sets)
    return Step("ablate", f"ablate_{kind}", {
        "task": "temporal_facts", "task_options": options,
        "heads": ",".join(f"{layer}.{head}" for layer, head in heads), "method": method,
        "n_random": n_random, "seed": 0, "n_bootstrap": n_bootstrap})


def run(model: Any, out: str | Path, *, model_name: str, params: dict[str, Any] | None = None,
        method: str = "zero", n_random: int = 10, n_bootstrap: int = 1000,
        coefficients: Sequence[float] = (1.0, 2.0, 3.0), edit_random: int = 5,
        fallback_top: int = 3, progress: bool = True, echo: Any = print) -> dict[str, Any]:
    """Run the whole recipe on ``model``; returns the summary (also in ``summary.json``)."""
    from headprobe.heads.temporal.temporal import temporal_heads
    from headprobe.heads.temporal.temporal_edit import temporal_edit
    from headprobe.heads.temporal.temporal_facts import make_task

    params = dict(params or {})
    out = Path(out)
    scan = scan_step(params)
    first = Recipe(NAME, DESCRIPTION, model_name, [scan])
    table = run_recipe(first, model, out, progress=progress, echo=echo)["temporal"]
    heads = temporal_heads(table)
    source = "is_temporal"
    if not heads:
        heads = table.heads(k=fallback_top)
        source = f"no head met the is_temporal rule: top {fallback_top} by score instead"
        echo(f"temporal: {source}")
    steps = [scan] + [ablate_step(kind, heads, method=method, n_random=n_random,
                                  n_bootstrap=n_bootstrap, sets=params.get(f"{kind}_sets"))
                      for kind in ("temporal", "invariant")]
    run_recipe(Recipe(NAME, DESCRIPTION, model_name, steps), model, out, progress=progress,
               echo=echo)
    sets = params.get("temporal_sets")
    task = make_task("temporal", model=model, known_only=True,
                     sets=list(sets) if sets is not None else None)
    edit = temporal_edit(model, task, heads, coefficients=coefficients, n_random=edit_random,
                         n_bootstrap=n_bootstrap, progress=progress)
    edit.save(out / "temporal_edit")
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    summary["temporal_heads"] = {"heads": [f"L{layer}H{head}" for layer, head in heads],
                                 "source": source,
                                 "agreement": table.meta.get("agreement"),
                                 "known_facts": table.meta.get("known_facts"),
                                 "circuits": table.meta.get("circuits")}
    summary["temporal_edit"] = edit.summary
    summary["steps"].append({"name": "temporal_edit", "kind": "temporal_edit"})
    write_json(summary_path, summary)
    echo(f"temporal_edit: {json.dumps(edit.summary)}")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--out", default="runs/temporal_heads")
    parser.add_argument("--steps", type=int, default=5,
                        help="integrated-gradient steps (paper: 100, eap-ig)")
    parser.add_argument("--method", default="eap-ig-act",
                        help="attribution method (eap-ig-act agrees best with exact patching)")
    parser.add_argument("--top-edges", type=int, default=None,
                        help="keep at most this many edges per circuit")
    parser.add_argument("--edge-threshold", type=float, default=0.1,
                        help="edge kept when |score| >= this x the circuit's largest |score|")
    parser.add_argument("--quick", action="store_true",
                        help="5 IG steps, 2 random sets, 200 bootstrap draws")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    from headprobe.catalogue import load_model

    model, _ = load_model(args.model)
    params: dict[str, Any] = {"ig_steps": 5 if args.quick else args.steps, "method": args.method,
                              "top_edges": args.top_edges,
                              "edge_threshold": args.edge_threshold}
    run(model, args.out, model_name=args.model, params=params,
        n_random=2 if args.quick else 10, n_bootstrap=200 if args.quick else 1000,
        edit_random=2 if args.quick else 5, progress=not args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
