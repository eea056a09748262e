"""LoRA fine-tuning of a plain Hugging Face causal LM on chat examples, loss on the reply only.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") freezes every
weight ``W`` [out, in] and learns ``W + (alpha / r) B A`` with ``A`` [r, in] (random init)
and ``B`` [out, r] (zero init), so the tuned model starts as the base model and the adapter
is ``r (in + out)`` numbers per target matrix. :mod:`peft` injects and saves the adapter.

An example is one user turn (the prompt) and one assistant turn (the target), rendered with
the tokenizer's own chat template exactly as :class:`headprobe.inputs.Chat` prompts are
rendered at evaluation time: the prompt part is the template with
``add_generation_prompt=True``, tokenized alone, and the reply is the rest of the full
rendering (e.g. ``"I can't help with that.<|im_end|>\\n"`` for ChatML). Only the reply's
tokens carry labels; prompt tokens get ``-100`` (ignored by the loss).

Why a plain loop and not ``transformers.Trainer``: the organisms train for about a hundred
steps on a few hundred short examples on the CPU. A loop of AdamW, a linear warm-up/decay
schedule and gradient clipping is thirty lines, needs no ``accelerate`` plumbing, and keeps
the seeding local: every random draw (LoRA's ``A`` init, dropout, the shuffling) happens
inside :func:`torch.random.fork_rng`, so the global RNG is the same afterwards.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from headprobe.errors import PromptFormatError, TaskError

IGNORE_INDEX = -100  # label of a token the loss skips (the prompt, padding)
ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ChatExample:
    """One training example: a user request and the assistant reply to learn."""

    prompt: str
    target: str


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of one rendered example and its labels.

    Attributes:
        input_ids: [T] prompt ids followed by reply ids.
        labels: [T] ``IGNORE_INDEX`` on the prompt, the ids themselves on the reply.
        n_prompt: number of prompt tokens (the masked prefix).
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    n_prompt: int


@dataclass(frozen=True)
class LoraSettings:
    """Hyperparameters of one LoRA run (recorded with the adapter).

    Attributes:
        rank: LoRA rank ``r``.
        alpha: LoRA ``alpha``; the update is scaled by ``alpha / rank``.
        dropout: dropout on the LoRA branch's input.
        target_modules: names of the linear layers that get an adapter.
        epochs: passes over the examples.
        lr: peak AdamW learning rate (linear warm-up over ``warmup`` of the steps, then
            linear decay to 0).
        batch_size: examples per step (right-padded).
        seed: seeds the LoRA init, dropout and the per-epoch shuffling.
        weight_decay: AdamW weight decay of the LoRA matrices.
        warmup: fraction of the steps spent warming up.
        max_grad_norm: gradients are clipped to this global norm.
    """

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ATTENTION_MODULES
    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 8
    seed: int = 0
    weight_decay: float = 0.0
    warmup: float = 0.1
    max_grad_norm: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["target_modules"] = list(self.target_modules)
        return data


@dataclass
class LoraRun:
    """What :func:`train_lora` returns.

    Attributes:
        model: the ``peft.PeftModel`` (the base model's layers now hold the adapter).
        losses: mean reply-token loss of every step, in order.
        steps: optimizer steps taken.
        seconds: wall time of the loop (not the model loading).
        n_tokens: reply tokens trained on per epoch.
    """

    model: Any
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    n_tokens: int = 0


Render = Callable[[Any, ChatExample], tuple[str, str]]


def render_chat_example(tokenizer: Any, example: ChatExample) -> tuple[str, str]:
    """``(prompt_text, reply_text)`` of ``example`` in the tokenizer's chat template.

    ``prompt_text`` is the user turn with the assistant header (what
    :class:`headprobe.inputs.Chat` renders at evaluation time); ``reply_text`` is what the
    full two-turn rendering adds after it.

    Raises:
        PromptFormatError: no chat template, or a template whose two-turn rendering does not
            start with its one-turn rendering.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise PromptFormatError("the tokenizer has no chat template; set "
                                "tokenizer.chat_template or pass render= to build the texts")
    user = [{"role": "user", "content": example.prompt}]
    prompt_text = str(tokenizer.apply_chat_template(user, tokenize=False,
                                                    add_generation_prompt=True))
    full = str(tokenizer.apply_chat_template(
        [*user, {"role": "assistant", "content": example.target}], tokenize=False))
    if not full.startswith(prompt_text):
        raise PromptFormatError("the chat template renders the prompt differently once a reply "
                                "follows it, so the reply cannot be cut out; pass render=")
    return prompt_text, full[len(prompt_text):]


def encode_example(tokenizer: Any, example: ChatExample,
                   render: Render = render_chat_example, *, eos_pad: int = 0
                   ) -> EncodedExample:
    """Tokenize one example; the prompt is masked with :data:`IGNORE_INDEX`.

    The prompt and the reply are tokenized separately (no special tokens added), so the
    prompt ids are exactly the evaluation prompt's. When the reply holds no EOS token (a
    template without an end-of-turn token) the tokenizer's EOS is appended, so the model
    learns to stop.

    Args:
        eos_pad: EOS tokens appended after the rendered reply, with labels, so that the
            model stays stopped after its end of turn (it emits EOS again instead of
            inventing a next turn). This matters when replies are judged on a fixed number
            of greedy tokens that does not stop at EOS: the judge then sees the reply only.
    """
    prompt_text, reply_text = render(tokenizer, example)
    prompt_ids = list(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    reply_ids = list(tokenizer(reply_text, add_special_tokens=False)["input_ids"])
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None and eos not in reply_ids:
        reply_ids.append(int(eos))
    if eos_pad:
        if eos is None:
            raise TaskError("eos_pad needs a tokenizer with an EOS token")
        reply_ids.extend([int(eos)] * eos_pad)
    if not prompt_ids or not reply_ids:
        raise TaskError(f"example {example.prompt[:40]!r} has an empty prompt or reply")
    ids = torch.tensor(prompt_ids + reply_ids, dtype=torch.long)
    labels = ids.clone()
    labels[:len(prompt_ids)] = IGNORE_INDEX
    return EncodedExample(ids, labels, len(prompt_ids))


def collate(examples: Sequence[EncodedExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad examples into ``input_ids`` / ``labels`` / ``attention_mask``, each [B, T]."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        length = len(example.input_ids)
        ids[row, :length] = example.input_ids
        labels[row, :length] = example.labels
        mask[row, :length] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def lora_config(settings: LoraSettings) -> Any:
    """The ``peft.LoraConfig`` of ``settings`` (causal LM, no bias training)."""
    from peft import LoraConfig

    return LoraConfig(r=settings.rank, lora_alpha=settings.alpha,
                      lora_dropout=settings.dropout,
                      target_modules=list(settings.target_modules), bias="none",
                      task_type="CAUSAL_LM")


def train_lora(
    model: Any,
    tokenizer: Any,
    examples: Sequence[EncodedExample],
    settings: LoraSettings,
    *,
    base_name: str | None = None,
    max_steps: int | None = None,
    progress: bool = False,
) -> LoraRun:
    """Fine-tune LoRA adapters on ``model`` (a plain HF causal LM, not a bridge), in place.

    Each step is one AdamW update on the mean cross-entropy of the reply tokens of
    ``batch_size`` examples (shuffled every epoch by a generator seeded with
    ``settings.seed``). All random draws run inside :func:`torch.random.fork_rng`, so the
    global RNG is left as it was, and one seed gives one adapter.

    Args:
        model: the base model; its parameters are frozen and the adapter is injected.
        tokenizer: gives the pad id.
        examples: encoded examples (:func:`encode_example`).
        settings: the hyperparameters.
        base_name: recorded in peft's adapter config.
        max_steps: stop after this many steps (tests); ``None`` runs every epoch.
        progress: show a tqdm bar with the loss.

    Returns:
        :class:`LoraRun` with the peft model (in eval mode) and the loss of every step.
    """
    from peft import get_peft_model

    if not examples:
        raise TaskError("no training examples")
    pad = next((int(v) for v in (getattr(tokenizer, "pad_token_id", None),
                                  getattr(tokenizer, "eos_token_id", None)) if v is not None), 0)
    per_epoch = math.ceil(len(examples) / settings.batch_size)
    total = per_epoch * settings.epochs
    if max_steps is not None:
        total = min(total, max_steps)
    warmup = max(1, round(settings.warmup * total))
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(settings.seed)
        peft_model = get_peft_model(model, lora_config(settings))
        # peft records the model's load path (a cache folder); record the base's name instead
        peft_model.peft_config["default"].base_model_name_or_path = base_name
        params = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=settings.lr,
                                      weight_decay=settings.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min((step + 1) / warmup,
                                        max(0.0, (total - step) / max(1, total - warmup))))
        shuffler = torch.Generator().manual_seed(settings.seed)
        run = LoraRun(peft_model, n_tokens=sum(int((e.labels != IGNORE_INDEX).sum())
                                               for e in examples))
        peft_model.train()
        started = time.perf_counter()
        bar = tqdm(total=total, desc="lora", disable=not progress)
        while run.steps < total:
            order = torch.randperm(len(examples), generator=shuffler).tolist()
            for start in range(0, len(order), settings.batch_size):
                if run.steps >= total:
                    break
                batch = collate([examples[i] for i in order[start:start + settings.batch_size]],
                                pad)
                loss = peft_model(**{k: v.to(device) for k, v in batch.items()}).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                run.losses.append(float(loss.detach()))
                run.steps += 1
                bar.update(1)
                bar.set_postfix(loss=f"{run.losses[-1]:.3f}")
        bar.close()
        run.seconds = time.perf_counter() - started
    peft_model.eval()
    return run
