"""The `ablate` command line: the parser, and the table of commands.

Each command is a module of `runners.commands` with `add_arguments(parser)` and `run(args) -> int`;
only the chosen one is imported, so `ablate --help` imports no torch, optuna or mlflow. User errors
become one line on stderr with exit status 2 (no traceback): the project's promise for bad input.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from .errors import ConfigError
from .signals import Terminated

# name -> one-line help; the command's code is the module runners.commands.<name>.
COMMANDS = {
    "models": "list the registered models with their size",
    "train": "train one model and log it to MLflow",
    "bench": "training throughput of this trainer vs a conventional loop",
    "run": "run (or resume) an ablation study from a spec file",
    "worker": "join an existing study and run trials until none are left",
    "status": "per-variant progress and results of a study",
    "figures": "paper figures and tables from the MLflow store alone",
    "ui": "serve the MLflow UI on the lab's store and print the study's comparison link",
    "analyze": "why residual nets train: lesions, loss landscape, CKA, gradients, signal propagation",
    "doctor": "self-check of this machine: the CUDA path, agreement, throughput, several nets at once",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, as for every other bad input
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the `chosen` command's module is imported (with its heavy dependencies)."""
    parser = _Parser(prog="ablate", description="Plain vs residual network ablations.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, help_ in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == chosen:
            command = importlib.import_module(f"runners.commands.{name}")
            command.add_arguments(p)
            p.set_defaults(handler=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    # cuBLAS reads this once, at its first call: set here, before any command touches CUDA, so a
    # deterministic run (or a study's later deterministic trial) gets reproducible matmuls.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(chosen if chosen in COMMANDS else None).parse_args(argv)
    args.argv = argv  # a command that relaunches itself under torchrun passes the same arguments on
    try:
        return int(args.handler(args) or 0)
    except ConfigError as e:
        print(f"ablate {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ablate {args.command}: interrupted", file=sys.stderr)
        return 130
    except Terminated as e:  # SIGTERM or SIGHUP: what was running is closed (KILLED); no traceback
        print(f"ablate {args.command}: stopped by {e}", file=sys.stderr)
        return e.exit_status
    except BrokenPipeError:  # `ablate models | head`: the reader left; no traceback, as `ls | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit
        return 141  # 128 + SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
