"""YAML from users: the strict loader (spec files, `--set` values) and the one `--set` grammar.

The loader is PyYAML's safe loader (no tags, nothing evaluated) made stricter, because a spec is
small, hand-written and copied into both stores:
* no aliases (`*a`) and no merge keys (`<<`): with aliases a 1 kB "billion laughs" file expands
  into gigabytes; a spec has no use for them;
* no duplicate keys: PyYAML keeps the last silently, so a typo'd second `train:` would win;
* floats as people write them: YAML 1.1 reads `1.0e9` and `1e-3` as strings (it wants `1.0e+9`).

`--set KEY=VALUE`: KEY is a dotted path, list items by index (`model.0.depth`), VALUE is YAML.
`ablate train` and `ablate run/worker/status` share it.
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent

from .errors import ConfigError, cut, shown

MAX_SPEC_BYTES = 256 * 1024  # the largest shipped spec is ~3 kB


class StrictLoader(yaml.SafeLoader):
    def compose_node(self, parent, index):
        if self.check_event(AliasEvent):
            event = self.peek_event()
            raise ComposerError(None, None, "aliases (*name) are not allowed in a spec", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise ConstructorError(None, None, "merge keys (<<) are not allowed in a spec", key_node.start_mark)
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base class reports it
                break
            if duplicate:
                raise ConstructorError(None, None, f"duplicate key {shown(key, 40)}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.2's float syntax (exponent sign and dot optional), added after YAML 1.1's own resolver.
StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_yaml(text: str, where: str):
    """Parse `text` with the strict loader; ConfigError naming `where` and the line on failure."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{where}: not valid YAML{at}: {cut(str(getattr(e, 'problem', None) or e), 120)}") from None


def read_yaml_file(path: Path, what: str = "spec"):
    """A YAML file's content, refusing files too large or not text before parsing anything."""
    size = path.stat().st_size
    if size > MAX_SPEC_BYTES:
        raise ConfigError(f"{path}: {size:,} bytes is too large for a {what} (limit {MAX_SPEC_BYTES:,}); "
                          f"a {what} describes a study, it does not hold data")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file; a {what} is YAML text") from None
    if "\x00" in text:
        raise ConfigError(f"{path}: contains NUL bytes; a {what} is YAML text")
    return load_yaml(text, str(path))


def parse_override(item: str) -> tuple[list[str], object]:
    """`train.epochs=3` -> (['train', 'epochs'], 3); ConfigError for anything else."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {shown(item)}: expected key.path=value, e.g. train.epochs=3")
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {shown(item)}: empty component in key {shown(key)}")
    return parts, load_yaml(text, f"--set {cut(key, 60)}") if text.strip() else None


def set_path(root, parts: list[str], value, item: str):
    """Set `value` at the dotted path `parts` under `root` (dicts created as needed, lists indexed)."""
    node = root
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        here = ".".join(parts[:i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {shown(item)}: {shown(part)} is not an index of the list at "
                                  f"{'.'.join(parts[:i]) or 'the top'} (0..{len(node) - 1})")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ConfigError(f"--set {shown(item)}: {'.'.join(parts[:i])} is not a mapping or a list")
        if not last and not isinstance(node, (dict, list)):
            raise ConfigError(f"--set {shown(item)}: {here} is not a mapping or a list")
    return root
