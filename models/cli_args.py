"""Argument dataclasses -> ``argparse``: the one way every ``emotion`` model command reads its command line.

Each field of the dataclass is a ``--kebab-case`` flag with ``field(metadata={"help": ...})`` as its help text:

* ``bool``: ``--flag`` / ``--no-flag``;
* ``int``, ``float``, ``str``, ``Path`` and ``X | None`` of those: one value;
* ``tuple[X, ...]``: a comma list (``--variants dynamic,static``);
* a nested dataclass: its fields, prefixed with ``metadata["prefix"]`` (default: the field name);
* a field without a default is a required flag.

A flag not given is left out, so the dataclass's own default or ``default_factory`` applies. A ``ValueError``
from the dataclass (its ``__post_init__`` checks) becomes an argparse usage error (exit status 2).
Stdlib only, so a command that needs no torch imports none.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_SCALARS: tuple[type, ...] = (int, float, str, Path)


def parse_arguments(cls: type[T], argv: Sequence[str] | None, *, prog: str, description: str | None = None) -> T:
    """Parse ``argv`` (None: ``sys.argv[1:]``) into an instance of the argument dataclass ``cls``."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _add_fields(parser, cls, "")
    values = vars(parser.parse_args(None if argv is None else list(argv)))
    try:
        return _build(cls, values, "")
    except ValueError as exc:
        parser.error(str(exc))


def _add_fields(parser: argparse.ArgumentParser, cls: type[Any], prefix: str) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            _add_fields(parser, typing.cast(type[Any], kind), _nested_prefix(f, prefix))
            continue
        dest = prefix + f.name
        flag = "--" + dest.replace("_", "-")
        helptext = f.metadata.get("help", "")
        common: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS}
        default = _default(f)
        if default is dataclasses.MISSING:
            common["required"] = True
        elif default is not None:
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            helptext = f"{helptext} (default: {shown})".strip()
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=helptext, **common)
        else:
            parser.add_argument(flag, type=_converter(kind, dest), help=helptext, metavar=_metavar(kind), **common)


def _nested_prefix(f: dataclasses.Field[Any], prefix: str) -> str:
    """The flag prefix of a nested dataclass field's own fields: ``metadata["prefix"]`` or the field name."""
    return f"{prefix}{f.metadata.get('prefix', f.name)}_"


def _default(f: dataclasses.Field[Any]) -> Any:
    """The field's default (its factory called), or ``dataclasses.MISSING`` for a required field."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _converter(kind: Any, name: str) -> Callable[[str], Any]:
    """The argparse ``type=`` for one field's annotation."""
    kind = _strip_optional(kind)
    if kind in _SCALARS:
        return typing.cast(Callable[[str], Any], kind)
    args = typing.get_args(kind)
    if typing.get_origin(kind) is tuple and len(args) == 2 and args[1] is Ellipsis and args[0] in _SCALARS:
        item: Callable[[str], Any] = args[0]

        def comma_list(text: str) -> tuple[Any, ...]:
            return tuple(item(part.strip()) for part in text.split(",") if part.strip())

        return comma_list
    raise TypeError(f"argument field {name!r}: unsupported type {kind!r}")


def _strip_optional(kind: Any) -> Any:
    """``X | None`` -> ``X``; anything else unchanged."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return kind


def _metavar(kind: Any) -> str:
    kind = _strip_optional(kind)
    if typing.get_origin(kind) is tuple:
        return "A,B,..."
    return {int: "INT", float: "FLOAT", Path: "PATH"}.get(kind, "STR")


def _build(cls: type[T], values: dict[str, Any], prefix: str) -> T:
    """The dataclass from the parsed flags (nested dataclasses from their prefixed flags)."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        kind = hints[f.name]
        if not f.init:
            continue
        if dataclasses.is_dataclass(kind):
            kwargs[f.name] = _build(typing.cast(type[Any], kind), values, _nested_prefix(f, prefix))
        elif prefix + f.name in values:
            kwargs[f.name] = values[prefix + f.name]
    return cls(**kwargs)
