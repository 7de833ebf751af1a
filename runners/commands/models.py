"""`ablate models [PATTERN]`: the registered models with their size."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ConfigError
from .table import text_table


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch wildcard, e.g. 'plain*'")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args) -> int:
    import models
    names = models.list_models(args.pattern)
    if not names:
        if Path(args.pattern).exists():
            # `ablate models resnet*` unquoted: the shell replaced the pattern with a file's name.
            raise ConfigError(f"{args.pattern!r} is a file here, not a model: the shell expanded an unquoted "
                              "pattern; quote it: ablate models 'resnet*'")
        # A pattern without wildcards is a name: resolve it so unknown names explain themselves.
        if not any(c in args.pattern for c in "*?["):
            names = [args.pattern]
        else:
            raise ConfigError(f"no registered model matches {args.pattern!r}; try 'resnet*' or 'plain*' "
                              "(quoted, so the shell leaves the pattern alone)")
    rows = [models.describe(n) for n in names]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    cols = ["name", "family", "depth", "block", "shortcut", "preact", "params", "macs"]
    fmt = {"params": lambda v: f"{v:,}", "macs": lambda v: f"{v / 1e6:,.1f}M"}
    table = [[fmt.get(c, str)(r[c]) for c in cols] for r in rows]
    print(text_table(cols, table, right={i for i, c in enumerate(cols) if c in fmt or c == "depth"}))
    return 0
