"""The options `ablate run`, `worker` and `status` share, and the status table they print."""
from __future__ import annotations

import argparse

from .table import text_table


def add_spec_arguments(p: argparse.ArgumentParser, optional: bool = False) -> None:
    p.add_argument("spec", nargs="?" if optional else None, help="the study spec, e.g. ablations/he2016a-fig6.yaml")
    p.add_argument("--storage", help="Optuna storage: a journal file path (default: $ABLATE_STORAGE, else "
                                     "results/optuna/<name>.journal) "
                                     "or a database URL such as postgresql://user:pass@host/db")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--attempts", type=int, help="tries per cell before the study gives up on it "
                                                "(default: the spec's `attempts`, else 3)")


def add_execution_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or results/mlflow.db)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--checkpoint-dir", help="where trials checkpoint (shared storage when workers are on "
                                            "several machines); default results/checkpoints")
    p.add_argument("--heartbeat", type=int, default=30, help="seconds between heartbeats on a database "
                                                             "storage; a trial is retried after 3 missed")
    p.add_argument("--retry-failed", action="store_true",
                   help="retry the cells that used up their attempts (their count starts again)")
    p.add_argument("--pack", dest="overrides", action=PackOption, metavar="K|auto",
                   help="train up to K cells that pack (seeds, plain/option-A twins) as one step: the spec's "
                        "resources.pack (auto: measured on a GPU, 1 on a CPU)")
    p.add_argument("--poll", type=float, default=2.0, help=argparse.SUPPRESS)


class PackOption(argparse.Action):
    """--pack K is --set resources.pack=K: the spawned workers get it with the other overrides."""

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        namespace.overrides = [*(namespace.overrides or []), f"resources.pack={value}"]


def runner_options(args) -> dict:
    """The StudyRunner's keyword arguments from the shared options."""
    return dict(storage=args.storage, tracking_uri=args.tracking_uri, device=args.device,
                checkpoint_root=args.checkpoint_dir, heartbeat=args.heartbeat, poll=args.poll,
                attempts=args.attempts)


def print_status(rows: list[dict]) -> None:
    def err(r):
        if r["mean_test_error"] is None:
            return "-"
        std = f" ± {r['std_test_error']:.4f}" if r["std_test_error"] is not None else ""
        return f"{r['mean_test_error']:.4f}{std} (n={r['n']}, best {r['best_test_error']:.4f})"
    cols = ["variant", "search", "complete", "running", "waiting", "pruned", "failed", "retried", "attempts",
            "diverged"]
    print(text_table(cols + ["test error"], [[str(r[c]) for c in cols] + [err(r)] for r in rows]))
