"""Declaring a configuration field once: its default, its help, and where it shows.

Every field of `ArchSpec` (models/spec.py) and of the recipe and data configs
(runners/train/config.py) is declared with `option(...)`; the rest is derived from the dataclass
field and this metadata, so adding a field is one edit:

* the command line (`ablate train --help`): one flag per field, typed by its annotation
  (bool: --x/--no-x; a Literal: its choices; a tuple: comma-separated), `help` as its help;
* the spec grid of a study (runners/study/spec.py): values checked against the annotation;
* validation: `low`, `below` and `high` bound a number (models/spec.py `check_declared`);
* for the architecture, the MLflow tags, the variant's name and its label in figures
  (runners/tracking/naming.py), and, for `group="shortcut"`, the shortcut config a block is
  built with (models/blocks.py).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

# When an architecture field is tagged on a run (and so is an axis of the figures): always, when
# it differs from its default, when its shortcut kind uses it (`kinds`), or never.
TAGS = ("always", "nondefault", "used", "never")


def option(default: Any = None, help: str = "", *, flag: str | bool | None = None, tag: str = "nondefault",
           name: str | Callable[[Any], str] | bool | None = None, label: bool = True, group: str | None = None,
           kinds: tuple[str, ...] | None = None, blocks: tuple[str, ...] | None = None,
           low: float | None = None, below: float | None = None, high: float | None = None) -> dataclasses.Field:
    """A dataclass field with the metadata above.

    flag:  the command-line flag (default --field-name), False for none.
    tag:   one of TAGS (architecture fields).
    name:  how the field shows in a variant's name when tagged: a format with one {} or a
           function of the value (default "-<field><value>"); False to leave it out.
    label: whether a figure's label names it when tagged (k=v).
    group: "shortcut": part of the config every block's shortcut is built from.
    kinds: the shortcut kinds the field applies to (a kind that does not use it rejects a value
           other than the default; a plain net ignores it).
    blocks: the block kinds the field applies to; a net of other blocks ignores it (it is not
           tagged, named or labelled), so one value can sit over a grid of mixed blocks.
    low/below/high: numeric bounds, low <= x (< below) (<= high).
    """
    if tag not in TAGS:
        raise ValueError(f"tag must be one of {', '.join(TAGS)}, got {tag!r}")
    meta = {"help": help, "flag": flag, "tag": tag, "name": name, "label": label, "group": group,
            "kinds": kinds, "blocks": blocks, "low": low, "below": below, "high": high}
    return dataclasses.field(default=default, metadata=meta)


def meta(field: dataclasses.Field, key: str, default: Any = None) -> Any:
    return field.metadata.get(key, default)


def fields_of(cls_or_obj, group: str | None = None) -> list[dataclasses.Field]:
    """The dataclass fields (of `group`, if given), in declaration order."""
    fs = dataclasses.fields(cls_or_obj)
    return [f for f in fs if group is None or meta(f, "group") == group]
