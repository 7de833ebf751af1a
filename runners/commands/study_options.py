"""The options `ablate run`, `worker` and `status` share, and the runner they build from them."""
from __future__ import annotations

import argparse


def add_spec_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="the study spec, e.g. ablations/degradation.yaml")
    p.add_argument("--storage", help="Optuna storage: a journal file path (default: results/optuna/<name>.journal) "
                                     "or a database URL such as postgresql://user:pass@host/db")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field, e.g. --set train.epochs=3 (repeatable)")


def add_execution_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or results/mlflow.db)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--checkpoint-dir", help="where trials checkpoint (shared storage when workers are on "
                                            "several machines); default results/checkpoints")
    p.add_argument("--heartbeat", type=int, default=30, help="seconds between heartbeats on a database "
                                                             "storage; a trial is retried after 3 missed")
    p.add_argument("--poll", type=float, default=2.0, help=argparse.SUPPRESS)


def make_runner(args, **kw):
    from ..study.runner import StudyRunner
    from ..study.spec import load_spec
    spec = load_spec(args.spec, args.overrides)
    return StudyRunner(spec, storage=args.storage, tracking_uri=getattr(args, "tracking_uri", None),
                       device=getattr(args, "device", "auto"), checkpoint_root=getattr(args, "checkpoint_dir", None),
                       heartbeat=getattr(args, "heartbeat", 30), poll=getattr(args, "poll", 2.0), **kw)


def print_status(rows: list[dict]) -> None:
    def err(r):
        if r["mean_test_error"] is None:
            return "-"
        std = f" ± {r['std_test_error']:.4f}" if r["std_test_error"] is not None else ""
        return f"{r['mean_test_error']:.4f}{std} (n={r['n']}, best {r['best_test_error']:.4f})"
    cols = ["variant", "search", "complete", "running", "waiting", "pruned", "failed", "diverged"]
    table = [[str(r[c]) for c in cols] + [err(r)] for r in rows]
    header = cols + ["test error"]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for t in table:
        print("  ".join(c.ljust(w) for c, w in zip(t, widths)))
