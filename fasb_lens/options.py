"""Settings dataclasses that describe their own command-line options.

A settings field declared with :func:`option` carries its help text (and, if it differs
from ``--field-name``, its flags) next to its default, so the command line builds its
options from the dataclass (:func:`add_options`) and reads them back into it
(:func:`from_args`): every default is written once, in the dataclass.

This module imports nothing heavy, so building a parser stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The range a number must lie in: ``minimum``/``maximum`` inclusive, ``above``/
    ``below`` exclusive (``None``: unbounded)."""

    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    below: float | None = None
    infinite: bool = False
    """Whether ``inf`` is allowed (a limit that does not bind)."""

    def problem(self, value: float) -> str | None:
        """What is wrong with ``value``, or ``None``."""
        if self.infinite and value == float("inf"):
            return None
        if value != value or value in (float("inf"), float("-inf")):
            return f"must be a finite number, got {value}"
        low = (self.minimum is None or value >= self.minimum) and (
            self.above is None or value > self.above
        )
        high = (self.maximum is None or value <= self.maximum) and (
            self.below is None or value < self.below
        )
        return None if low and high else f"must be {self.describe()}, got {value:g}"

    def describe(self) -> str:
        parts = []
        if self.minimum is not None:
            parts.append(f">= {self.minimum:g}")
        if self.above is not None:
            parts.append(f"> {self.above:g}")
        if self.maximum is not None:
            parts.append(f"<= {self.maximum:g}")
        if self.below is not None:
            parts.append(f"< {self.below:g}")
        return " and ".join(parts)


AT_LEAST_ONE = Bounds(minimum=1)
NON_NEGATIVE = Bounds(minimum=0)
PROBABILITY = Bounds(minimum=0, maximum=1)
FRACTION = Bounds(above=0, below=1)


