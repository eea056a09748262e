"""Ordinal token sets for successor heads (Gould et al. 2023, "Successor Heads: Recurring,
Interpretable Attention Heads In The Wild"), kept as data, and their tokenization for a model.

A set is an ordered list of items whose successor is the next item (``Monday`` ->
``Tuesday``); cyclic sets (days, months) wrap (``Sunday`` -> ``Monday``). Every set has two
variants: the bare items (``days``: ``"Monday"``) and the items with a leading space
(``days_space``: ``" Monday"``), the form a word takes inside a sentence.

The successor score needs each item to be one token, so :func:`tokenize_set` drops the items
that are not. **Pair rule:** a successor pair ``(t_i -> t_{i+1})`` joins two items that are
consecutive in the *full* list (``i+1`` taken modulo the length for a cyclic set), and it is
kept only when both items remain; the argmax is then taken over the remaining items. So with
``"10"`` dropped from numbers 1..200, ``9 -> 10`` and ``10 -> 11`` are gone and ``9 -> 11``
is never formed. Many tokenizers split numbers into digits (SmolLM2, Gemma 3: ``"12"`` is
``"1" "2"`` and ``" 1"`` is ``" " "1"``), so on those models ``numbers`` keeps only 1..9 and
the ``_space`` digit variants keep nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from headprobe.answers import answer_ids
from headprobe.errors import TokenSetError

MIN_ITEMS = 3
SPACE_SUFFIX = "_space"

WithSpace = Literal["both", "with", "without"]

_ROMAN = ("I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X", "XI", "XII", "XIII",
          "XIV", "XV", "XVI", "XVII", "XVIII", "XIX", "XX")
_NUMBER_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                 "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
                 "eighteen", "nineteen", "twenty")
_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth",
             "ninth", "tenth")
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")


@dataclass(frozen=True)
class OrdinalSet:
    """An ordered item list: the successor of ``items[i]`` is ``items[i + 1]``.

    Attributes:
        name: the base name (``days``); its leading-space variant is ``days_space``.
        items: the items without a leading space.
        cyclic: the last item's successor is the first (days of the week, months).
        description: one line for reports.
    """

    name: str
    items: tuple[str, ...]
    cyclic: bool = False
    description: str = ""


ORDINAL_SETS: dict[str, OrdinalSet] = {s.name: s for s in (
    OrdinalSet("numbers", tuple(str(i) for i in range(1, 201)), description="1 .. 200"),
    OrdinalSet("digits", tuple(str(i) for i in range(10)), description="0 .. 9"),
    OrdinalSet("number_words", _NUMBER_WORDS, description="one .. twenty"),
    OrdinalSet("ordinals", _ORDINALS, description="first .. tenth"),
    OrdinalSet("days", _DAYS, cyclic=True, description="Monday .. Sunday (wraps)"),
    OrdinalSet("months", _MONTHS, cyclic=True, description="January .. December (wraps)"),
    OrdinalSet("letters", tuple(chr(c) for c in range(ord("A"), ord("Z") + 1)),
               description="A .. Z"),
    OrdinalSet("letters_lower", tuple(chr(c) for c in range(ord("a"), ord("z") + 1)),
               description="a .. z"),
    OrdinalSet("roman", _ROMAN, description="Roman numerals I .. XX"),
)}


@dataclass(frozen=True)
class TokenizedSet:
    """A set variant tokenized for one model, multi-token items dropped.

    Attributes:
        name: the variant name (``days`` or ``days_space``).
        base: the base set's name.
        with_space: whether the items carry a leading space.
        items: the kept items (as tokenized, with the space when ``with_space``).
        token_ids: [n] their token ids.
        pairs: [P, 2] successor pairs as indices into ``items`` (source, successor), formed by
            the pair rule of the module docstring.
        dropped: the items that are not a single token (in set order).
        cyclic: whether the base set wraps.
    """

    name: str
    base: str
    with_space: bool
    items: tuple[str, ...]
    token_ids: torch.Tensor
    pairs: torch.Tensor
    dropped: tuple[str, ...] = field(default_factory=tuple)
    cyclic: bool = False

    @property
    def n_dropped(self) -> int:
        return len(self.dropped)

    @property
    def chance(self) -> float:
        """``1 / |T|``: the chance that a random item of the set is the successor."""
        return 1.0 / len(self.items)


def variant_names(with_space: WithSpace | bool = "both",
                  sets: Sequence[str] | None = None) -> list[str]:
    """Variant names of ``sets`` (base names; default all) for ``with_space``.

    ``with_space``: ``"both"`` (bare and leading-space variants), ``"with"`` / ``True`` (only
    ``<name>_space``), ``"without"`` / ``False`` (only the bare items).
    """
    mode = _space_mode(with_space)
    bases = list(ORDINAL_SETS) if sets is None else list(sets)
    out = []
    for base in bases:
        _base_set(base)
        if mode in ("both", "without"):
            out.append(base)
        if mode in ("both", "with"):
            out.append(base + SPACE_SUFFIX)
    return out


def tokenize_set(model: Any, name: str) -> TokenizedSet:
    """Tokenize the set variant ``name`` (``days``, ``days_space``...) for ``model``.

    Items that are not exactly one token (as a continuation, no BOS) are dropped; the
    successor pairs follow the pair rule of the module docstring.

    Raises:
        TokenSetError: unknown set; fewer than :data:`MIN_ITEMS` single-token items, or no
            successor pair left (the message names the set and what was dropped).
    """
    base_name, with_space = split_variant(name)
    base = _base_set(base_name)
    kept: list[int] = []
    ids: list[int] = []
    dropped: list[str] = []
    seen: set[int] = set()
    texts = [(" " + item) if with_space else item for item in base.items]
    for index, text in enumerate(texts):
        tokens = answer_ids(model, text)
        if len(tokens) != 1 or tokens[0] in seen:
            dropped.append(text)
            continue
        seen.add(tokens[0])
        kept.append(index)
        ids.append(tokens[0])
    if len(kept) < MIN_ITEMS:
        raise TokenSetError(
            f"ordinal set {name!r}: only {len(kept)} of {len(texts)} items are single tokens "
            f"for this model (at least {MIN_ITEMS} are needed); dropped "
            f"{_preview(dropped)}")
    position = {orig: new for new, orig in enumerate(kept)}
    n = len(texts)
    pairs = []
    for orig in kept:
        following = orig + 1
        if following >= n:
            if not base.cyclic:
                continue
            following -= n
        if following in position and following != orig:
            pairs.append((position[orig], position[following]))
    if not pairs:
        raise TokenSetError(
            f"ordinal set {name!r}: no two consecutive items are both single tokens, so it "
            f"has no successor pair; kept {[texts[i] for i in kept]}, dropped "
            f"{_preview(dropped)}")
    return TokenizedSet(name=name, base=base_name, with_space=with_space,
                        items=tuple(texts[i] for i in kept),
                        token_ids=torch.tensor(ids, dtype=torch.long),
                        pairs=torch.tensor(pairs, dtype=torch.long), dropped=tuple(dropped),
                        cyclic=base.cyclic)


def tokenize_sets(model: Any, sets: Sequence[str] | None = None,
                  with_space: WithSpace | bool = "both"
                  ) -> tuple[list[TokenizedSet], dict[str, str]]:
    """Tokenize several sets: ``(usable sets, {skipped variant: reason})``.

    ``sets``: base names (``days``: the variants chosen by ``with_space``) or variant names
    (``days_space``: that variant alone); None: every set. A variant named explicitly must be
    usable; of a base name's variants, the unusable ones are skipped (and reported), but at
    least one must be usable. With ``sets=None`` unusable variants are only skipped.

    Raises:
        TokenSetError: an unknown name, an explicitly named variant that is unusable, a base
            name none of whose variants is usable, or no usable set at all.
    """
    mode = _space_mode(with_space)
    chosen: list[tuple[str, bool]] = []  # (variant, must be usable)
    groups: dict[str, list[str]] = {}
    for requested in (list(ORDINAL_SETS) if sets is None else list(sets)):
        if not isinstance(requested, str):
            raise TokenSetError(f"ordinal set names must be strings, got {requested!r}")
        if requested in ORDINAL_SETS:
            variants = variant_names(mode, [requested])
            groups[requested] = variants
            chosen.extend((v, False) for v in variants)
        else:
            split_variant(requested)  # unknown name -> TokenSetError
            chosen.append((requested, True))
    out: list[TokenizedSet] = []
    skipped: dict[str, str] = {}
    for variant, required in dict.fromkeys(chosen):
        try:
            out.append(tokenize_set(model, variant))
        except TokenSetError as error:
            if required:
                raise
            skipped[variant] = str(error)
    if sets is not None:
        for base, variants in groups.items():
            if all(v in skipped for v in variants):
                raise TokenSetError(f"ordinal set {base!r}: no variant is usable for this "
                                    f"model: " + "; ".join(skipped[v] for v in variants))
    if not out:
        raise TokenSetError("no ordinal set is usable for this model: "
                            + "; ".join(skipped.values()))
    return out, skipped


def split_variant(name: str) -> tuple[str, bool]:
    """``"days_space"`` -> ``("days", True)``, ``"days"`` -> ``("days", False)``;
    :class:`TokenSetError` for a name that is neither."""
    if not isinstance(name, str):
        raise TokenSetError(f"ordinal set names must be strings, got {name!r}")
    if name in ORDINAL_SETS:
        return name, False
    if name.endswith(SPACE_SUFFIX) and name[: -len(SPACE_SUFFIX)] in ORDINAL_SETS:
        return name[: -len(SPACE_SUFFIX)], True
    raise TokenSetError(f"unknown ordinal set {name!r}; sets: {', '.join(ORDINAL_SETS)} (add "
                        f"{SPACE_SUFFIX!r} for the leading-space variant)")


def _base_set(name: str) -> OrdinalSet:
    if name not in ORDINAL_SETS:
        split_variant(name)  # raises for unknown names
        raise TokenSetError(f"{name!r} is a variant name; give the base set "
                            f"{split_variant(name)[0]!r} here")
    return ORDINAL_SETS[name]


def _space_mode(with_space: WithSpace | bool) -> str:
    if with_space is True:
        return "with"
    if with_space is False:
        return "without"
    if with_space not in ("both", "with", "without"):
        raise TokenSetError(f"with_space must be 'both', 'with', 'without', True or False, got "
                            f"{with_space!r}")
    return str(with_space)


def _preview(items: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(repr(i) for i in items[:limit])
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return f"{len(items)} item(s): [{shown}]{more}" if items else "none"
