"""`ablate status SPEC`: per-variant progress and results of a study, read from its Optuna storage."""
from __future__ import annotations

import argparse
import json

from ..paths import default_storage
from .study_options import add_spec_arguments, print_status


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_spec_arguments(p)
    p.add_argument("--tracking-uri", help="MLflow store, for the comparison link (default: MLFLOW_TRACKING_URI "
                                          "or results/mlflow.db)")
    p.add_argument("--json", action="store_true")


def run(args) -> int:
    from ..database import canonical_url
    from ..study.spec import load_spec
    from ..study.status import open_layout, status
    spec = load_spec(args.spec, args.overrides)
    layout = open_layout(spec, canonical_url(args.storage) if args.storage else default_storage(spec.name),
                         attempts=args.attempts)
    rows = status(layout)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        from ..paths import default_tracking_uri
        from ..tracking.view import find_comparison_link
        print_status(rows)
        link = find_comparison_link(args.tracking_uri or default_tracking_uri(), spec.name)
        if link:
            print(f"\nMLflow comparison: {link}")
    return 0
