"""Typed scorer parameters: one frozen dataclass per scorer, validated here, once.

A scorer declares its parameters as a frozen dataclass deriving from :class:`Params`, each
field made with :func:`param` (default, one line of help, optional bounds)::

    @dataclass(frozen=True)
    class SinkParams(Params):
        dormant_sink: float = param(0.9, "sink share at or above which ...", ge=0, le=1)
        padding_side: Literal["right", "left"] = param("right", "padding of batched prompts")

Building one (``SinkParams(dormant_sink=2)``) checks every field against its declared type
(``bool``, ``int``, ``float``, ``str``, ``Literal[...]`` choices, ``tuple[X, ...]`` and
fixed-length tuples, with lists accepted, ``X | None`` and other unions) and bounds (``ge``,
``gt``, ``le``, ``lt`` in the field's metadata), and raises
:class:`~headprobe.errors.ScorerParamError` with one line naming the parameter, the value and
what is allowed. Checks between fields go in the subclass's ``__post_init__`` (after
``super().__post_init__()``). Values are kept as given (an ``int`` for a ``float`` stays an
``int``), so a run's key is the same as before the parameters were typed.

:func:`build` makes a record from keywords (unknown names refused, renamed ones named),
:func:`describe` lists the fields for ``headprobe scorers NAME`` and :func:`parse_text` reads
a ``--param KEY=VALUE`` value by the field's type.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Union, get_args, get_origin

from headprobe.errors import ScorerParamError

BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def param(default: Any, help: str, **bounds: float) -> Any:
    """A dataclass field with ``default``, one line of ``help`` and optional bounds (``ge``,
    ``gt``, ``le``, ``lt``) for an ``int`` / ``float`` field (or each item of a tuple)."""
    unknown = sorted(set(bounds) - set(BOUNDS))
    if unknown:
        raise TypeError(f"param() bounds are {', '.join(BOUNDS)}; got {unknown}")
    if isinstance(default, list | dict | set):
        raise TypeError("a parameter default must be immutable (a tuple, not a list)")
    return dataclasses.field(default=default, metadata={"help": help, **bounds})


@dataclass(frozen=True)
class Params:
    """Base of every scorer's parameter record (a frozen dataclass of :func:`param` fields).

    ``renamed``: ``{old_name: new_name}`` of parameters renamed since earlier versions;
    :func:`build` refuses the old name with a line naming the new one.
    """

    renamed: ClassVar[Mapping[str, str]] = {}

    def __post_init__(self) -> None:
        hints = type_hints(type(self))
        for item in dataclasses.fields(self):
            check_value(item.name, getattr(self, item.name), hints[item.name], item.metadata)


def type_hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a params class (string annotations evaluated)."""
    return typing.get_type_hints(cls)


def _is_union(kind: Any) -> bool:
    return get_origin(kind) in (Union, types.UnionType)


def type_name(kind: Any) -> str:
    """``"int | None"``, ``"'mean' or 'zero'"``, ``"tuple[str, ...]"``: a type, for people."""
    if kind is type(None):
        return "None"
    if _is_union(kind):
        return " | ".join(type_name(arg) for arg in get_args(kind))
    if get_origin(kind) is Literal:  # "'a', 'b' or 'c'"
        names = [repr(arg) for arg in get_args(kind)]
        return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    if get_origin(kind) is tuple:
        args = get_args(kind)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"tuple[{type_name(args[0])}, ...]"
        return f"tuple[{', '.join(type_name(arg) for arg in args)}]"
    return getattr(kind, "__name__", str(kind))


def _matches(value: Any, kind: Any) -> bool:
    """Whether ``value`` has type ``kind`` (lists accepted for tuples; ints for floats)."""
    if kind is Any:
        return True
    if kind is type(None):
        return value is None
    if _is_union(kind):
        return any(_matches(value, arg) for arg in get_args(kind))
    origin = get_origin(kind)
    if origin is Literal:
        return any(value == arg and type(value) is type(arg) for arg in get_args(kind))
    if origin is tuple:
        if not isinstance(value, list | tuple):
            return False
        args = get_args(kind)
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(item, args[0]) for item in value)
        return len(value) == len(args) and all(map(_matches, value, args))
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, kind)


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [value]
    if isinstance(value, list | tuple):
        return [x for item in value for x in _numbers(item)]
    return []


def allowed(kind: Any, metadata: Mapping[str, Any]) -> str:
    """What a field allows, in words: its type and bounds."""
    bounds = [f"{BOUNDS[key]} {metadata[key]}" for key in BOUNDS if key in metadata]
    return type_name(kind) + (f" ({', '.join(bounds)})" if bounds else "")


