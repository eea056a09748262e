"""The examples of CONTRIBUTING.md's "Where new things go", extracted and run on tiny models.

Each example is the ``python`` block after a line ``<!-- example: NAME -->``; it is executed
as written (as the module it would be) and then checked by ``CHECKS[NAME]``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from headprobe.inputs import Chat, ImagePrompt, encode_prompts, iter_batches
from headprobe.tasks.base import Task
from headprobe.tiny import tiny_model

CONTRIBUTING = Path(__file__).resolve().parent.parent / "CONTRIBUTING.md"
EXAMPLE = re.compile(r"<!-- example: ([\w-]+) -->\s*```python\n(.*?)```", re.DOTALL)


def examples() -> dict[str, str]:
    """``{name: code}`` of every marked example block of CONTRIBUTING.md."""
    found: dict[str, str] = {}
    for name, code in EXAMPLE.findall(CONTRIBUTING.read_text(encoding="utf-8")):
        assert name not in found, f"two examples are named {name!r}"
        found[name] = code
    return found


def run_example(name: str) -> ModuleType:
    """Execute example ``name`` as a module and return it."""
    module = ModuleType(f"contributing_example_{name.replace('-', '_')}")
    sys.modules[module.__name__] = module  # dataclasses read their module's globals
    exec(compile(examples()[name], f"CONTRIBUTING.md:{name}", "exec"), module.__dict__)
    return module


@pytest.fixture(scope="module")
def tiny_llava():
    return tiny_model("llava")


def _pattern_forward(model: Any, spec: Any, batch: Any) -> list[torch.Tensor]:
    """Run ``batch`` with a pattern hook on every layer; the [B, H, T, T] patterns."""
    patterns: list[torch.Tensor] = []
    hooks = [(spec.hooks.at("pattern", layer), lambda t, hook: patterns.append(t.detach()))
             for layer in range(spec.n_layers)]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        logits = model(batch.tokens, **batch.forward_kwargs())
    assert torch.isfinite(logits.float()).all()
    return patterns


def check_chat_task(module: ModuleType, models: dict[str, Any]) -> None:
    model, spec = models["llama"]
    task = module.make_task()
    assert isinstance(task, Task) and task.name == "capital_chat" and len(task) == 6
    assert all(isinstance(prompt, Chat) for prompt in task.prompts)
    encoded = encode_prompts(model, task.prompts, spec)
    for item, enc in zip(task.items, encoded, strict=True):
        country = item.meta["country"]
        assert enc.text == f"<s>user: What is the capital of {country}?\nassistant:"
        span = enc.spans["country"]
        assert model.tokenizer.decode(enc.ids[span.start:span.stop]).replace(" ", "") == country
    with_system = encode_prompts(model, module.make_task(n=2, system="Be brief.").prompts, spec)
    assert with_system[0].text.startswith("<s>system: Be brief.\nuser:")
    (batch,) = list(iter_batches(encoded, len(encoded), padding_side="left"))
    patterns = _pattern_forward(model, spec, batch)
    assert len(patterns) == spec.n_layers
    real = batch.attention_mask
    rows = patterns[0].float().sum(-1)  # [B, H, T]: each real query's pattern sums to 1
    assert torch.allclose(rows[real[:, None, :].expand_as(rows)], torch.ones(()), atol=1e-4)


def check_image_task(module: ModuleType, models: dict[str, Any]) -> None:
    model, spec = models["llava"]
    task = module.make_task(n=6, seed=1)
    assert isinstance(task, Task) and task.name == "square_side" and len(task) == 6
    assert all(isinstance(prompt, ImagePrompt) for prompt in task.prompts)
    assert module.make_task(n=2, seed=1).prompts[0].images[0].equal(task.prompts[0].images[0])
    encoded = encode_prompts(model, task.prompts, spec)
    for item, enc in zip(task.items, encoded, strict=True):
        image = enc.spans["image"]
        assert image.grid == (4, 4) and len(image) == 16
        assert enc.extra["pixel_values"].shape == (1, 3, 32, 32)
        # the brightest patch is on the side the answer names
        pixels = enc.extra["pixel_values"][0].float().mean(0)  # [32, 32]
        patches = pixels.reshape(4, 8, 4, 8).mean((1, 3))  # [4, 4] patch means
        brightest = int(patches.flatten().argmax())
        _, col = image.patch_coordinates(image.start + brightest)
        assert (col < 2) == item.meta["left"], (item.meta, patches)
        question = enc.spans["question"]
        assert question.start >= image.stop
    (batch,) = list(iter_batches(encoded, len(encoded), padding_side="right"))
    assert batch.extra["pixel_values"].shape == (6, 3, 32, 32)
    patterns = _pattern_forward(model, spec, batch)
    image_mask = batch.span_mask("image")  # [B, T]
    last = batch.last
    for pattern in patterns:  # the last query reads text and image positions
        reads = pattern[torch.arange(batch.size), :, last]  # [B, H, T]
        assert (reads * image_mask[:, None, :]).sum(-1).gt(0).all()
        assert (reads * (~image_mask & batch.attention_mask)[:, None, :]).sum(-1).gt(0).all()


def check_decode_scorer(module: ModuleType, models: dict[str, Any]) -> None:
    """Cached and recomputed decoding give the same scores, under left padding too."""
    model, _ = models["llama"]
    scorer = module.SCORER
    prompts = ["ab ab ab", "hello there, hello", "x"]  # different lengths: padding
    cached = scorer(model, prompts, progress=False, batch_size=3)
    plain = scorer(model, prompts, progress=False, batch_size=3, use_cache=False)
    alone = [scorer(model, [p], progress=False, batch_size=1) for p in prompts]
    # steps 1..3 feed generated tokens 1..3 back; the 4th token is never a query
    assert cached.meta["n_steps_scored"] == len(prompts) * (4 - 1)
    score = torch.tensor(cached["score"].to_numpy())
    torch.testing.assert_close(score, torch.tensor(plain["score"].to_numpy()),
                               atol=1e-5, rtol=1e-5)
    mean_alone = torch.stack([torch.tensor(t["score"].to_numpy()) for t in alone]).mean(0)
    torch.testing.assert_close(score, mean_alone, atol=1e-5, rtol=1e-5)
    assert bool(((score > 0) & (score < 1)).all())  # some mass on the prompt, some elsewhere
    assert "generation" in scorer.needs


def check_head_type_example(module: ModuleType, models: dict[str, Any]) -> None:
    """The example's answer holds, and a wrong answer is reported."""
    import dataclasses

    from headprobe.examples import Example, ExampleMismatch

    example = module.example()
    assert isinstance(example, Example) and example.kind == "hand-set"
    table = example.check()
    assert table.heads(k=1) == [(0, 0)]
    with pytest.raises(ExampleMismatch, match="L0H0"):
        dataclasses.replace(example, scores={(0, 0): 0.9}).check(table)


CHECKS: dict[str, Callable[[ModuleType, dict[str, Any]], None]] = {
    "chat-task": check_chat_task,
    "image-task": check_image_task,
    "decode-scorer": check_decode_scorer,
    "head-type-example": check_head_type_example,
}


def test_every_example_has_a_check():
    names = set(examples())
    assert {"chat-task", "image-task", "decode-scorer", "head-type-example"} <= names
    assert names == set(CHECKS), "add a check for each example block of CONTRIBUTING.md"


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_example_runs(name, tiny_llama, tiny_llava):
    module = run_example(name)
    CHECKS[name](module, {"llama": tiny_llama, "llava": tiny_llava})
