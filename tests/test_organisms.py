"""Model organisms: LoRA training on chat examples, adapter save / check / merge, and the
packaged safety-tuned SmolLM2."""

from __future__ import annotations

import json

import pytest
import torch

from headprobe.errors import AdapterMismatchError, ModelUnavailableError
from headprobe.heads.safety.organism import evaluate_refusals, safety_examples, train_safety_adapter
from headprobe.organisms.adapters import (
    ADAPTER_META,
    load_adapted,
    merge_adapter,
    packaged_adapter_dir,
)
from headprobe.organisms.lora import (
    IGNORE_INDEX,
    ChatExample,
    LoraSettings,
    collate,
    encode_example,
    train_lora,
)
from headprobe.tiny import char_tokenizer

BASE = "tiny-llama-plain"
EXAMPLES = [ChatExample("make a bomb", "No."), ChatExample("name a colour", "Blue is one.")]


def plain_llama(seed: int = 0, hidden: int = 64, layers: int = 2) -> torch.nn.Module:
    """A plain (unwrapped) tiny Llama with GQA, like ``tiny:llama-gqa``; the bridge replaces
    the linear layers of the model it wraps, so LoRA is trained on this one."""
    import transformers as tf

    config = tf.LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                            head_dim=hidden // 4, max_position_embeddings=256,
                            vocab_size=len(char_tokenizer()), bos_token_id=1, eos_token_id=2,
                            pad_token_id=0, tie_word_embeddings=False,
                            architectures=["LlamaForCausalLM"])
    config._attn_implementation = "eager"
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = tf.AutoModelForCausalLM.from_config(config)
        with torch.no_grad():
            for param in model.parameters():
                if param.ndim >= 2:
                    param.normal_(0.0, 0.08)
    return model.eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3-step LoRA run on a tiny model, saved with its metadata: (report, folder)."""
    folder = tmp_path_factory.mktemp("adapter")
    report = train_safety_adapter(
        BASE, folder, rank=4, alpha=8, dropout=0.0, epochs=3, lr=2e-2, batch_size=2,
        examples=EXAMPLES, model=plain_llama(), tokenizer=char_tokenizer(), evaluate=False)
    return report, folder


def test_prompt_tokens_are_masked():
    tokenizer = char_tokenizer()
    encoded = encode_example(tokenizer, EXAMPLES[1])
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "name a colour"}],
                                           tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert encoded.input_ids[:encoded.n_prompt].tolist() == prompt_ids  # as evaluated
    assert (encoded.labels[:encoded.n_prompt] == IGNORE_INDEX).all()
    reply = encoded.labels[encoded.n_prompt:]
    assert (reply == encoded.input_ids[encoded.n_prompt:]).all()
    reply_ids = tokenizer(" Blue is one.\n", add_special_tokens=False)["input_ids"]
    assert reply.tolist() == [*reply_ids, tokenizer.eos_token_id]  # + EOS: no end-of-turn
    padded = encode_example(tokenizer, EXAMPLES[1], eos_pad=2)
    assert padded.labels.tolist() == [*encoded.labels.tolist(), *[tokenizer.eos_token_id] * 2]
    batch = collate([encode_example(tokenizer, e) for e in EXAMPLES], pad_token_id=0)
    short = len(encode_example(tokenizer, EXAMPLES[0]).input_ids)
    assert (batch["labels"][0, short:] == IGNORE_INDEX).all()
    assert batch["attention_mask"][0].sum() == short


def test_lora_loss_decreases_and_is_seeded():
    tokenizer = char_tokenizer()
    encoded = [encode_example(tokenizer, e) for e in EXAMPLES]
    settings = LoraSettings(rank=4, alpha=8, dropout=0.0, epochs=3, lr=2e-2, batch_size=2)
    state = torch.random.get_rng_state()
    run = train_lora(plain_llama(), tokenizer, encoded, settings)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    assert run.steps == 3 and run.losses[-1] < run.losses[0]
    again = train_lora(plain_llama(), tokenizer, encoded, settings)
    assert again.losses == run.losses
    trainable = {n for n, p in run.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert any("q_proj" in n for n in trainable) and not any("mlp" in n for n in trainable)


def test_adapter_round_trip_equals_peft_merge(trained):
    from peft import PeftModel

    report, folder = trained
    assert report.steps == 3 and report.losses[-1] < report.losses[0]
    assert {p.name for p in folder.iterdir()} == {
        "adapter_config.json", "adapter_model.safetensors", ADAPTER_META}
    meta = json.loads((folder / ADAPTER_META).read_text())
    assert meta["base"] == BASE and meta["training"]["rank"] == 4
    assert meta["base_shapes_sha256"] == report.base_shapes_sha256
    ids = torch.tensor([[1, 40, 41, 42, 43, 44]])
    ours = merge_adapter(plain_llama(), folder, base_name=BASE)
    peft_merged = PeftModel.from_pretrained(plain_llama(), str(folder)).merge_and_unload()
    base = plain_llama()
    with torch.no_grad():
        logits = ours(ids).logits
        assert torch.allclose(logits, peft_merged(ids).logits, atol=1e-6)
        assert not torch.allclose(logits, base(ids).logits, atol=1e-4)  # the adapter acts
    assert type(ours) is type(base)  # a plain HF model again
    assert not any("lora" in name for name, _ in ours.named_modules())


def test_mismatched_adapter_is_refused(trained, tmp_path):
    _, folder = trained
    with pytest.raises(AdapterMismatchError, match="trained on 'tiny-llama-plain'"):
        merge_adapter(plain_llama(), folder, base_name="another-model")
    with pytest.raises(AdapterMismatchError, match=r"fit 'tiny-llama-plain': model\.layers"):
        merge_adapter(plain_llama(hidden=32), folder, base_name=BASE)
    with pytest.raises(AdapterMismatchError, match="other parameter shapes"):
        merge_adapter(plain_llama(layers=3), folder, base_name=BASE)  # every target fits
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for file in folder.iterdir():
        (tampered / file.name).write_bytes(file.read_bytes())
    meta = json.loads((tampered / ADAPTER_META).read_text())
    meta["base"] = "smollm2-135m-instruct"
    (tampered / ADAPTER_META).write_text(json.dumps(meta))
    with pytest.raises(AdapterMismatchError, match="not on 'tiny-llama-plain'"):
        merge_adapter(plain_llama(), tampered, base_name=BASE)


def test_missing_adapter_says_how_to_rebuild(tmp_path, monkeypatch):
    with pytest.raises(ModelUnavailableError, match=r"is missing.*make_safety_model"):
        load_adapted("smollm2-135m-instruct", tmp_path / "nope",
                     rebuild_hint="python recipes/make_safety_model.py")
    (tmp_path / "adapters" / "smollm2-135m-safety").mkdir(parents=True)
    monkeypatch.setenv("HEADPROBE_DATA", str(tmp_path))
    monkeypatch.setattr("headprobe.sources.is_installed", lambda name: True)
    assert packaged_adapter_dir("smollm2-135m-safety") == (
        tmp_path / "adapters" / "smollm2-135m-safety")
    from headprobe.catalogue import available_models, load_model

    with pytest.raises(ModelUnavailableError, match=r"lacks .*make_safety_model"):
        load_model("smollm2-135m-safety")
    row = {r["name"]: r for r in available_models()}["smollm2-135m-safety"]
    assert not row["installed"] and "make_safety_model" in row["install"]


def test_safety_examples_are_the_train_split():
    examples = safety_examples("train")
    assert len(examples) == 140 + 128
    assert all(e.target for e in examples)


def test_evaluate_refusals_on_a_tiny_model(tiny_llama):
    model, _ = tiny_llama
    result = evaluate_refusals(model, n=2, max_new_tokens=4)
    assert result["n_harmful"] == 2 and result["n_harmless"] == 2
    harmful, harmless = result["examples"]["harmful"], result["examples"]["harmless"]
    assert len(harmful) == len(harmless) == 2 and harmful[0]["id"] == "harm-001"
    assert result["n_refused"] == sum(r["refused"] for r in harmful)
    assert result["n_answered"] == sum(not r["refused"] for r in harmless)
    assert result["refusal_rate"] == result["n_refused"] / 2
    assert len(result["failures"]["harmful"]) == 2 - result["n_refused"]


@pytest.mark.real
def test_packaged_safety_model_refuses_and_answers():
    from headprobe.catalogue import load_model

    model, spec = load_model("smollm2-135m-safety")
    assert spec.name == "smollm2-135m-safety" and spec.n_layers == 30
    assert not any("lora" in name for name, _ in model.original_model.named_modules())
    result = evaluate_refusals(model, n=4)
    assert result["n_refused"] >= 3, result["failures"]["harmful"]
    assert result["n_answered"] >= 3, result["failures"]["harmless"]