def bounded(kind: type, bounds: Bounds) -> Callable[[str], Any]:
    """An argparse ``type`` that converts with ``kind`` and refuses values out of ``bounds``."""

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        problem = bounds.problem(value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    convert.__name__ = kind.__name__
    return convert


def listed(kind: type, bounds: Bounds) -> Callable[[str], tuple[Any, ...]]:
    """An argparse ``type`` for one or more numbers given comma-separated (``42,1,2``),
    each converted and checked as :func:`bounded` does."""
    one = bounded(kind, bounds)

    def convert(text: str) -> tuple[Any, ...]:
        pieces = [piece.strip() for piece in text.split(",") if piece.strip()]
        if not pieces:
            raise argparse.ArgumentTypeError(f"expected numbers, got {text!r}")
        return tuple(one(piece) for piece in pieces)

    convert.__name__ = kind.__name__
    return convert


def non_empty(text: str) -> str:
    """An argparse ``type`` refusing an empty or blank text."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


Choices = Iterable[str] | Callable[[], Iterable[str]]
"""Allowed values, or a function giving them when asked (names from a registry, which a
notebook or a test may extend after the settings class is defined)."""


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    flags: tuple[str, ...] = (),
    choices: Choices | None = None,
    names: Callable[[str], str] | None = None,
    bounds: Bounds | None = None,
) -> Any:
    """A dataclass field that is also a command-line option.

    Args:
        help: the option's help text.
        flags: its flags (default ``--field-name``); more than one gives aliases.
        choices: the allowed values (or a function returning them);
            :func:`check_options` and the parser enforce them.
        names: for tuple fields, a function mapping each given name to its canonical
            name (aliases; raises ``ValueError`` for unknown names).
        bounds: the range of a number; :func:`check_options` and the parser enforce it.
    """
    metadata = {
        "help": help,
        "flags": flags,
        "choices": choices if choices is None or callable(choices) else tuple(choices),
        "names": names,
        "bounds": bounds,
    }
    if isinstance(default, list | dict | set):
        raise TypeError("use a tuple default for a list option")
    return dataclasses.field(default=default, metadata=metadata)


def same_option(cls: type, name: str, **changes: Any) -> Any:
    """The option ``name`` of settings class ``cls`` again, for another settings class
    (its default and help written once, in ``cls``); ``changes`` override its metadata
    (``help``, ``flags``, ...) or, with ``default``, its default."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    default = changes.pop("default", field.default)
    return option(default, **{**dict(field.metadata), **changes})


def choices_of(field: dataclasses.Field) -> tuple[str, ...] | None:
    """The allowed values of an :func:`option` field now (``None``: any)."""
    choices = field.metadata["choices"]
    return tuple(choices()) if callable(choices) else choices


def _item_type(hint: Any) -> Any:
    """The element type of a ``tuple[X, ...]`` hint (``str`` otherwise)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return _item_type(next(a for a in typing.get_args(hint) if a is not type(None)))
    args = typing.get_args(hint)
    return args[0] if origin is tuple and args else str


def _base_type(hint: Any) -> Any:
    """``int`` for ``int | None``; ``tuple`` for ``tuple[str, ...]``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _base_type(args[0])
    if origin is typing.Literal:
        return type(typing.get_args(hint)[0])
    return origin or hint


def option_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` declared with :func:`option`."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def nested_settings(cls: type) -> dict[str, type]:
    """The fields of ``cls`` that are settings classes themselves (e.g. a
    :class:`~fasb_lens.models.ModelOptions`), whose options join the command's."""
    hints = typing.get_type_hints(cls)
    return {
        f.name: hints[f.name]
        for f in dataclasses.fields(cls)
        if isinstance(hints[f.name], type) and dataclasses.is_dataclass(hints[f.name])
    }


def add_options(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    exclude: Iterable[str] = (),
    defaults: dict[str, Any] | None = None,
    required: Iterable[str] = (),
    only_given: bool = False,
) -> None:
    """Add an option to ``parser`` for each :func:`option` field of ``cls``.

    ``defaults`` overrides a field's default for this command; names in ``required``
    must be given. Booleans that default to true become ``--no-NAME`` switches. With
    ``only_given`` the parsed arguments hold only the options given (no defaults), so
    that :func:`from_args` can lay them over settings read from a file.
    """
    hints = typing.get_type_hints(cls)
    skip, needed, overrides = set(exclude), set(required), defaults or {}
    for name, inner in nested_settings(cls).items():
        if name not in skip:
            add_options(
                parser,
                inner,
                exclude=exclude,
                defaults=defaults,
                required=required,
                only_given=only_given,
            )
    for field in option_fields(cls):
        if field.name in skip:
            continue
        meta = field.metadata
        flags = meta["flags"] or (f"--{field.name.replace('_', '-')}",)
        default = overrides.get(field.name, field.default)
        kind = _base_type(hints[field.name])
        kwargs: dict[str, Any] = {"dest": field.name, "help": meta["help"]}
        if kind is bool:
            if default:
                flags = tuple(f"--no-{flag[2:]}" for flag in flags)
                kwargs["action"] = "store_false"
            else:
                kwargs["action"] = "store_true"
        elif kind is tuple:
            item = _item_type(hints[field.name])
            kwargs.update(nargs="+", default=list(default), metavar="NAME")
            if item is not str:  # numbers, space- or comma-separated
                kwargs.update(type=listed(item, meta["bounds"] or Bounds()), metavar="N")
        else:
            kwargs["type"] = bounded(kind, meta["bounds"]) if meta["bounds"] else kind
            if default is not dataclasses.MISSING:
                kwargs["default"] = default
            if meta["choices"] is not None:
                kwargs["choices"] = list(choices_of(field))  # type: ignore[arg-type]
        if only_given:
            kwargs["default"] = argparse.SUPPRESS
        elif field.name in needed or default is dataclasses.MISSING:
            kwargs["required"] = True
            kwargs.pop("default", None)
        parser.add_argument(*flags, **kwargs)


def split_names(
    values: Iterable[str], names: Callable[[str], str] | None = None
) -> tuple[str, ...]:
    """Names given space- or comma-separated (``a b`` or ``a,b``), mapped by ``names``."""
    given = [name.strip() for value in values for name in value.split(",") if name.strip()]
    return tuple(names(name) if names else name for name in given)


def from_args(cls: type, args: argparse.Namespace, base: Any = None, **values: Any) -> Any:
    """An instance of ``cls`` from the parsed options (and ``values``, which win); options
    the arguments do not hold keep ``base``'s values (or the defaults)."""
    read: dict[str, Any] = {
        name: from_args(inner, args, None if base is None else getattr(base, name))
        for name, inner in nested_settings(cls).items()
        if name not in values
    }
    if base is not None:
        read.update(
            {
                f.name: getattr(base, f.name)
                for f in dataclasses.fields(cls)
                if f.name not in read and f.name not in values and f.init
            }
        )
    for field in option_fields(cls):
        if field.name in values or not hasattr(args, field.name):
            continue
        value = getattr(args, field.name)
        if isinstance(value, list):
            if all(isinstance(item, str) for item in value):
                value = split_names(value, field.metadata["names"])
            else:  # numbers, each argument one or several (``42,1,2``)
                value = tuple(
                    number
                    for item in value
                    for number in (item if isinstance(item, tuple) else (item,))
                )
        read[field.name] = value
    return cls(**read, **values)


def check_options(instance: Any) -> None:
    """Refuse an :func:`option` field whose number lies outside its bounds or whose value is
    not one of its choices (a settings dataclass calls this in ``__post_init__``)."""
    for field in option_fields(type(instance)):
        value = getattr(instance, field.name)
        if value is None:
            continue
        bounds, choices = field.metadata["bounds"], choices_of(field)
        for item in value if isinstance(value, tuple) else (value,):
            if choices is not None and item not in choices:
                raise ValueError(f"{field.name} must be one of {', '.join(choices)}; got {item!r}")
            problem = bounds.problem(item) if bounds is not None else None
            if problem:
                raise ValueError(f"{field.name} {problem}")
