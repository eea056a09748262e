"""The project's OCR model: a tiny LLaVA trained to read rendered strings (``ocr-reader``).

No vision-language model can be installed offline, so headprobe trains one to validate the
``ocr`` scorer on (Baek et al. 2025, "How Do Large Vision-Language Models See Text in Image?
Unveiling the Distinctive Role of OCR Heads"). It is a real Hugging Face architecture,
``LlavaForConditionalGeneration``: a CLIP vision tower (64 x 64 images, 8 x 8 patches, an
8 x 8 grid, the CLS token dropped), LLaVA's two-layer projector and a Llama text model with
grouped-query attention, over the character-level tokenizer of :mod:`headprobe.tiny` (one
token per character, so answer token i is character i of the string).

Training data (all rendered on the fly, :mod:`headprobe.heads.ocr.text_images`):

- image prompts ``<s><image>\\nRead the text:`` (the image a string of 3-5 characters at a
  random place, size, contrast and noise) with the string then ``</s>`` as the answer;
- text prompts (``text_share`` of the batches): a line of random lower-case filler holding
  the string in brackets, then ``\\nRead the text:``, with the same answer. They teach the
  model to copy from its context, so it has retrieval heads to compare OCR heads with on the
  same model.

The loss is the cross-entropy of the answer tokens and ``</s>``, plus (image batches) an
auxiliary patch loss used in training only: a linear read-out of each patch's vision feature
(the projector's input) predicts which character covers most of the patch (or none). Without
it the vision tower, trained from scratch, sat at the unigram loss for 1000+ steps in our
pilot runs; with it the model learns to read. The read-out is dropped: the saved model is a
plain ``LlavaForConditionalGeneration``. The learning rate is 5e-4: at 1e-3 and above the
CLIP tower did not learn at all in pilots. :func:`train_ocr_model`
trains from a seed and saves a folder (``config.json``, ``model.safetensors``,
``training.json``); :func:`load_ocr_model` rebuilds the model, tokenizer and processor from
such a folder (the shipped one is ``data/ocr_model``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from headprobe.heads.ocr.text_images import OCR_ALPHABET, RenderedText, render_random
from headprobe.paths import data_path

PROMPT = "<image>\nRead the text:"
TEXT_PROMPT_TAIL = "\nRead the text:"
FILLER = "abcdefghijklmnopqrstuvwxyz   "
OCR_MODEL_SUBDIR = "ocr_model"


def ocr_model_dir() -> Path:
    """The OCR model's folder: ``data/ocr_model`` in the data folder
    (:func:`headprobe.paths.data_dir`, which ``$HEADPROBE_DATA`` overrides)."""
    return data_path(OCR_MODEL_SUBDIR)


@dataclass(frozen=True)
class OCRModelSize:
    """Sizes of the OCR model's vision tower and text model."""

    image_size: int = 64
    patch_size: int = 8
    vision_hidden: int = 128
    vision_layers: int = 3
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 8
    text_kv_heads: int = 4
    head_dim: int = 16


@dataclass
class TrainSettings:
    """Training settings (the defaults made the shipped weights)."""

    steps: int = 6000
    batch_size: int = 32
    learning_rate: float = 5e-4
    warmup: int = 150
    weight_decay: float = 0.01
    text_share: float = 0.25
    patch_loss_weight: float = 1.0
    init_from: str | None = None  # a saved model folder to continue from (a second stage)
    seed: int = 0
    size: OCRModelSize = field(default_factory=OCRModelSize)


def build_ocr_model(size: OCRModelSize | None = None, seed: int = 0) -> tuple[Any, Any, Any]:
    """A fresh (randomly initialised from ``seed``) OCR model: ``(hf_model, tokenizer,
    processor)``; the global RNG is left as it was."""
    import transformers as tf

    from headprobe.tiny import TinyImageTextProcessor, char_tokenizer

    size = size or OCRModelSize()
    tokenizer = char_tokenizer(image_token=True)
    config = ocr_config(size, len(tokenizer))
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = tf.LlavaForConditionalGeneration(config)
    finally:
        torch.random.set_rng_state(state)
    processor = TinyImageTextProcessor(tokenizer, image_size=size.image_size,
                                       patch_size=size.patch_size)
    return model, tokenizer, processor


