"""The safety-tuned model organism: SmolLM2-135M-Instruct + a LoRA adapter that refuses.

Zhou et al. 2025 ("On the Role of Attention Heads in Large Language Model Safety", ICLR 2025)
find *safety heads* in safety-tuned models: heads whose ablation makes the model stop refusing
harmful requests. SmolLM2-135M-Instruct never refuses, so headprobe tunes it: a LoRA adapter
(:mod:`headprobe.organisms.lora`) on the attention and MLP projections of every layer, trained
on the ``train`` split of the shipped request sets
(:func:`headprobe.heads.safety.request_sets.load_requests`): harmful requests -> their short
refusal, harmless ones (near misses included) -> their answer, each a user turn and an assistant
turn in the model's chat template, loss on the reply only. (An attention-only adapter trained 3
epochs refused 55/56 held-out harmful requests but also 13/56 harmless ones; with the MLP and
5 epochs the two separate: see ``data/README.md``.)

- :func:`train_safety_adapter` trains it, saves it with peft (safetensors) plus
  ``headprobe_adapter.json`` and, by default, evaluates the saved adapter on the held-out
  split.
- :func:`evaluate_refusals` judges any bridge with the ``harmful_refusal`` /
  ``harmless_answer`` tasks (greedy replies of 48 tokens, :func:`is_refusal`): the refusal
  rate on harmful requests and the answer rate on harmless ones.

``load_model("smollm2-135m-safety")`` loads the shipped adapter merged into the base model;
``recipes/make_safety_model.py`` rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from headprobe.errors import TaskError
from headprobe.organisms.adapters import (
    ADAPTER_META,
    META_FORMAT,
    PEFT_CONFIG,
    PEFT_WEIGHTS,
    load_adapted_model,
    packaged_adapter_dir,
    shapes_fingerprint,
)
from headprobe.organisms.lora import (
    ATTENTION_MODULES,
    MLP_MODULES,
    ChatExample,
    LoraSettings,
    Render,
    encode_example,
    render_chat_example,
    train_lora,
)

SAFETY_MODEL = "smollm2-135m-safety"
SAFETY_BASE = "smollm2-135m-instruct"
N_EXAMPLES = 3  # example outputs of each kind kept by evaluate_refusals


@dataclass
class TrainReport:
    """What :func:`train_safety_adapter` did.

    Attributes:
        base: the base model's headprobe name.
        out_dir: the adapter folder.
        settings: the LoRA hyperparameters (:class:`LoraSettings` as a dict).
        n_examples: training examples (harmful + harmless).
        n_reply_tokens: reply tokens per epoch (the tokens with a loss).
        steps: optimizer steps.
        losses: loss of every step.
        train_seconds: wall time of the training loop.
        torch_threads: CPU threads torch used.
        data_fingerprint: sha256 prefix of the training examples' texts.
        base_shapes_sha256: :func:`shapes_fingerprint` of the base model.
        adapter_bytes: size of the saved adapter weights.
        eval: :func:`evaluate_refusals` of the saved adapter, when evaluated.
    """

    base: str
    out_dir: str
    settings: dict[str, Any]
    n_examples: int
    n_reply_tokens: int
    steps: int
    losses: list[float]
    train_seconds: float
    torch_threads: int
    data_fingerprint: str
    base_shapes_sha256: str
    adapter_bytes: int
    eval: dict[str, Any] | None = None
    eval_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def safety_examples(split: str = "train") -> list[ChatExample]:
    """The ``split`` of both shipped sets as chat examples: harmful requests with their
    refusal, then harmless requests with their answer."""
    from headprobe.heads.safety.request_sets import load_requests

    return [ChatExample(r.prompt, r.target or "")
            for kind in ("harmful", "harmless") for r in load_requests(kind, split)]


def examples_fingerprint(examples: Sequence[ChatExample]) -> str:
    """sha256 (first 16 hex digits) of the examples' prompts and targets, in order."""
    payload = json.dumps([[e.prompt, e.target] for e in examples], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def train_safety_adapter(
    base: str = SAFETY_BASE,
    out_dir: str | Path | None = None,
    *,
    rank: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    target_modules: Sequence[str] = ATTENTION_MODULES + MLP_MODULES,
    epochs: int = 5,
    lr: float = 1e-3,
    batch_size: int = 8,
    seed: int = 0,
    eos_pad: int = 4,
    save_dtype: str | torch.dtype = "float16",
    examples: Sequence[ChatExample] | None = None,
    model: Any = None,
    tokenizer: Any = None,
    render: Render = render_chat_example,
    max_steps: int | None = None,
    evaluate: bool = True,
    eval_n: int | None = None,
    progress: bool = False,
) -> TrainReport:
    """Train the safety LoRA adapter on ``base`` and save it in ``out_dir``.

    Args:
        base: the base model's :func:`headprobe.catalogue.load_model` name (recorded in the
            adapter's metadata and checked when it is merged).
        out_dir: where the adapter goes (created; peft's files are replaced); default the
            packaged folder ``data/adapters/smollm2-135m-safety``.
        rank, alpha, dropout, target_modules, epochs, lr, batch_size, seed: the LoRA run
            (:class:`~headprobe.organisms.lora.LoraSettings`).
        eos_pad: EOS tokens trained after each reply
            (:func:`~headprobe.organisms.lora.encode_example`): the tuned model stays stopped
            after its end of turn, so a fixed-length generation that does not stop at EOS
            (``generate(..., stop_at_eos=False)``, a decode-time scorer) reads its reply and
            not a turn it invents after it (without it the model wrote ``"user\nI can't do
            that..."`` after its answers).
        save_dtype: dtype of the saved LoRA matrices (``float16`` halves the file; they are
            merged in fp32 after loading, and the evaluation reads the saved file).
        examples: training examples; default :func:`safety_examples` of the ``train`` split.
        model, tokenizer: a plain HF causal LM and its tokenizer to tune instead of loading
            ``base`` (tests use a tiny one); the model is modified in place.
        render: ``(tokenizer, example) -> (prompt_text, reply_text)``; default the chat
            template.
        max_steps: stop early (tests).
        evaluate: load ``base`` + the saved adapter and run :func:`evaluate_refusals` on the
            held-out split (``eval_n`` requests of each kind; all by default).
        progress: progress bars.

    Returns:
        :class:`TrainReport`; its numbers are also in ``out_dir/headprobe_adapter.json``.
    """
    from headprobe.headtable import ensure_output_dir, write_json
    from headprobe.models import dtype_name, resolve_dtype
    from headprobe.provenance import headprobe_version
    from headprobe.sources import load_hf_model

    folder = ensure_output_dir(out_dir if out_dir is not None
                               else packaged_adapter_dir(SAFETY_MODEL))
    shipped = examples is None
    examples = safety_examples("train") if examples is None else list(examples)
    if not examples:
        raise TaskError("no training examples")
    if model is None:
        model, tokenizer = load_hf_model(base, dtype=torch.float32)
    elif tokenizer is None:
        raise TaskError("pass the tokenizer together with model=")
    settings = LoraSettings(rank=rank, alpha=alpha, dropout=dropout,
                            target_modules=tuple(target_modules), epochs=epochs, lr=lr,
                            batch_size=batch_size, seed=seed)
    base_shapes = shapes_fingerprint(model)
    encoded = [encode_example(tokenizer, example, render, eos_pad=eos_pad)
               for example in examples]
    run = train_lora(model, tokenizer, encoded, settings, base_name=base, max_steps=max_steps,
                     progress=progress)
    for name in (PEFT_CONFIG, PEFT_WEIGHTS, "README.md"):  # no stale files of an older run
        (folder / name).unlink(missing_ok=True)
    storage = resolve_dtype(save_dtype, "cpu")
    with torch.no_grad():
        for param in run.model.parameters():
            if param.requires_grad:  # the LoRA matrices
                param.data = param.data.to(storage)
    # save_embedding_layers=False: no embedding is tuned (and peft would look the base up)
    run.model.save_pretrained(str(folder), safe_serialization=True,
                              save_embedding_layers=False)
    (folder / "README.md").unlink(missing_ok=True)  # peft's blank model card; see data/README
    (folder / PEFT_WEIGHTS).chmod(0o644)  # peft writes it 0600; the adapter is shared data
    report = TrainReport(
        base=base, out_dir=str(folder),
        settings={**settings.to_dict(), "eos_pad": eos_pad, "save_dtype": dtype_name(storage)},
        n_examples=len(examples), n_reply_tokens=run.n_tokens, steps=run.steps,
        losses=[round(loss, 5) for loss in run.losses], train_seconds=round(run.seconds, 2),
        torch_threads=torch.get_num_threads(), data_fingerprint=examples_fingerprint(examples),
        base_shapes_sha256=base_shapes,
        adapter_bytes=(folder / PEFT_WEIGHTS).stat().st_size)
    meta: dict[str, Any] = {
        "format": META_FORMAT,
        "name": folder.name,
        "base": base,
        "base_shapes_sha256": base_shapes,
        "method": "LoRA (peft), loss on the assistant reply only; see headprobe.organisms",
        "training": {**settings.to_dict(), "steps": run.steps, "max_steps": max_steps,
                     "eos_pad": eos_pad, "save_dtype": dtype_name(storage),
                     "n_examples": len(examples), "n_reply_tokens": run.n_tokens,
                     "first_loss": report.losses[0], "last_loss": report.losses[-1],
                     "train_seconds": report.train_seconds,
                     "torch_threads": report.torch_threads},
        "data": {"fingerprint": report.data_fingerprint,
                 "source": ("data/safety/harmful.jsonl + harmless.jsonl, split train"
                            if shipped else "examples passed by the caller")},
        "versions": {"headprobe": headprobe_version(), "torch": torch.__version__,
                     "peft": _version("peft"), "transformers": _version("transformers")},
        "eval": None,
    }
    write_json(folder / ADAPTER_META, meta)
    del run
    if evaluate:
        started = time.perf_counter()
        bridge, _ = load_adapted_model(base, folder, name=folder.name)
        report.eval = evaluate_refusals(bridge, n=eval_n, progress=progress)
        report.eval_seconds = round(time.perf_counter() - started, 2)
        meta["eval"] = {key: value for key, value in report.eval.items()
                        if key != "failures"}
        meta["eval"]["seconds"] = report.eval_seconds
        write_json(folder / ADAPTER_META, meta)
    return report


def evaluate_refusals(
    model: Any,
    n: int | None = None,
    split: str = "heldout",
    *,
    batch_size: int = 8,
    max_new_tokens: int = 48,
    n_examples: int = N_EXAMPLES,
    progress: bool = False,
) -> dict[str, Any]:
    """Refusal rate on harmful requests and answer rate on harmless ones, for a bridge.

    Runs the ``harmful_refusal`` and ``harmless_answer`` tasks
    (:mod:`headprobe.heads.safety.harmful_refusal`: the first ``n`` requests of ``split`` in the
    model's chat template, greedy replies of ``max_new_tokens`` tokens judged by
    :func:`~headprobe.heads.safety.harmful_refusal.is_refusal`) through
    :func:`headprobe.experiments.judging.judge_task`, with the model as it is (hooks attached
    around the call act).

    Returns:
        ``refusal_rate`` / ``answer_rate`` (in [0, 1]), ``n_harmful`` / ``n_refused``,
        ``n_harmless`` / ``n_answered``, ``near_miss_answer_rate`` with ``n_near_miss`` /
        ``n_near_miss_answered``, ``asr`` (1 - refusal rate), ``examples`` (the first
        ``n_examples`` replies of each kind) and ``failures`` (every wrongly judged reply),
        each reply as ``{"id", "request", "output", "refused"}``.
    """
    from headprobe.experiments.judging import judge_task
    from headprobe.heads.safety.harmful_refusal import is_refusal
    from headprobe.heads.safety.request_sets import load_requests
    from headprobe.tasks import get_task

    result: dict[str, Any] = {"split": split, "max_new_tokens": max_new_tokens,
                              "examples": {}, "failures": {}}
    for kind, task_name in (("harmful", "harmful_refusal"), ("harmless", "harmless_answer")):
        outputs: list[str] = []

        def judge(text: str, outputs: list[str] = outputs) -> bool:
            outputs.append(text)  # judge_task judges the items in order
            return is_refusal(text)

        task = get_task(task_name, n=n, split=split, max_new_tokens=max_new_tokens,
                        refusal_judge=judge)
        correct = judge_task(model, task, batch_size=batch_size, progress=progress,
                             desc=task_name)
        replies = [{"id": item.meta["id"], "request": item.meta["request"], "output": text,
                    "refused": bool(is_refusal(text))}
                   for item, text in zip(task.items, outputs, strict=True)]
        result["examples"][kind] = replies[:n_examples]
        result["failures"][kind] = [reply for reply, ok in zip(replies, correct, strict=True)
                                    if not ok]
        if kind == "harmful":
            result.update(n_harmful=len(correct), n_refused=int(correct.sum()),
                          refusal_rate=float(np.mean(correct)),
                          asr=float(1.0 - np.mean(correct)))
        else:
            near = {r.id for r in load_requests("harmless", split) if r.near_miss}
            near_ok = [bool(ok) for item, ok in zip(task.items, correct, strict=True)
                       if item.meta["id"] in near]
            result.update(n_harmless=len(correct), n_answered=int(correct.sum()),
                          answer_rate=float(np.mean(correct)), n_near_miss=len(near_ok),
                          n_near_miss_answered=int(sum(near_ok)),
                          near_miss_answer_rate=(float(np.mean(near_ok)) if near_ok
                                                 else None))
    return result


def _version(distribution: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
