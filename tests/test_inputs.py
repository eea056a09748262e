import pytest
import torch

from headprobe.errors import ContextLengthError, EmptyPromptsError
from headprobe.inputs import (
    Batch,
    Chat,
    Encoded,
    ImagePrompt,
    PromptFormatError,
    Text,
    encode,
    encode_prompts,
    fingerprint,
    iter_batches,
    tokenize_prompts,
)
from headprobe.tiny import tiny_model
from headprobe.types import Span


@pytest.fixture(scope="module")
def tiny_llava():
    """The tiny LLaVA-style model: 4 x 4 patch grid, 16 image tokens per image."""
    return tiny_model("llava")


def _image(seed: int, height: int = 20, width: int = 30) -> torch.Tensor:
    """[H, W, 3] uint8 noise from a local generator."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)


def test_tokenize_prepends_bos(tiny_llama):
    model, spec = tiny_llama
    (ids,) = tokenize_prompts(model, ["abc"], spec)
    assert ids.tolist()[0] == spec.bos_token_id and len(ids) == 4


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_layout(side):
    lists = [torch.tensor([5, 6, 7]), torch.tensor([8])]
    (batch,) = list(iter_batches(lists, 4, pad_token_id=0, padding_side=side))
    assert batch.tokens.shape == (2, 3)
    assert batch.lengths.tolist() == [3, 1]
    row = batch.tokens[1].tolist()
    assert row == ([0, 0, 8] if side == "left" else [8, 0, 0])
    assert batch.position_ids[1][batch.attention_mask[1]].tolist() == [0]
    assert batch.last.tolist() == [2, 2 if side == "left" else 0]
    assert batch.start.tolist() == [0, 2 if side == "left" else 0]


def test_key_query_mask_is_causal_and_excludes_pads():
    (batch,) = list(iter_batches([torch.tensor([1, 2, 3]), torch.tensor([4])], 2,
                                 padding_side="left"))
    mask = batch.key_query_mask()
    assert mask[0].equal(torch.ones(3, 3, dtype=torch.bool).tril())
    assert mask[1].sum() == 1 and mask[1, 2, 2]


def test_empty_and_too_long(tiny_llama):
    model, spec = tiny_llama
    with pytest.raises(EmptyPromptsError):
        tokenize_prompts(model, [], spec)
    with pytest.raises(EmptyPromptsError, match="prompt 1"):
        tokenize_prompts(model, ["ok", ""], spec)
    with pytest.raises(ContextLengthError, match="prompt 0 has 301 tokens"):
        tokenize_prompts(model, ["x" * 300], spec)
    with pytest.raises(TypeError):
        tokenize_prompts(model, "not a list", spec)


def test_fingerprint_changes_with_data():
    a = [torch.tensor([1, 2, 3])]
    assert fingerprint(a) == fingerprint([torch.tensor([1, 2, 3])])
    assert fingerprint(a) != fingerprint([torch.tensor([1, 2, 4])])


# --- prompt items, spans and extra inputs ---------------------------------------------------

def _piece(model, encoded, name):
    """The text of span ``name`` (the char tokenizer decodes with spaces between tokens)."""
    span = encoded.spans[name]
    return model.tokenizer.decode(encoded.ids[span.start:span.stop]).replace(" ", "")


def test_text_spans_map_to_their_tokens(tiny_llama):
    model, spec = tiny_llama
    text = "the key is 42, keep it"
    item = Text(text, spans={"needle": "42", "head": (0, 3), "it": "it"})
    encoded = encode(model, item, spec)
    assert encoded.ids.tolist() == tokenize_prompts(model, [text], spec)[0].tolist()
    # BOS, then one token per character: character c is position c + 1
    assert encoded.spans["needle"] == Span(12, 14)
    assert _piece(model, encoded, "needle") == "42"
    assert _piece(model, encoded, "head") == "the"
    assert encoded.spans["it"] == Span(1 + text.index("it"), 3 + text.index("it"))
    no_bos = encode(model, item, spec, prepend_bos=False)
    assert no_bos.spans["needle"] == Span(11, 13)


@pytest.mark.real
def test_text_spans_on_the_real_tokenizer(smol):
    model, spec = smol
    text = "The secret word is pineapple. Remember it."
    encoded = encode(model, Text(text, spans={"needle": "pineapple"}), spec)
    span = encoded.spans["needle"]
    assert model.tokenizer.decode(encoded.ids[span.start:span.stop]).strip() == "pineapple"
    assert encoded.ids.tolist() == tokenize_prompts(model, [text], spec)[0].tolist()


def test_text_span_errors(tiny_llama):
    model, spec = tiny_llama
    with pytest.raises(PromptFormatError, match=r"'needle'.*does not occur"):
        encode(model, Text("abc", spans={"needle": "zz"}), spec)
    with pytest.raises(PromptFormatError, match=r"prompt 1.*character range"):
        encode_prompts(model, ["ok", Text("abc", spans={"x": (2, 9)})], spec)
    with pytest.raises(TypeError, match="not one prompt"):
        encode_prompts(model, Text("abc"), spec)


def test_chat_renders_with_template_and_maps_spans(tiny_llama):
    model, spec = tiny_llama
    chat = Chat([{"role": "system", "content": "be brief"},
                 {"role": "user", "content": "What is 2+2? Be brief."}],
                spans={"brief": "brief", "question": "2+2"})
    encoded = encode(model, chat, spec)
    assert encoded.text == "<s>system: be brief\nuser: What is 2+2? Be brief.\nassistant:"
    assert encoded.ids[0].item() == spec.bos_token_id
    assert int((encoded.ids == spec.bos_token_id).sum()) == 1  # the template's BOS only
    # "brief" first occurs in the system message; <s> is one token, then one per character
    assert encoded.spans["brief"].start == encoded.text.index("brief") - 2
    assert _piece(model, encoded, "question") == "2+2"
    assert _piece(model, encoded, "brief") == "brief"
    (ids,) = tokenize_prompts(model, [chat], spec)
    assert ids.tolist() == encoded.ids.tolist()
    without = encode(model, Chat(chat.messages, add_generation_prompt=False), spec)
    assert not without.text.endswith("assistant:")
    with pytest.raises(PromptFormatError, match="occurs in no message"):
        encode(model, Chat(chat.messages, spans={"x": "absent"}), spec)


@pytest.mark.real
def test_chat_spans_on_the_real_template(smol):
    model, spec = smol
    chat = Chat([{"role": "user", "content": "Which city is the capital of France?"}],
                spans={"country": "France"})
    encoded = encode(model, chat, spec)
    assert encoded.text.startswith("<|im_start|>")
    assert encoded.text.endswith("<|im_start|>assistant\n")
    span = encoded.spans["country"]
    assert model.tokenizer.decode(encoded.ids[span.start:span.stop]).strip() == "France"


def test_chat_without_template_says_what_to_do(tiny_gpt2, monkeypatch):
    model, spec = tiny_gpt2
    monkeypatch.setattr(model.tokenizer, "chat_template", None)
    with pytest.raises(PromptFormatError, match="no chat template"):
        encode(model, Chat([{"role": "user", "content": "hi"}]), spec)
    with pytest.raises(PromptFormatError, match="'role' and 'content'"):
        Chat([{"text": "hi"}])


def test_image_prompt_errors(tiny_llama, tiny_llava):
    model, spec = tiny_llama
    image = _image(0)
    with pytest.raises(PromptFormatError, match="no processor"):
        encode(model, ImagePrompt("see <image>", [image]), spec)
    with pytest.raises(PromptFormatError, match="1 <image> placeholders and 2 images"):
        ImagePrompt("see <image>", [image, image])
    with pytest.raises(PromptFormatError, match="extra model inputs"):
        tokenize_prompts(tiny_llava[0], [ImagePrompt("<image>", [image])], tiny_llava[1])


def test_image_prompt_spans_and_pixels(tiny_llava):
    model, spec = tiny_llava
    text = "look <image> then <image>: is it a cat?"
    encoded = encode(model, ImagePrompt(text, [_image(0), _image(1)], spans={"cat": "cat"}),
                     spec)
    image_id = model.original_model.config.image_token_index
    first, second = encoded.spans["image_0"], encoded.spans["image_1"]
    assert first == Span(6, 22, (4, 4)) and len(second) == 16 and second.grid == (4, 4)
    assert (encoded.ids == image_id).nonzero().flatten().tolist() == \
        list(first.positions()) + list(second.positions())
    assert _piece(model, encoded, "cat") == "cat"
    assert encoded.extra["pixel_values"].shape == (2, 3, 32, 32)
    assert first.patch_coordinates(first.start + 5) == (1, 1)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_keeps_spans_and_extra(tiny_llava, side):
    """Each prompt's logits over its own tokens are the same alone and padded in a batch,
    and the span columns hold the span's tokens."""
    model, spec = tiny_llava
    items = [ImagePrompt("a <image> b", [_image(0)], spans={"b": "b"}),
             Text("just some text here", spans={"here": "here"}),
             ImagePrompt("<image> and <image>, long text after", [_image(1), _image(2)])]
    encoded = encode_prompts(model, items, spec)
    (batch,) = list(iter_batches(encoded, 3, pad_token_id=0, padding_side=side))
    assert batch.extra["pixel_values"].shape == (3, 3, 32, 32)
    assert torch.equal(batch.extra["pixel_values"][1:], encoded[2].extra["pixel_values"])
    for row, item in enumerate(encoded):
        assert batch.spans[row] == item.spans
        for name, span in item.spans.items():
            columns = batch.span_columns(row, name)
            assert batch.tokens[row, columns.start:columns.stop].tolist() == \
                item.ids[span.start:span.stop].tolist()
            assert batch.column(row, span.start) == columns.start
    mask = batch.span_mask("image", required=False)
    assert mask.sum(-1).tolist() == [16, 0, 0]
    with pytest.raises(KeyError, match="no span 'image'"):
        batch.span_mask("image")
    with torch.no_grad():
        padded = model(batch.tokens, **batch.forward_kwargs()).float()
        for row, item in enumerate(encoded):
            (alone,) = list(iter_batches([item], 1))
            logits = model(alone.tokens, **alone.forward_kwargs()).float()[0]
            start = int(batch.start[row])
            assert torch.allclose(padded[row, start:start + len(item)], logits, atol=1e-4)


