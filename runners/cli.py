"""The `ablate` command line.

Each subcommand lives in the module that does its work and exposes `add_arguments(parser)` and
`command(args) -> int`; this file only lists them and turns user errors into one line on stderr
with exit status 2 (no traceback), which is the project's promise for bad input.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

from models.spec import ConfigError

# name -> (module defining add_<name>_arguments and <name>_command, one-line help).
COMMANDS = {
    "models": ("runners.cli", "list the registered models with their size"),
    "train": ("runners.train_cli", "train one model and log it to MLflow"),
    "bench": ("runners.bench", "training throughput of this trainer vs a conventional loop"),
    "run": ("runners.study", "run (or resume) an ablation study from a spec file"),
    "worker": ("runners.study", "join an existing study and run trials until none are left"),
    "status": ("runners.study", "per-variant progress and results of a study"),
    "figures": ("runners.figures", "paper figures and tables from the MLflow store alone"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, as for every other bad input
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the `chosen` command's module is imported (with its heavy dependencies:
    `ablate models` should not pay for importing mlflow and optuna)."""
    parser = _Parser(prog="ablate", description="Plain vs residual network ablations.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == chosen:
            mod = importlib.import_module(module)
            getattr(mod, f"add_{name}_arguments")(p)
            p.set_defaults(_command=getattr(mod, f"{name}_command"))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(chosen).parse_args(argv)
    try:
        return int(args._command(args) or 0)
    except ConfigError as e:
        print(f"ablate {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ablate {args.command}: interrupted", file=sys.stderr)
        return 130


# -- ablate models ------------------------------------------------------------------------------
def add_models_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch wildcard, e.g. 'plain*'")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def models_command(args) -> int:
    import models
    names = models.list_models(args.pattern)
    if not names:
        # A pattern without wildcards is a name: resolve it so unknown names explain themselves.
        if not any(c in args.pattern for c in "*?["):
            names = [args.pattern]
        else:
            raise ConfigError(f"no registered model matches {args.pattern!r}; try 'resnet*' or 'plain*'")
    rows = [models.describe(n) for n in names]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    cols = ["name", "family", "depth", "block", "shortcut", "preact", "params", "macs"]
    fmt = {"params": lambda v: f"{v:,}", "macs": lambda v: f"{v / 1e6:,.1f}M"}
    table = [[fmt.get(c, str)(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for t in table:
        print("  ".join(v.rjust(w) if c in fmt or c == "depth" else v.ljust(w)
                        for c, v, w in zip(cols, t, widths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
