"""Encoding prompt items: one item to an :class:`~headprobe.prompt_items.Encoded`, a prompt set
to a list of them.

:func:`encode` turns one item (see :mod:`headprobe.prompt_items`) into token ids [T], named
spans of absolute positions and extra model inputs (``pixel_values`` [N_images, 3, H, W], ...):
text through the bridge's tokenizer, a chat through its chat template, an image prompt through
the processor (:func:`headprobe.images.encode_image_prompt`). :func:`encode_prompts` does a
prompt set and checks emptiness and context length; batching is :mod:`headprobe.inputs`' job.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from headprobe.arch import ModelSpec
from headprobe.errors import ContextLengthError, EmptyPromptsError, PromptFormatError
from headprobe.images import encode_image_prompt
from headprobe.prompt_items import (
    Chat,
    Encoded,
    ImagePrompt,
    PromptItem,
    Prompts,
    Text,
    chars_to_span,
    mark_chars,
    token_offsets,
    tokenizer_of,
)


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