def ocr_config(size: OCRModelSize, vocab_size: int) -> Any:
    """The ``LlavaConfig`` of the OCR model (eager attention everywhere)."""
    import transformers as tf

    common = {"vocab_size": vocab_size, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    text = tf.LlamaConfig(hidden_size=size.text_hidden, intermediate_size=3 * size.text_hidden,
                          num_hidden_layers=size.text_layers,
                          num_attention_heads=size.text_heads,
                          num_key_value_heads=size.text_kv_heads, head_dim=size.head_dim,
                          max_position_embeddings=256, tie_word_embeddings=False, **common)
    vision = tf.CLIPVisionConfig(hidden_size=size.vision_hidden,
                                 intermediate_size=2 * size.vision_hidden,
                                 num_hidden_layers=size.vision_layers,
                                 num_attention_heads=size.vision_heads,
                                 image_size=size.image_size, patch_size=size.patch_size,
                                 projection_dim=size.vision_hidden)
    config = tf.LlavaConfig(vision_config=vision, text_config=text,
                            image_token_index=vocab_size - 1,
                            vision_feature_select_strategy="default", vision_feature_layer=-1,
                            projector_hidden_act="gelu",
                            architectures=["LlavaForConditionalGeneration"], **common)
    config._attn_implementation = "eager"
    config.text_config._attn_implementation = "eager"
    config.vision_config._attn_implementation = "eager"
    return config


def text_prompt(needle: str, rng: np.random.Generator) -> tuple[str, tuple[int, int]]:
    """A text-only prompt hiding ``needle`` in brackets inside random filler, and the
    character range of the needle in it."""
    before = "".join(FILLER[int(i)] for i in rng.integers(0, len(FILLER),
                                                          int(rng.integers(4, 30))))
    after = "".join(FILLER[int(i)] for i in rng.integers(0, len(FILLER),
                                                         int(rng.integers(4, 30))))
    text = f"{before}[{needle}]{after}{TEXT_PROMPT_TAIL}"
    start = len(before) + 1
    return text, (start, start + len(needle))


def _batch(tokenizer: Any, prompts: Sequence[str], answers: Sequence[str], n_image_tokens: int
           ) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (answer + ``</s>``)."""
    rows, labels = [], []
    for prompt, answer in zip(prompts, answers, strict=True):
        expanded = prompt.replace("<image>", "<image>" * n_image_tokens)
        head = tokenizer(expanded)["input_ids"]
        tail = tokenizer(answer, add_special_tokens=False)["input_ids"] + [
            tokenizer.eos_token_id]
        rows.append(head + tail)
        labels.append([-100] * len(head) + tail)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    target = torch.full((len(rows), width), -100, dtype=torch.long)
    for b, (row, label) in enumerate(zip(rows, labels, strict=True)):
        ids[b, :len(row)] = torch.tensor(row)
        mask[b, :len(row)] = 1
        target[b, :len(label)] = torch.tensor(label)
    return {"input_ids": ids, "attention_mask": mask, "labels": target}


def training_batch(step: int, rng: np.random.Generator, settings: TrainSettings,
                   tokenizer: Any, processor: Any) -> dict[str, torch.Tensor]:
    """Batch ``step``: text-only on every ``1 / text_share``-th step, else rendered images."""
    size = settings.size
    every = round(1 / settings.text_share) if settings.text_share > 0 else 0
    if every and step % every == every - 1:
        needles = [render_random(rng, "train", image_size=size.image_size).text
                   for _ in range(settings.batch_size)]
        prompts = [text_prompt(needle, rng)[0] for needle in needles]
        return _batch(tokenizer, prompts, needles, processor.n_image_tokens)
    samples = [render_random(rng, "train", image_size=size.image_size)
               for _ in range(settings.batch_size)]
    batch = _batch(tokenizer, [PROMPT] * len(samples), [s.text for s in samples],
                   processor.n_image_tokens)
    batch["pixel_values"] = processor.preprocess([s.image for s in samples])
    grid = (size.image_size // size.patch_size,) * 2
    batch["patch_labels"] = torch.stack([patch_labels(s, grid) for s in samples])
    return batch


def patch_labels(sample: RenderedText, grid: tuple[int, int]) -> torch.Tensor:
    """[rows * cols] long label of each patch for the auxiliary patch loss: 1 + the alphabet
    index of the character covering most of the patch (at least a quarter of it), else 0."""
    from headprobe.image_patches import intersection_areas, patch_boxes

    boxes = patch_boxes(grid, sample.image.shape[:2])
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    best = np.zeros(len(boxes))
    labels = np.zeros(len(boxes), dtype=np.int64)
    for char, char_box in zip(sample.text, sample.char_boxes, strict=True):
        share = intersection_areas(boxes, char_box) / area
        better = (share > best) & (share >= 0.25)
        labels[better] = 1 + OCR_ALPHABET.index(char)
        best = np.maximum(best, share)
    return torch.from_numpy(labels)


def train_ocr_model(out_dir: str | Path, settings: TrainSettings | None = None, *,
                    progress: bool = True, eval_samples: Sequence[RenderedText] | None = None,
                    log_every: int = 100) -> dict[str, Any]:
    """Train the OCR model from scratch and save it to ``out_dir``.

    AdamW with linear warm-up then cosine decay, gradients clipped at 1. Every ``log_every``
    steps the running loss is logged (and, with ``eval_samples``, the exact-match reading
    accuracy on them). Returns the training record saved as ``training.json``.
    """
    from tqdm.auto import tqdm

    settings = settings or TrainSettings()
    if settings.init_from is not None:
        model, tokenizer, processor = load_ocr_model(settings.init_from)
    else:
        model, tokenizer, processor = build_ocr_model(settings.size, settings.seed)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "embed" in n]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=settings.learning_rate, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < settings.warmup:
            return (step + 1) / settings.warmup
        progress_ = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
        return 0.5 * (1 + math.cos(math.pi * progress_))

    # Auxiliary patch loss (training only, dropped from the saved model): a linear read-out
    # of each patch's vision feature (the projector's input) predicts the character on it.
    # It gives the vision tower a dense signal, so it learns to see characters in minutes.
    patch_head = torch.nn.Linear(settings.size.vision_hidden, 1 + len(OCR_ALPHABET))
    optimizer.add_param_group({"params": list(patch_head.parameters()), "weight_decay": 0.0})
    captured: dict[str, torch.Tensor] = {}
    handle = model.model.multi_modal_projector.register_forward_pre_hook(
        lambda module, args: captured.__setitem__("features", args[0]))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    # the image stream: seed + 1 (a continued stage: seed + 2, so it draws new images)
    rng = np.random.default_rng(settings.seed + (2 if settings.init_from else 1))
    log: list[dict[str, float]] = []
    running, running_patch, count = 0.0, 0.0, 0
    started = time.perf_counter()
    bar = tqdm(range(settings.steps), desc="train OCR model", disable=not progress)
    for step in bar:
        batch = training_batch(step, rng, settings, tokenizer, processor)
        labels = batch.pop("patch_labels", None)
        captured.clear()
        loss = model(**batch).loss
        if labels is not None and settings.patch_loss_weight > 0:
            logits = patch_head(captured["features"])  # [B, P, 1 + alphabet]
            patch_loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1),
                                                           labels.flatten())
            running_patch += patch_loss.item()
            loss = loss + settings.patch_loss_weight * patch_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        running, count = running + loss.item(), count + 1
        if (step + 1) % log_every == 0 or step + 1 == settings.steps:
            entry = {"step": step + 1, "loss": running / count,
                     "patch_loss": running_patch / count,
                     "seconds": time.perf_counter() - started}
            if eval_samples:
                model.eval()
                entry["accuracy"] = reading_accuracy(model, tokenizer, processor,
                                                     eval_samples)["exact_match"]
                model.train()
            log.append(entry)
            if progress:
                bar.write(str({k: round(v, 4) for k, v in entry.items()}))
            bar.set_postfix({k: round(v, 3) for k, v in entry.items() if k != "step"})
            running, running_patch, count = 0.0, 0.0, 0
    handle.remove()
    model.eval()
    record = {"settings": {**asdict(settings), "size": asdict(settings.size)},
              "train_seconds": time.perf_counter() - started, "log": log,
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    save_ocr_model(model, out_dir, record)
    return record


def save_ocr_model(model: Any, out_dir: str | Path, record: dict[str, Any]) -> Path:
    """Write ``config.json``, ``model.safetensors`` (fp32) and ``training.json``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size = record["settings"]["size"]
    (out / "config.json").write_text(json.dumps({"size": size}, indent=1) + "\n")
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    return out


def load_ocr_model(folder: str | Path | None = None) -> tuple[Any, Any, Any]:
    """``(hf_model, tokenizer, processor)`` of a saved OCR model (default: the shipped
    ``data/ocr_model``), in eval mode, fp32 on the CPU.

    Raises:
        FileNotFoundError: the folder lacks ``config.json`` or ``model.safetensors``.
    """
    from safetensors.torch import load_file

    folder = Path(folder) if folder is not None else ocr_model_dir()
    for name in ("config.json", "model.safetensors"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} is missing: train the OCR model with "
                                    "`python recipes/train_ocr_model.py`")
    size = OCRModelSize(**json.loads((folder / "config.json").read_text())["size"])
    model, tokenizer, processor = build_ocr_model(size)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    model.eval()
    return model, tokenizer, processor