def check_value(name: str, value: Any, kind: Any, metadata: Mapping[str, Any]) -> None:
    """:class:`ScorerParamError` (one line) unless ``value`` fits ``kind`` and the bounds."""
    ok = _matches(value, kind)
    if ok:
        for number in _numbers(value):
            for key, op in (("ge", float.__ge__), ("gt", float.__gt__),
                            ("le", float.__le__), ("lt", float.__lt__)):
                if key in metadata and not op(float(number), float(metadata[key])):
                    ok = False
    if not ok:
        raise ScorerParamError(f"parameter {name}={value!r} is not allowed; it takes "
                               f"{allowed(kind, metadata)}")


def build(cls: type[Params], values: Mapping[str, Any], *, owner: str) -> Params:
    """``cls(**values)`` with one-line errors for unknown and renamed names (``owner``: the
    scorer or step, for the message)."""
    names = [item.name for item in dataclasses.fields(cls)]
    for old in values:
        if old in cls.renamed:
            raise ScorerParamError(f"{owner}: parameter {old!r} is now called "
                                   f"{cls.renamed[old]!r}")
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ScorerParamError(f"{owner} got unknown parameters {unknown}; known: "
                               f"{', '.join(names) or 'none'}")
    return cls(**values)


def as_dict(record: Params) -> dict[str, Any]:
    """``{name: value}`` of a params record (values as given, not copied)."""
    return {item.name: getattr(record, item.name) for item in dataclasses.fields(record)}


@dataclass(frozen=True)
class ParamInfo:
    """One parameter, for listings: name, type (in words), default and help."""

    name: str
    type: str
    default: Any
    help: str


def describe(cls: type[Params]) -> list[ParamInfo]:
    """The parameters of ``cls`` in declaration order."""
    hints = type_hints(cls)
    return [ParamInfo(item.name, allowed(hints[item.name], item.metadata), item.default,
                      str(item.metadata.get("help", ""))) for item in dataclasses.fields(cls)]


def _parse(text: str, kind: Any) -> Any:
    """``text`` read as ``kind``; raises ValueError when it cannot be."""
    if kind is Any:
        return json.loads(text) if text[:1] in "[{" else text
    if kind is type(None):
        if text.lower() == "none":
            return None
        raise ValueError(text)
    if _is_union(kind):
        listy = text.startswith("[") or "," in text

        def order(arg: Any) -> int:  # None, then lists when the text looks like one, then
            if arg is type(None):  # numbers and choices, then plain text, then tuples
                return 0
            if get_origin(arg) is tuple:
                return 1 if listy else 4
            return 3 if arg is str else 2

        for arg in sorted(get_args(kind), key=order):
            try:
                value = _parse(text, arg)
            except ValueError:
                continue
            if _matches(value, arg):
                return value
        raise ValueError(text)
    origin = get_origin(kind)
    if origin is Literal:
        for arg in get_args(kind):
            try:
                value = _parse(text, type(arg))
            except ValueError:
                continue
            if value == arg:
                return arg
        raise ValueError(text)
    if origin is tuple:
        if text.startswith("["):
            try:
                items = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(text) from error
            if not isinstance(items, list):
                raise ValueError(text)
            return tuple(tuple(i) if isinstance(i, list) else i for i in items)
        args = get_args(kind)
        parts = [part.strip() for part in text.split(",")] if text.strip() else []
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_parse(part, args[0]) for part in parts)
        if len(parts) != len(args):
            raise ValueError(text)
        return tuple(_parse(part, arg) for part, arg in zip(parts, args, strict=True))
    if kind is bool:
        lowered = text.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        raise ValueError(text)
    if kind is int:
        return int(text)
    if kind is float:
        return float(text)
    if kind is str:
        return text
    raise ValueError(text)


def parse_text(cls: type[Params], name: str, text: str, *, owner: str) -> Any:
    """The value of parameter ``name`` of ``cls`` read from command-line ``text``: ints,
    floats, ``true``/``false``, ``none`` for an optional parameter, comma-separated or JSON
    lists for tuples, choices checked. :class:`ScorerParamError` (one line) for an unknown
    name or a value that does not fit."""
    fields = {item.name: item for item in dataclasses.fields(cls)}
    if name in cls.renamed:
        raise ScorerParamError(f"{owner}: parameter {name!r} is now called "
                               f"{cls.renamed[name]!r}")
    if name not in fields:
        raise ScorerParamError(f"{owner} has no parameter {name}; its parameters: "
                               f"{', '.join(fields) or 'none'}")
    kind = type_hints(cls)[name]
    try:
        value = _parse(text.strip(), kind)
    except (ValueError, TypeError):
        raise ScorerParamError(f"parameter {name}={text!r} is not allowed; it takes "
                               f"{allowed(kind, fields[name].metadata)}") from None
    check_value(name, value, kind, fields[name].metadata)
    return value
