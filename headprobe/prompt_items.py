"""Prompt items and their encoding: plain text, chat conversations and text with images.

A prompt item is one of

- plain text (``str``), or :class:`Text` (text with named spans);
- :class:`Chat`: a list of ``{"role", "content"}`` messages, rendered with the tokenizer's own
  chat template (``add_generation_prompt=True`` by default);
- :class:`ImagePrompt`: text with ``<image>`` placeholders and the images, encoded through
  the model's processor (``model.headprobe_processor``, set by :func:`headprobe.models.load_model`
  for vision-language models; see :mod:`headprobe.images`);
- a sequence of token ids (taken as it is).

:func:`encode` turns one item into an :class:`Encoded` (token ids [T], named spans of absolute
positions, extra model inputs such as ``pixel_values`` [N_images, 3, H, W]);
:func:`encode_prompts` does a prompt set and checks emptiness and context length. Spans are
given on an item as character ranges ``(start, stop)`` or as marked substrings
(``{"needle": "the key is 42"}``) and mapped to token positions through the fast tokenizer's
offsets. Image placeholders become ``image`` spans over the image tokens, with the patch grid of
the vision tower. Batching the encoded prompts is :mod:`headprobe.inputs`' job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from headprobe.arch import ModelSpec
from headprobe.errors import ContextLengthError, EmptyPromptsError, PromptFormatError
from headprobe.types import Span

# A span given on a prompt item: a marked substring (its first occurrence) or a character
# range [start, stop) of the item's text (for a Chat: of the rendered conversation).
Mark = str | tuple[int, int]

# The image placeholder written in ImagePrompt texts; encode() replaces it with the
# processor's own image token when that differs.
IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class Text:
    """Plain text with named spans.

    Attributes:
        text: the prompt (BOS is added by tokenization, as for a ``str``).
        spans: ``{name: substring or (char_start, char_stop)}``; a substring marks its first
            occurrence in ``text``.
    """

    text: str
    spans: Mapping[str, Mark] = field(default_factory=dict)


@dataclass(frozen=True)
class Chat:
    """A conversation rendered with the tokenizer's own chat template.

    Attributes:
        messages: ``[{"role": "system" | "user" | "assistant", "content": str}, ...]``.
        spans: ``{name: substring or (char_start, char_stop)}``. A substring is looked up in
            the message contents, in order (its first occurrence in the first message that
            contains it); a character range refers to the rendered text
            (:func:`render_chat`).
        add_generation_prompt: end with the template's assistant header, so that the next
            token is the start of the assistant's reply.
    """

    messages: Sequence[Mapping[str, str]]
    spans: Mapping[str, Mark] = field(default_factory=dict)
    add_generation_prompt: bool = True

    def __post_init__(self) -> None:
        if not self.messages:
            raise PromptFormatError("a Chat needs at least one message")
        for index, message in enumerate(self.messages):
            if "role" not in message or "content" not in message:
                raise PromptFormatError(
                    f"chat message {index} must have 'role' and 'content', got "
                    f"{sorted(message)}")


@dataclass(frozen=True)
class ImagePrompt:
    """Text with images, encoded through the model's processor.

    Attributes:
        text: the prompt with one :data:`IMAGE_PLACEHOLDER` (``<image>``) where each image
            goes, in order; the processor expands each into the image tokens.
        images: the images, in whatever form the processor accepts (PIL images,
            [H, W, 3] uint8 arrays or tensors, ...).
        spans: ``{name: substring or (char_start, char_stop)}`` of ``text``; images get
            the spans ``image`` (one image) or ``image_0``, ``image_1``, ... (several).
    """

    text: str
    images: Sequence[Any]
    spans: Mapping[str, Mark] = field(default_factory=dict)

    def __post_init__(self) -> None:
        count = self.text.count(IMAGE_PLACEHOLDER)
        if count != len(self.images):
            raise PromptFormatError(
                f"an ImagePrompt has {count} {IMAGE_PLACEHOLDER} placeholders and "
                f"{len(self.images)} images; write one {IMAGE_PLACEHOLDER} where each image goes")


Prompt = str | Text | Chat | ImagePrompt
PromptItem = Prompt | Sequence[int] | torch.Tensor
Prompts = Sequence[PromptItem] | torch.Tensor


@dataclass
class Encoded:
    """One encoded prompt.

    Attributes:
        ids: [T] long token ids (CPU), BOS included where the model uses one.
        spans: ``{name: Span}`` of absolute positions within the prompt.
        extra: extra model inputs of this prompt, batched along dim 0 (e.g. ``pixel_values``
            [N_images, 3, H, W]); batches concatenate them along dim 0.
        text: the text that was tokenized (the rendered chat, the text with image tokens
            expanded), or None for token ids.
    """

    ids: torch.Tensor
    spans: dict[str, Span] = field(default_factory=dict)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    text: str | None = None

    def __len__(self) -> int:
        return int(self.ids.numel())




# ---------------------------------------------------------------------------------------------
# Encoding one prompt


def render_chat(model: Any, chat: Chat) -> str:
    """The text of ``chat`` rendered with the model's tokenizer's chat template.

    Raises:
        PromptFormatError: the tokenizer has no chat template.
    """
    tokenizer = tokenizer_of(model)
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise PromptFormatError(
            f"the tokenizer of this model ({name}) has no chat template, so a Chat cannot be "
            "rendered; use an instruct/chat model, set tokenizer.chat_template, or give the "
            "prompt as plain text")
    return str(tokenizer.apply_chat_template(
        [dict(message) for message in chat.messages], tokenize=False,
        add_generation_prompt=chat.add_generation_prompt))


def encode(model: Any, item: PromptItem | Encoded, spec: ModelSpec, *,
           prepend_bos: bool = True) -> Encoded:
    """Encode one prompt item (see the module docstring for the kinds).

    Plain text is tokenized as the bridge does (``model.to_tokens``, BOS prepended when
    ``prepend_bos``), so its ids are the ones every engine used before; a chat is tokenized
    as rendered (the template decides on BOS, as in ``apply_chat_template``); an image prompt
    as its processor does. Floating extra inputs are cast to the model's dtype.

    Args:
        model: a bridge (with ``headprobe_processor`` for image prompts).
        item: the prompt item (an :class:`Encoded` is returned as it is).
        spec: the model's :class:`ModelSpec` (dtype of the extra inputs).
        prepend_bos: for plain text (``str`` / :class:`Text`) only.

    Returns:
        An :class:`Encoded` with ids, spans and extra inputs (emptiness and context length are
        checked by :func:`encode_prompts`).

    Raises:
        PromptFormatError: no chat template, no processor, a span not found in the text.
    """
    if isinstance(item, Encoded):
        return item
    if isinstance(item, str):
        return _encode_text(model, Text(item), prepend_bos)
    if isinstance(item, Text):
        return _encode_text(model, item, prepend_bos)
    if isinstance(item, Chat):
        return _encode_chat(model, item)
    if isinstance(item, ImagePrompt):
        from headprobe.images import encode_image_prompt

        return encode_image_prompt(model, item, spec)
    if isinstance(item, torch.Tensor):
        return Encoded(item.reshape(-1).long().cpu())
    if isinstance(item, Sequence):
        return Encoded(torch.as_tensor(list(item), dtype=torch.long))
    raise TypeError(f"cannot encode a prompt of type {type(item).__name__}; give a str, Text, "
                    "Chat, ImagePrompt or a sequence of token ids")


def encode_prompts(model: Any, items: Prompts, spec: ModelSpec, *,
                   prepend_bos: bool = True) -> list[Encoded]:
    """Encode a prompt set (one :class:`Encoded` per item); a [N, T] tensor is N prompts.

    Raises:
        EmptyPromptsError: no prompts, an empty string, or a prompt that has no tokens.
        ContextLengthError: a prompt longer than the model's context (``spec.n_ctx``).
    """
    if isinstance(items, torch.Tensor):
        if items.ndim != 2:
            raise EmptyPromptsError(
                f"a token tensor must be [N, T], got shape {tuple(items.shape)}")
        encoded = [Encoded(row.long().cpu()) for row in items]
    else:
        if isinstance(items, str | Text | Chat | ImagePrompt):
            raise TypeError(
                "prompts must be a sequence of prompts, not one prompt; wrap it: [prompt]")
        encoded = []
        for index, item in enumerate(items):
            if isinstance(item, str) and not item:
                raise EmptyPromptsError(f"prompt {index} is an empty string")
            try:
                encoded.append(encode(model, item, spec, prepend_bos=prepend_bos))
            except PromptFormatError as error:
                raise PromptFormatError(f"prompt {index}: {error}") from error
    if not encoded:
        raise EmptyPromptsError("the prompt set is empty: give at least one prompt")
    for index, item in enumerate(encoded):
        if len(item) == 0:
            raise EmptyPromptsError(f"prompt {index} has no tokens")
        if len(item) > spec.n_ctx:
            raise ContextLengthError(
                f"prompt {index} has {len(item)} tokens, more than {spec.name}'s context of "
                f"{spec.n_ctx} tokens; shorten it or split it"
            )
    return encoded


def tokenize_prompts(
    model: Any, prompts: Prompts, spec: ModelSpec, *, prepend_bos: bool = True
) -> list[torch.Tensor]:
    """Tokenize a prompt set into 1-D long tensors, one per prompt (ids of :func:`encode`).

    Strings are tokenized with the model's tokenizer (BOS prepended when ``prepend_bos``);
    token sequences are taken as they are; chats are rendered with the chat template. Spans
    are dropped; prompts with extra inputs (images) need :func:`encode_prompts`.

    Raises:
        EmptyPromptsError: no prompts, or a prompt that has no tokens.
        ContextLengthError: a prompt longer than the model's context (``spec.n_ctx``).
        PromptFormatError: an image prompt (its pixels would be lost).
    """
    encoded = encode_prompts(model, prompts, spec, prepend_bos=prepend_bos)
    for index, item in enumerate(encoded):
        if item.extra:
            raise PromptFormatError(
                f"prompt {index} has extra model inputs ({', '.join(item.extra)}) that token "
                "ids alone cannot carry; use headprobe.inputs.encode_prompts and pass the "
                "Encoded items to iter_batches")
    return [item.ids for item in encoded]


def tokenizer_of(model: Any) -> Any:
    """The model's tokenizer; :class:`PromptFormatError` when it has none."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise PromptFormatError("this model has no tokenizer; give token ids instead of text")
    return tokenizer


