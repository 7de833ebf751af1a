"""Command-line flags derived from configuration classes: one flag per declared field.

The flag is `--field-name` (or the field's declared `flag`), its help the declaration's `help`,
its type the annotation's: bool gives --x/--no-x, a Literal its choices, a tuple comma-separated
values, `X | None` an X. A flag left out is None, so a preset or a default underneath decides.
"""
from __future__ import annotations

import argparse
import types
import typing
from typing import Literal

from models.fields import fields_of, meta


def add_field_arguments(parser: argparse.ArgumentParser, section: str, cls: type, title: str) -> None:
    """One flag per field of `cls`, in a group titled `title`; dest `<section>.<field>`."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    for f in fields_of(cls):
        flag = meta(f, "flag")
        if flag is False:
            continue
        kwargs = _argument(hints[f.name])
        if kwargs.get("type") is str:
            kwargs["metavar"] = f.name.upper()
        default = f.default if f.default is not None and not callable(f.default) else None
        suffix = f" (default: {_shown(default)})" if default is not None and kwargs.get("action") is None else ""
        group.add_argument(flag or "--" + f.name.replace("_", "-"), dest=f"{section}.{f.name}", default=None,
                           help=(meta(f, "help") or "") + suffix, **kwargs)


def field_values(args: argparse.Namespace, section: str, cls: type) -> dict:
    """{field: value} of the flags of `section` that were given."""
    return {f.name: getattr(args, f"{section}.{f.name}") for f in fields_of(cls)
            if getattr(args, f"{section}.{f.name}", None) is not None}


def _argument(hint) -> dict:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(hint) is Literal:
        return {"choices": list(typing.get_args(hint))}
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        return {"type": _list_of(item), "metavar": f"{item.__name__.upper()},..."}
    if hint in (int, float):
        return {"type": hint, "metavar": "N" if hint is int else "X"}
    return {"type": str}


def _list_of(item: type):
    def parse(text: str):
        try:
            return [item(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {item.__name__}s, got {text!r}") from None
    return parse


def _shown(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