def test_batch_with_pixels_moves_with_to(tiny_llava):
    model, spec = tiny_llava
    encoded = encode_prompts(model, [ImagePrompt("x <image>", [_image(3)])], spec)
    (batch,) = list(iter_batches(encoded, 1))
    moved = batch.to("meta")
    assert moved.extra["pixel_values"].device.type == "meta"
    assert moved.tokens.device.type == "meta" and moved.spans == batch.spans
    assert batch.extra["pixel_values"].device.type == "cpu"  # the original is untouched
    assert set(batch.forward_kwargs()) == {"attention_mask", "position_ids", "pixel_values"}


def test_token_lists_and_encoded_batch_alike():
    lists = [torch.tensor([5, 6, 7]), torch.tensor([8])]
    plain = next(iter_batches(lists, 2, padding_side="left"))
    wrapped = next(iter_batches([Encoded(ids) for ids in lists], 2, padding_side="left"))
    assert torch.equal(plain.tokens, wrapped.tokens) and plain.spans == [{}, {}]
    assert not plain.extra and isinstance(plain, Batch)
    assert fingerprint(lists) == fingerprint([Encoded(ids) for ids in lists])
    with_pixels = [Encoded(lists[0], extra={"pixel_values": torch.ones(1, 3, 2, 2)})]
    assert fingerprint(with_pixels) != fingerprint(lists[:1])
