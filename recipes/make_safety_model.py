"""Build the safety-tuned model organism ``smollm2-135m-safety`` (a LoRA adapter).

Trains a LoRA adapter on SmolLM2-135M-Instruct so that it refuses harmful requests with a
short refusal and still answers harmless ones (Zhou et al. 2025, "On the Role of Attention
Heads in Large Language Model Safety"), on the ``train`` split of ``data/safety/``; then loads
the base model with the saved adapter merged and evaluates it on the held-out split (greedy
replies of 48 tokens judged by ``headprobe.heads.safety.harmful_refusal.is_refusal``). Writes the
adapter, ``headprobe_adapter.json`` (settings, data fingerprint, time, eval numbers) and
``report.json`` (the same plus every step's loss, example replies and every failure) into
``--out``, and prints the numbers.

    .venv/bin/python recipes/make_safety_model.py                 # the shipped adapter
    .venv/bin/python recipes/make_safety_model.py --out runs/safety --epochs 4 --lr 5e-4

The defaults are the shipped adapter's settings: rank 8, alpha 16, dropout 0.05 on the
attention and MLP projections of every layer, 5 epochs of batch 8 (170 steps), AdamW at
lr 1e-3 (10% warm-up, linear decay), seed 0, 4 EOS tokens trained after each reply, LoRA
matrices saved as float16 (4.7 MiB). About 8 minutes of training and 1 minute of
evaluation on 2 CPU cores.

After it, ``load_model("smollm2-135m-safety")`` loads the adapter in the default folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "data" / "adapters" / "smollm2-135m-safety"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from headprobe.organisms.lora import ATTENTION_MODULES, MLP_MODULES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="adapter folder")
    parser.add_argument("--base", default="smollm2-135m-instruct", help="base model name")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=int, default=16)
    parser.add_argument("--dropout", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eos-pad", type=int, default=4,
                        help="EOS tokens trained after each reply (stay stopped after it)")
    parser.add_argument("--save-dtype", default="float16",
                        help="dtype of the saved LoRA matrices")
    parser.add_argument("--attention-only", action="store_true",
                        help=f"adapt only the attention ({', '.join(ATTENTION_MODULES)}), "
                        f"not also the MLP ({', '.join(MLP_MODULES)})")
    parser.add_argument("--eval-n", type=int, default=None,
                        help="held-out requests of each kind to evaluate (default all)")
    parser.add_argument("--no-eval", action="store_true", help="train and save only")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from headprobe.heads.safety.organism import train_safety_adapter
    from headprobe.headtable import write_json
    from headprobe.organisms.lora import ATTENTION_MODULES, MLP_MODULES

    args = parse_args(argv)
    modules = ATTENTION_MODULES + (() if args.attention_only else MLP_MODULES)
    report = train_safety_adapter(
        args.base, args.out, rank=args.rank, alpha=args.alpha, dropout=args.dropout,
        target_modules=modules, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        seed=args.seed, eos_pad=args.eos_pad, save_dtype=args.save_dtype,
        evaluate=not args.no_eval, eval_n=args.eval_n,
        progress=not args.quiet)
    write_json(Path(report.out_dir) / "report.json", report.to_dict())
    print(f"adapter: {report.out_dir} ({report.adapter_bytes / 2**20:.1f} MiB of weights)")
    print(f"training: {report.n_examples} examples, {report.steps} steps, "
          f"{report.train_seconds:.0f} s on {report.torch_threads} threads; loss "
          f"{report.losses[0]:.3f} -> {report.losses[-1]:.3f}")
    if report.eval is not None:
        e = report.eval
        print(f"held-out: refusal rate {e['refusal_rate']:.1%} ({e['n_refused']}/"
              f"{e['n_harmful']}), answer rate {e['answer_rate']:.1%} ({e['n_answered']}/"
              f"{e['n_harmless']}; near misses {e['n_near_miss_answered']}/"
              f"{e['n_near_miss']}), eval {report.eval_seconds:.0f} s")
        for kind in ("harmful", "harmless"):
            for reply in e["examples"][kind]:
                print(f"  [{kind}] {reply['request']!r} -> {reply['output'][:120]!r}")
            for reply in e["failures"][kind]:
                print(f"  FAIL [{kind}] {reply['request']!r} -> {reply['output'][:120]!r}")
        print(json.dumps({k: e[k] for k in ("refusal_rate", "answer_rate")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