def token_offsets(tokenizer: Any, text: str, *, add_special_tokens: bool
                  ) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of ``text`` and the ``(char_start, char_stop)`` of each (a fast tokenizer's
    offsets; special tokens get empty ranges)."""
    try:
        encoding = tokenizer(text, add_special_tokens=add_special_tokens,
                             return_offsets_mapping=True)
    except NotImplementedError as error:
        raise PromptFormatError(
            "named spans need a fast tokenizer (character offsets); this one is slow") from error
    return list(encoding["input_ids"]), [tuple(pair) for pair in encoding["offset_mapping"]]


def mark_chars(name: str, mark: Mark, text: str) -> tuple[int, int]:
    """The ``[start, stop)`` characters of span ``name`` in ``text``: a substring's first
    occurrence or a checked character range."""
    if isinstance(mark, str):
        if not mark:
            raise PromptFormatError(f"span {name!r} marks an empty string")
        begin = text.find(mark)
        if begin < 0:
            raise PromptFormatError(f"span {name!r}: {mark!r} does not occur in the prompt")
        return begin, begin + len(mark)
    begin, end = (int(v) for v in mark)
    if not 0 <= begin < end <= len(text):
        raise PromptFormatError(
            f"span {name!r}: character range ({begin}, {end}) is not a non-empty range of "
            f"the prompt's {len(text)} characters")
    return begin, end


def chars_to_span(name: str, chars: tuple[int, int], offsets: Sequence[tuple[int, int]],
                  shift: int = 0) -> Span:
    """The span of the token positions (+ ``shift``) whose characters overlap ``chars``,
    given each token's ``offsets``."""
    begin, end = chars
    hits = [index for index, (a, b) in enumerate(offsets) if b > a and a < end and b > begin]
    if not hits:
        raise PromptFormatError(f"span {name!r} (characters {begin}..{end}) covers no token")
    return Span(hits[0] + shift, hits[-1] + 1 + shift)


