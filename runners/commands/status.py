"""`ablate status SPEC`: per-variant progress and results of a study, read from its Optuna storage."""
from __future__ import annotations

import argparse
import json

from .study_options import add_spec_arguments, print_status


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_spec_arguments(p)
    p.add_argument("--tracking-uri", help="MLflow store, for the comparison link (default: MLFLOW_TRACKING_URI "
                                          "or results/mlflow.db)")
    p.add_argument("--json", action="store_true")


def run(args) -> int:
    from ..paths import default_tracking_uri
    from ..study.spec import load_spec
    from ..study.status import open_layout, status
    from ..tracking.view import find_comparison_link
    spec = load_spec(args.spec, args.overrides)
    rows = status(open_layout(spec, args.storage, attempts=args.attempts))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print_status(rows)
    link = find_comparison_link(args.tracking_uri or default_tracking_uri(), spec.name)
    if link:
        print(f"\nMLflow comparison: {link}")
    return 0
