"""Prompt items: plain text, chat conversations and text with images.

A prompt item is one of

- plain text (``str``), or :class:`Text` (text with named spans);
- :class:`Chat`: a list of ``{"role", "content"}`` messages, rendered with the tokenizer's own
  chat template (``add_generation_prompt=True`` by default);
- :class:`ImagePrompt`: text with ``<image>`` placeholders and the images, encoded through
  the model's processor (``model.headprobe_processor``, set by
  :func:`headprobe.catalogue.load_model` for vision-language models; see
  :mod:`headprobe.images`);
- a sequence of token ids (taken as it is).

:func:`headprobe.encoding.encode` turns one item into an :class:`Encoded` (token ids [T],
named spans of absolute positions, extra model inputs such as ``pixel_values``
[N_images, 3, H, W]); :func:`headprobe.encoding.encode_prompts` does a prompt set and checks
emptiness and context length. Spans are given on an item as character ranges
``(start, stop)`` or as marked substrings (``{"needle": "the key is 42"}``) and mapped to token
positions through the fast tokenizer's offsets. Image placeholders become ``image`` spans over
the image tokens, with the patch grid of the vision tower. Batching the encoded prompts is
:mod:`headprobe.inputs`' job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from headprobe.errors import PromptFormatError
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