def _encode_text(model: Any, item: Text, prepend_bos: bool) -> Encoded:
    ids = model.to_tokens(item.text, prepend_bos=prepend_bos, truncate=False)[0].cpu().long()
    if not item.spans:
        return Encoded(ids, text=item.text)
    plain, offsets = token_offsets(tokenizer_of(model), item.text, add_special_tokens=False)
    shift = len(ids) - len(plain)
    if shift not in (0, 1) or ids[shift:].tolist() != plain:
        raise PromptFormatError(
            "the model's tokens of this text differ from its tokenizer's, so span positions "
            "cannot be mapped; give the spans as token positions instead")
    spans = {name: chars_to_span(name, mark_chars(name, mark, item.text), offsets, shift)
             for name, mark in item.spans.items()}
    return Encoded(ids, spans, text=item.text)


def _encode_chat(model: Any, chat: Chat) -> Encoded:
    text = render_chat(model, chat)
    ids, offsets = token_offsets(tokenizer_of(model), text, add_special_tokens=False)
    spans = {}
    for name, mark in chat.spans.items():
        if isinstance(mark, str):
            spans[name] = chars_to_span(name, _chat_mark(name, mark, chat, text), offsets)
        else:
            spans[name] = chars_to_span(name, mark_chars(name, mark, text), offsets)
    return Encoded(torch.tensor(ids, dtype=torch.long), spans, text=text)


def _chat_mark(name: str, mark: str, chat: Chat, text: str) -> tuple[int, int]:
    """Characters of ``mark`` in the rendered ``text``: its first occurrence in the first
    message whose content contains it (contents are located in order in the rendering)."""
    cursor = 0
    for message in chat.messages:
        content = str(message["content"])
        where = text.find(content, cursor) if content else -1
        if where < 0:
            continue
        inner = content.find(mark)
        if inner >= 0:
            return where + inner, where + inner + len(mark)
        cursor = where + len(content)
    raise PromptFormatError(f"span {name!r}: {mark!r} occurs in no message of the chat")
