"""``niah``: needle in a haystack -- find one invented fact hidden in long filler prose.

The data follows the retrieval-head setting of Wu et al. 2024, "Retrieval Head Mechanistically
Explains Long-Context Factuality": a *needle* (one sentence holding a fact, a question about it
and the answer span) is inserted into a long *haystack* at a chosen *depth* (0 = the start,
1 = the end) of a context of a chosen *length*; the model is asked the question after the
context and should copy the answer out of the needle.

- The offline haystack (``headprobe/resources/haystack.txt``, about 6,900 words of everyday
  essays) and the 30 needles (``headprobe/resources/needles.json``, invented names, codes,
  numbers, colours and objects that no model can know) were written for headprobe. Online
  users can take the haystack from any ``datasets`` text column (``dataset=``, ``text_column=``)
  or pass their own text (``haystack=``); the haystack is repeated when a context needs more.
- Context lengths count the whole prompt in tokens of the model's tokenizer when a model is
  given (chat template and question included, BOS too), else whitespace-separated words. The
  haystack is cut at a word boundary so that the prompt is as long as possible without
  exceeding the length.
- The needle goes at a sentence boundary: just after the last period (followed by whitespace)
  at or before ``depth`` x the haystack's characters, or at the very start when none is.
- Prompt: the context, then ``Answer the question using only the text above.``,
  ``Question: {q}`` and ``Answer:`` on their own lines. When the model's tokenizer has a chat
  template, the prompt is one user turn (:class:`~headprobe.inputs.Chat`,
  ``add_generation_prompt=True``), else :class:`~headprobe.inputs.Text`. Both carry the
  named spans ``needle`` (the needle sentence) and ``answer`` (the answer inside it), which
  :func:`headprobe.inputs.encode_prompts` maps to token positions; with a model, the builder
  checks that the answer's tokens lie inside the needle's span and cover the answer and
  nothing more.
- Judge: ``contains`` on a greedy reply of :data:`MAX_NEW_TOKENS` (24) tokens.
  :func:`rouge1_recall` is the retrieval gate of the reference (a trial counts when
  recall > 0.5).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from headprobe.errors import TaskError
from headprobe.inputs import Chat, Text, encode, encode_prompts, render_chat, token_offsets
from headprobe.prompts import load_resource
from headprobe.tasks.base import Task, TaskItem

HAYSTACK_RESOURCE = "haystack.txt"
NEEDLES_RESOURCE = "needles.json"
INSTRUCTION = "Answer the question using only the text above."
DEFAULT_CONTEXT_LENGTHS = (256, 512, 1024)
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
# Chat models often restate the needle before the answer ("The combination of ... is 4817"),
# and digits are one token each, so 16 tokens cut answers off; 24 covers the shipped needles
# (SmolLM2-135M-Instruct at 256 tokens: 2-3 of 6 right at 16, 5 of 6 at 24).
MAX_NEW_TOKENS = 24


@dataclass(frozen=True)
class Needle:
    """One needle.

    Attributes:
        id: a short name (``meta["needle_id"]`` of the items that use it).
        needle: the sentence inserted into the haystack (ends with a period).
        question: asked after the context.
        answer: the span of ``needle`` that answers the question (occurs in it verbatim).
    """

    id: str
    needle: str
    question: str
    answer: str


def load_haystack() -> str:
    """The offline haystack shipped in ``headprobe/resources/haystack.txt`` (plain prose)."""
    path = resources.files("headprobe.resources").joinpath(HAYSTACK_RESOURCE)
    return path.read_text(encoding="utf-8")


def load_needles() -> list[Needle]:
    """The needles shipped in ``headprobe/resources/needles.json``."""
    return parse_needles(load_resource(NEEDLES_RESOURCE)["needles"])


def parse_needles(records: Sequence[Mapping[str, Any] | Needle]) -> list[Needle]:
    """Check and convert needle records ``{"needle", "question", "answer", "id"?}``.

    Raises:
        TaskError: no needles, a missing or empty field, or an answer that is not a span of
            its needle.
    """
    if not records:
        raise TaskError("no needles given; pass at least one {needle, question, answer} record "
                        "or leave needles=None for the shipped ones")
    needles = []
    for index, record in enumerate(records):
        if isinstance(record, Needle):
            fields = {"id": record.id, "needle": record.needle, "question": record.question,
                      "answer": record.answer}
        else:
            fields = dict(record)
        for key in ("needle", "question", "answer"):
            value = fields.get(key)
            if not isinstance(value, str) or not value.strip():
                raise TaskError(f"needle {index}: field {key!r} must be a non-empty string, "
                                f"got {value!r}")
        needle, answer = " ".join(fields["needle"].split()), fields["answer"].strip()
        if answer not in needle:
            raise TaskError(f"needle {index}: the answer {answer!r} does not occur in the needle "
                            f"{needle!r}; the answer must be a span of the needle sentence")
        needles.append(Needle(id=str(fields.get("id", f"needle{index}")), needle=needle,
                              question=" ".join(fields["question"].split()), answer=answer))
    return needles


def sentence_boundaries(text: str) -> list[int]:
    """Character positions where a sentence may start: 0 and every position just after a
    period that is followed by whitespace or ends the text."""
    ends = [match.end() for match in re.finditer(r"\.(?=\s|$)", text)]
    return [0, *(end for end in ends if end > 0)]


def insert_needle(haystack: str, needle: str, depth: float) -> tuple[str, int]:
    """Insert ``needle`` into ``haystack`` at the sentence boundary nearest before ``depth``.

    The target is ``round(depth * len(haystack))`` characters; the needle goes just after the
    last period (followed by whitespace) at or before it, or at the start when there is none.
    One space separates it from its neighbours.

    Returns:
        ``(context, start)``: the text with the needle and the needle's first character.

    Raises:
        TaskError: ``depth`` outside 0..1.
    """
    _check_depth(depth)
    target = round(depth * len(haystack))
    boundary = max(b for b in sentence_boundaries(haystack) if b <= target)
    before, after = haystack[:boundary].rstrip(), haystack[boundary:].lstrip()
    start = len(before) + 1 if before else 0
    context = (before + " " if before else "") + needle + (" " + after if after else "")
    return context, start


def rouge1_recall(reference: str, output: str) -> float:
    """ROUGE-1 recall: the share of the reference's words that the output contains.

    Words are lowercased runs of letters and digits (other characters separate words, as in
    the default tokenizer of the ``rouge-score`` package, without stemming); counts are clipped
    (a word used twice in the reference must appear twice in the output to count twice).
    Written here rather than taken from a library because no ROUGE package is among
    headprobe's dependencies and unigram recall is a few lines; the retrieval scorer uses it
    as the reference's gate (a trial counts when recall > 0.5).

    Raises:
        TaskError: a reference with no words (recall is undefined).
    """
    wanted = Counter(_words(reference))
    if not wanted:
        raise TaskError(f"rouge1_recall: the reference {reference!r} has no words")
    found = Counter(_words(output))
    return sum(min(count, found[word]) for word, count in wanted.items()) / sum(wanted.values())


def make_task(
    n: int | None = None,
    context_lengths: Sequence[int] = DEFAULT_CONTEXT_LENGTHS,
    depths: Sequence[float] = DEFAULT_DEPTHS,
    seed: int = 0,
    model: Any = None,
    haystack: str | None = None,
    needles: Sequence[Mapping[str, Any] | Needle] | None = None,
    dataset: str | None = None,
    text_column: str = "text",
    dataset_config: str | None = None,
    split: str = "train",
    chat: bool | None = None,
) -> Task:
    """The needle-in-a-haystack task.

    Items run through the grid ``context_lengths`` x ``depths`` (depth fastest), again from the
    start when ``n`` is larger; each item takes the next needle of a seeded shuffle and starts
    the haystack at a seeded sentence.

    Args:
        n: number of items (default: one per length and depth).
        context_lengths: prompt lengths, in tokens of ``model``'s tokenizer when a model is
            given, else in whitespace-separated words.
        depths: where the needle goes, as a fraction of the haystack (0 start .. 1 end).
        seed: drives a local ``random.Random`` (needle order, haystack start sentences).
        model: a causal bridge; gives token lengths, the chat template and the span checks.
        haystack: filler text of your own (default: the shipped haystack); whitespace is
            collapsed and the text is repeated when a context needs more of it.
        needles: ``{needle, question, answer, id?}`` records (default: the shipped ones).
        dataset: a ``datasets`` name whose ``text_column`` becomes the haystack (online only;
            offline this fails at once -- pass ``haystack=`` text instead).
        text_column, dataset_config, split: which column, configuration and split to read.
        chat: use the chat template (default: when the model's tokenizer has one).

    Raises:
        TaskError: bad ``n``, lengths or depths, no haystack text, bad needles, a non-causal
            model, a length beyond the model's context, a needle and question that do not fit
            the length, an answer whose tokens are not inside the needle's, or a dataset that
            cannot be read.
    """
    if n is not None and n < 1:
        raise TaskError(f"n must be >= 1, got {n}")
    lengths = [int(length) for length in context_lengths]
    if not lengths or min(lengths) < 1:
        raise TaskError(f"context_lengths must be positive lengths, got {list(context_lengths)}")
    depths = [float(depth) for depth in depths]
    if not depths:
        raise TaskError("depths must hold at least one depth between 0 and 1")
    for depth in depths:
        _check_depth(depth)
    spec = None
    if model is not None:
        from headprobe.models import describe_model

        spec = describe_model(model)
        if not spec.causal:
            raise TaskError(f"{spec.name} is not a causal language model; needle-in-a-haystack "
                            "needs a decoder that generates the answer")
        if max(lengths) > spec.n_ctx:
            raise TaskError(f"context length {max(lengths)} is beyond {spec.name}'s context of "
                            f"{spec.n_ctx} tokens; choose lengths <= {spec.n_ctx}")
    if haystack is not None and dataset is not None:
        raise TaskError("give either haystack= text or dataset=, not both")
    if dataset is not None:
        text = load_dataset_text(dataset, text_column=text_column, config=dataset_config,
                                 split=split, min_words=max(lengths) + 1)
        source = f"datasets:{dataset}[{text_column}]"
    elif haystack is not None:
        text, source = haystack, "haystack argument"
    else:
        text, source = load_haystack(), f"headprobe/resources/{HAYSTACK_RESOURCE}"
    words = text.split()
    if not words:
        raise TaskError(f"the haystack ({source}) has no text; give some prose to hide the "
                        "needle in")
    pool = parse_needles(needles) if needles is not None else load_needles()
    use_chat = _wants_chat(model, chat)
    builder = _Builder(model, spec, use_chat, words)
    rng = random.Random(seed)
    order = rng.sample(range(len(pool)), len(pool))
    starts = [0, *(index + 1 for index, word in enumerate(words[:-1]) if word.endswith("."))]
    count = len(lengths) * len(depths) if n is None else n
    items = []
    for index in range(count):
        length = lengths[(index // len(depths)) % len(lengths)]
        depth = depths[index % len(depths)]
        needle = pool[order[index % len(order)]]
        items.append(builder.item(needle, length, depth, starts[rng.randrange(len(starts))]))
    return Task(
        name="niah",
        items=items,
        judge="contains",
        max_new_tokens=MAX_NEW_TOKENS,
        description="needle in a haystack: answer a question about one invented fact hidden "
                    "in long filler text",
        meta={"seed": seed, "context_lengths": lengths, "depths": depths, "source": source,
              "unit": "words" if model is None else "tokens", "chat": use_chat,
              "n_needles": len(pool)},
    )


def load_dataset_text(name: str, *, text_column: str = "text", config: str | None = None,
                      split: str = "train", min_words: int = 10_000) -> str:
    """Text of a ``datasets`` column, rows joined until at least ``min_words`` words (streamed,
    so a large corpus is not downloaded whole).

    Raises:
        TaskError: offline (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` set, or the hub not
            reachable: fails at once, never waits on the network), ``datasets`` missing, the
            set or the column not found, or no text in it.
    """
    from headprobe.sources import hub_offline

    if hub_offline():
        raise TaskError(f"cannot read the data set {name!r}: the Hugging Face hub is not "
                        "reachable (offline). Pass the text yourself with haystack=..., e.g. "
                        "haystack=Path('book.txt').read_text(), or leave both unset for the "
                        "shipped haystack")
    try:
        import datasets
    except ImportError as error:
        raise TaskError("dataset= needs the `datasets` package; install it or pass haystack= "
                        "text") from error
    try:
        rows = datasets.load_dataset(name, config, split=split, streaming=True)
        parts: list[str] = []
        total = 0
        for row in rows:
            if text_column not in row:
                raise TaskError(f"data set {name!r} has no column {text_column!r}; its columns: "
                                f"{', '.join(row)}; pass text_column=")
            value = row[text_column]
            if isinstance(value, str) and value.strip():
                parts.append(value)
                total += len(value.split())
                if total >= min_words:
                    break
    except TaskError:
        raise
    except Exception as error:  # datasets raises many kinds; report them as one clear error
        raise TaskError(f"could not read {text_column!r} of data set {name!r} "
                        f"(config {config!r}, split {split!r}): {error}") from error
    if not parts:
        raise TaskError(f"column {text_column!r} of data set {name!r} holds no text")
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------------
# Building one item


class _Builder:
    """Builds items for one model (or for word counts when ``model`` is None)."""

    def __init__(self, model: Any, spec: Any, chat: bool, words: list[str]) -> None:
        self.model, self.spec, self.chat, self.words = model, spec, chat, words

    def item(self, needle: Needle, length: int, depth: float, start: int) -> TaskItem:
        """The item with ``needle`` at ``depth`` of a prompt of at most ``length`` units, the
        haystack read from word ``start`` on (repeated as needed)."""
        source = self._source(start, length + 1)
        bare = self._size(self._prompt(source, 0, needle, depth)[0])
        if bare > length:
            unit = "words" if self.model is None else "tokens"
            raise TaskError(f"needle {needle.id!r} with its question takes {bare} {unit}, more "
                            f"than the context length {length}; use a longer context or a "
                            "shorter needle")
        low, high = 0, len(source)  # the largest word count whose prompt fits
        while low < high:
            middle = (low + high + 1) // 2
            if self._size(self._prompt(source, middle, needle, depth)[0]) <= length:
                low = middle
            else:
                high = middle - 1
        prompt, needle_start = self._prompt(source, low, needle, depth)
        prompt = self._with_spans(prompt, needle_start, needle)
        size = self._size(prompt)
        if self.model is not None:
            self._check_answer_tokens(prompt, needle)
        return TaskItem(
            prompt=prompt,
            answer=needle.answer if self.chat else " " + needle.answer,
            meta={"needle_id": needle.id, "context_length": length, "depth": depth,
                  "question": needle.question, "answer": needle.answer, "needle": needle.needle,
                  "length": size, "haystack_words": low},
        )

    def _source(self, start: int, count: int) -> list[str]:
        words = self.words[start:]
        while len(words) < count:
            words = words + self.words
        return words[:count]

    def _prompt(self, source: list[str], count: int, needle: Needle, depth: float
                ) -> tuple[Text | Chat, int]:
        """The prompt (no spans yet) with ``count`` haystack words, and the needle's first
        character in the text (for a chat: in the message content)."""
        context, needle_start = insert_needle(" ".join(source[:count]), needle.needle, depth)
        body = f"{context}\n\n{INSTRUCTION}\nQuestion: {needle.question}\nAnswer:"
        if self.chat:
            return Chat([{"role": "user", "content": body}]), needle_start
        return Text(body), needle_start

    def _with_spans(self, prompt: Text | Chat, needle_start: int, needle: Needle
                    ) -> Text | Chat:
        """``prompt`` with the ``needle`` and ``answer`` spans as character ranges (of the
        text, or of the rendered chat)."""
        offset = 0
        if isinstance(prompt, Chat):
            content = prompt.messages[0]["content"]
            rendered = render_chat(self.model, prompt)
            offset = rendered.find(content)
            if offset < 0:
                raise TaskError("the chat template changes the message text, so the needle "
                                "cannot be located in the rendered prompt; pass chat=False")
        begin = offset + needle_start
        answer_begin = begin + needle.needle.index(needle.answer)
        spans = {"needle": (begin, begin + len(needle.needle)),
                 "answer": (answer_begin, answer_begin + len(needle.answer))}
        if isinstance(prompt, Chat):
            return Chat(prompt.messages, spans=spans)
        return Text(prompt.text, spans=spans)

    def _size(self, prompt: Text | Chat) -> int:
        if self.model is None:
            assert isinstance(prompt, Text)
            return len(prompt.text.split())
        return len(encode(self.model, prompt, self.spec))

    def _check_answer_tokens(self, prompt: Text | Chat, needle: Needle) -> None:
        """The answer's tokens must lie inside the needle's and cover the answer alone."""
        encoded = encode_prompts(self.model, [prompt], self.spec)[0]
        needle_span, answer_span = encoded.spans["needle"], encoded.spans["answer"]
        inside = needle_span.start <= answer_span.start and answer_span.stop <= needle_span.stop
        text = encoded.text if encoded.text is not None else ""
        _, offsets = token_offsets(self.model.tokenizer, text, add_special_tokens=False)
        begin, end = prompt.spans["answer"]  # type: ignore[misc]
        hits = [(a, b) for a, b in offsets if b > a and a < end and b > begin]
        covered = text[min(a for a, _ in hits):max(b for _, b in hits)].strip() if hits else ""
        if not inside or covered != needle.answer:
            raise TaskError(
                f"needle {needle.id!r}: the answer {needle.answer!r} is not found in the needle "
                f"after tokenisation (its tokens read {covered!r}); make the answer whole words "
                "of the needle, set off by spaces or punctuation")


def _wants_chat(model: Any, chat: bool | None) -> bool:
    has_template = bool(getattr(getattr(model, "tokenizer", None), "chat_template", None))
    if chat is None:
        return has_template
    if chat and not has_template:
        raise TaskError("chat=True needs a model whose tokenizer has a chat template")
    return bool(chat)


def _check_depth(depth: float) -> None:
    if not 0.0 <= depth <= 1.0:
        raise TaskError(f"depth {depth} is outside 0..1 (0 puts the needle at the start of the "
                        "haystack, 1 at the end)")


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())
