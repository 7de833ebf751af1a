"""`ablate status SPEC`: per-variant progress and results of a study, read from its Optuna storage."""
from __future__ import annotations

import argparse
import json

from ..paths import default_storage
from .study_options import add_spec_arguments, print_status


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_spec_arguments(p)
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
        print_status(rows)
    return 0
