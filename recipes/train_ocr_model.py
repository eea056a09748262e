"""Train the project's OCR model ``ocr-reader`` (a tiny LLaVA) and write it to ``data/ocr_model``.

Trains :mod:`headprobe.heads.ocr.ocr_reader`'s model from a seed on rendered strings (and a
quarter of text-only batches that hide the string in brackets), in two stages (the second
continues from the first's weights with a fresh warm-up, a lower learning rate and new
images), logging the loss and the exact-match reading accuracy on held-out images as it
goes, then measures the final model on
fresh held-out images of every difficulty (``train``: the training distribution; ``small``
and ``noisy``: harder images) and writes ``config.json``, ``model.safetensors`` and
``training.json`` (settings, time, log, held-out accuracies) into ``--out``.

    .venv/bin/python recipes/train_ocr_model.py                     # the shipped weights
    .venv/bin/python recipes/train_ocr_model.py --out runs/ocr --steps 500

The defaults are the shipped model's: stage 1, 6000 steps of batch 32 (a quarter of them
text-only), AdamW at lr 5e-4 (150 warm-up steps, cosine decay to 0), the auxiliary patch loss
at weight 1, seed 0; stage 2, 7000 more steps at lr 3e-4 (same schedule). About 22 + 25
minutes on 2 CPU cores (torch threads: all cores), plus a minute of evaluation.

Afterwards ``load_model("ocr-reader")`` loads the weights in the default folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

HELD_OUT_SEED = 20251  # held-out images; training draws from seed + 1 of its settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from headprobe.heads.ocr.ocr_reader import TrainSettings

    defaults = TrainSettings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="model folder (default: data/ocr_model in the data folder)")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.learning_rate)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--continue-steps", type=int, default=7000,
                        help="steps of the second stage (0: none), from the first stage's "
                             "weights with a fresh warm-up and cosine decay")
    parser.add_argument("--continue-lr", type=float, default=3e-4)
    parser.add_argument("--stage1", type=Path, default=None,
                        help="skip the first stage: continue from this saved model folder")
    parser.add_argument("--eval-n", type=int, default=500,
                        help="held-out images per difficulty at the end")
    parser.add_argument("--log-every", type=int, default=250)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    from headprobe.heads.ocr.ocr_reader import (
        TrainSettings,
        load_ocr_model,
        ocr_model_dir,
        reading_accuracy,
        train_ocr_model,
    )
    from headprobe.heads.ocr.text_images import DIFFICULTIES, render_many

    args = parse_args(argv)
    if args.out is None:
        args.out = ocr_model_dir()
    monitor = render_many(64, HELD_OUT_SEED + 7)
    stage1 = args.stage1
    record: dict = {}
    if stage1 is None:
        settings = TrainSettings(steps=args.steps, batch_size=args.batch_size,
                                 learning_rate=args.lr, seed=args.seed)
        stage1 = Path(args.out) / "stage1" if args.continue_steps else Path(args.out)
        record = train_ocr_model(stage1, settings, eval_samples=monitor,
                                 log_every=args.log_every)
    if args.continue_steps:
        settings = TrainSettings(steps=args.continue_steps, batch_size=args.batch_size,
                                 learning_rate=args.continue_lr, seed=args.seed,
                                 init_from=str(stage1))
        second = train_ocr_model(args.out, settings, eval_samples=monitor,
                                 log_every=args.log_every)
        stage1_record = record or json.loads((Path(stage1) / "training.json").read_text())
        record = {**second, "stage1": stage1_record,
                  "train_seconds": second["train_seconds"] + stage1_record["train_seconds"]}
        if args.stage1 is None:  # the first stage's weights are not kept, its record is
            shutil.rmtree(stage1)
    model, tokenizer, processor = load_ocr_model(args.out)
    held_out = {}
    for offset, name in enumerate(sorted(DIFFICULTIES)):
        samples = render_many(args.eval_n, HELD_OUT_SEED + offset, name)
        result = reading_accuracy(model, tokenizer, processor, samples)
        held_out[name] = {"exact_match": result["exact_match"],
                          "char_accuracy": result["char_accuracy"], "n": result["n"],
                          "seed": HELD_OUT_SEED + offset,
                          "errors": [[s.text, r] for s, r in zip(samples, result["readings"],
                                                                  strict=True)
                                     if s.text != r][:20]}
        print(f"{name}: exact match {result['exact_match']:.3f} "
              f"(chars {result['char_accuracy']:.3f}, n={result['n']})")
    record["held_out"] = held_out
    (Path(args.out) / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"trained in {record['train_seconds'] / 60:.1f} min; wrote {args.out}")
    return record


if __name__ == "__main__":
    main()