@torch.no_grad()
def read_images(model: Any, tokenizer: Any, processor: Any, images: Sequence[Any], *,
                max_new_tokens: int = 8, batch_size: int = 64) -> list[str]:
    """Greedy readings of ``images`` by the HF model (plain forwards, no headprobe hooks):
    the text generated after :data:`PROMPT` up to ``</s>``."""
    out: list[str] = []
    for begin in range(0, len(images), batch_size):
        chunk = list(images[begin:begin + batch_size])
        batch = processor(text=[PROMPT] * len(chunk), images=chunk, return_tensors="pt")
        ids = batch["input_ids"]
        pixel_values = batch["pixel_values"].to(next(model.parameters()).dtype)
        result = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                pixel_values=pixel_values, max_new_tokens=max_new_tokens,
                                do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                pad_token_id=tokenizer.pad_token_id)
        out.extend(tokenizer.decode(row[ids.shape[1]:], skip_special_tokens=True)
                   for row in result)
    return out


def reading_accuracy(model: Any, tokenizer: Any, processor: Any,
                     samples: Sequence[RenderedText], **kwargs: Any) -> dict[str, Any]:
    """Exact-match and per-character reading accuracy of ``samples``.

    Returns ``{"exact_match", "char_accuracy", "n", "readings"}``; ``char_accuracy`` compares
    position by position over the longer of the two strings.
    """
    readings = read_images(model, tokenizer, processor, [s.image for s in samples], **kwargs)
    exact = [r == s.text for r, s in zip(readings, samples, strict=True)]
    right = total = 0
    for reading, sample in zip(readings, samples, strict=True):
        width = max(len(reading), len(sample.text))
        right += sum(a == b for a, b in zip(reading, sample.text, strict=False))
        total += width
    return {"exact_match": float(np.mean(exact)), "char_accuracy": right / max(total, 1),
            "n": len(samples), "readings": readings}


__all__ = [
    "OCR_ALPHABET",
    "OCR_MODEL_SUBDIR",
    "PROMPT",
    "OCRModelSize",
    "TrainSettings",
    "build_ocr_model",
    "load_ocr_model",
    "ocr_model_dir",
    "read_images",
    "reading_accuracy",
    "save_ocr_model",
    "text_prompt",
    "train_ocr_model",
]
