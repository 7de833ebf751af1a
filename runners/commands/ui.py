"""`ablate ui [SPEC]`: the MLflow UI on the lab's store, on a free port, with the study's comparison
link for that port; Ctrl-C (exit 130) or SIGTERM (143) stops it and its server."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", nargs="?", help="a study spec: print its comparison link (default: every study's)")
    p.add_argument("--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI or results/mlflow.db)")
    p.add_argument("--port", type=int, help="port to serve on, on 127.0.0.1 (default: a free one)")


def run(args) -> int:
    from ..errors import ConfigError
    from ..paths import default_tracking_uri
    from ..signals import sigterm_raises
    from ..tracking.ui import serve_store
    name = None
    if args.spec:
        from ..study.spec import load_spec
        name = load_spec(args.spec, check_data=False).name
    uri = args.tracking_uri or default_tracking_uri()
    with sigterm_raises(), serve_store(uri, name, args.port) as ui:
        print(f"MLflow UI on {ui.url} (store {uri}); Ctrl-C stops it", flush=True)
        for study, link in ui.links.items():
            print(f"  {study}: {link}", flush=True)
        if not ui.links:
            print(f"  no study in the store has a comparison view yet; experiments: {ui.url}", flush=True)
        code = ui.process.wait()
    if code != 0:
        raise ConfigError(f"mlflow ui exited with status {code}")
    return 0
