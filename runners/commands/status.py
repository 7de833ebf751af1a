"""`ablate status SPEC`: per-variant progress and results of a study, read from its Optuna storage."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ConfigError, redact
from ..paths import default_storage
from .study_options import add_spec_arguments, make_runner, print_status


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_spec_arguments(p)
    p.add_argument("--tracking-uri", help="MLflow store, for the comparison link (default: MLFLOW_TRACKING_URI "
                                          "or results/mlflow.db)")
    p.add_argument("--json", action="store_true")


def run(args) -> int:
    from ..study.spec import load_spec
    from ..study.storage import is_database
    spec = load_spec(args.spec, args.overrides)
    url = args.storage or default_storage(spec.name)
    if not is_database(url) and not Path(url).exists():
        raise ConfigError(f"no study storage at {url}; start the study with `ablate run {args.spec}`")
    runner = make_runner(args, track=False)
    if not runner.exists():
        raise ConfigError(f"no study named {spec.name!r} in {redact(runner.storage_url)}; "
                          f"start it with `ablate run {args.spec}`")
    rows = runner.status()
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
