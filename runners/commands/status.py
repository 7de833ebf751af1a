"""`ablate status SPEC`: per-variant progress and results of a study, read from its Optuna storage;
`ablate status` alone: every study in the storage (the journals under results/optuna/, or
--storage) with its progress."""
from __future__ import annotations

import argparse
import json

from .study_options import add_spec_arguments, print_status


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_spec_arguments(p, optional=True)  # without a spec: every study in the storage
    p.add_argument("--tracking-uri", help="MLflow store, for the comparison link (default: MLFLOW_TRACKING_URI "
                                          "or results/mlflow.db)")
    p.add_argument("--json", action="store_true")


def run(args) -> int:
    from ..paths import default_tracking_uri
    from ..study.spec import load_spec
    from ..study.status import open_layout, status
    from ..tracking.view import find_comparison_link
    if args.spec is None:
        return list_all(args)
    spec = load_spec(args.spec, args.overrides, check_data=False)  # status reads no images
    rows = status(open_layout(spec, args.storage, attempts=args.attempts))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print_status(rows)
    link = find_comparison_link(args.tracking_uri or default_tracking_uri(), spec.name)
    if link:
        print(f"\nMLflow comparison: {link}")
    return 0


def list_all(args) -> int:
    from ..study.status import known_storages, list_studies
    from .table import text_table
    rows = list_studies(known_storages(args.storage))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no studies yet: start one with `ablate run ablations/<spec>.yaml`")
        return 0
    cols = ["study", "done", "running", "waiting", "failed", "storage"]
    print(text_table(cols, [[r["study"], f"{r['done']}/{r['cells']}", str(r["running"]), str(r["waiting"]),
                             str(r["failed"]), r["storage"]] for r in rows]))
    return 0
