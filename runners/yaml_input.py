"""YAML from users: the strict loader (spec files, `--set` values) and the one `--set` grammar.

The loader is PyYAML's safe loader (no tags, nothing evaluated) made stricter, because a spec is
small, hand-written and copied into both stores:
* no aliases (`*a`) and no merge keys (`<<`): with aliases a 1 kB "billion laughs" file expands
  into gigabytes; a spec has no use for them;
* no duplicate keys: PyYAML keeps the last silently, so a typo'd second `train:` would win;
* floats as people write them: YAML 1.1 reads `1.0e9` and `1e-3` as strings (it wants `1.0e+9`);
* plain types only: dates stay strings, a tag that makes anything else (`!!binary`, `!!set`) is
  refused, and nesting stops at MAX_NESTING levels (a deeper file would exhaust the recursion).

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


MAX_NESTING = 32  # mappings and lists within each other; the shipped specs nest 4 deep
# What a value in a spec may be: YAML's plain types. Anything else a safe loader makes (dates,
# timestamps, bytes from !!binary, sets, ordered pairs) is refused before it reaches a store.
PLAIN = (dict, list, str, int, float, bool, type(None))


class StrictLoader(yaml.SafeLoader):
    _depth = 0

    def compose_node(self, parent, index):
        if self.check_event(AliasEvent):
            event = self.peek_event()
            raise ComposerError(None, None, "aliases (*name) are not allowed in a spec", event.start_mark)
        if self._depth >= MAX_NESTING:
            raise ComposerError(None, None, f"nested more than {MAX_NESTING} levels deep", self.peek_event().start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

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
# Dates and timestamps stay strings (`description: 2024-05-01` is text, not a datetime).
StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in StrictLoader.yaml_implicit_resolvers.items()}


def load_yaml(text: str, where: str):
    """Parse `text` with the strict loader; ConfigError naming `where` and the line on failure."""
    try:
        value = yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{where}: not valid YAML{at}: {cut(str(getattr(e, 'problem', None) or e), 120)}") from None
    _check_plain(value, where)
    return value


def _check_plain(value, where: str, path: str = "") -> None:
    """ConfigError at the first value (or key) that is not one of YAML's plain types."""
    if not isinstance(value, PLAIN):
        raise ConfigError(f"{where}: {path or 'the document'} is a {type(value).__name__} (from a YAML tag such as "
                          "!!binary or !!set); a spec holds only strings, numbers, booleans, lists and mappings")
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        here = f"{path}.{cut(str(k), 40)}" if path else cut(str(k), 40)
        if isinstance(value, dict) and not isinstance(k, (str, int, float, bool, type(None))):
            raise ConfigError(f"{where}: a key at {path or 'the top'} is a {type(k).__name__}; keys are plain words")
        _check_plain(v, where, here)


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
