"""`ablate figures SPEC | --experiment NAME`: paper figures and tables from the MLflow store alone."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError, redact
from ..paths import default_tracking_uri, results_dir, sqlite_path
from ..tracking.links import DEFAULT_UI



def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", nargs="?", help="ablation spec (ablations/*.yaml); its `name` is the experiment")
    p.add_argument("--experiment", help="MLflow experiment name, instead of SPEC")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field as in `ablate run`, e.g. --set name=X for a renamed study "
                        "(repeatable)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: MLFLOW_TRACKING_URI or "
                   "results/mlflow.db)")
    p.add_argument("--ui-url", default=DEFAULT_UI,
                   help=f"where `mlflow ui` serves, for the printed link (default: {DEFAULT_UI})")
    p.add_argument("--out", default=None, help="output folder (default: results/figures/<study>)")
    p.add_argument("--x", choices=("epoch", "iteration"), default="epoch",
                   help="x axis of the training curves (iteration: the `iteration` metric, as Fig. 6)")
    p.add_argument("--band", choices=("ci", "minmax"), default="ci",
                   help="band over seeds: 95%% t-interval of the mean (min..max below 3 seeds), or min..max")
    p.add_argument("--mlflow-screenshot", action="store_true",
                   help="also mlflow-comparison.png: the MLflow comparison view in headless Chromium "
                        "(serves `mlflow ui` on the store for the shot)")


def run(args) -> int:
    from ..database import canonical_url
    from ..report.figures import write_all
    from ..study.spec import load_spec
    from ..tracking.results import load_study, unfinished
    from ..tracking.store import client
    from ..tracking.view import comparison_link

    if bool(args.spec) == bool(args.experiment):
        raise ConfigError("give either SPEC or --experiment NAME (exactly one)")
    if args.overrides and not args.spec:
        raise ConfigError("--set overrides a spec's fields; give SPEC, or drop --set and name the experiment")
    # The spec is validated, not its data: figures outlive the dataset.
    name = args.experiment or load_spec(args.spec, args.overrides, check_data=False).name
    uri = canonical_url(args.tracking_uri or default_tracking_uri())  # as `ablate run` reads it
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        # A reader: opening a missing SQLite store would create an empty one.
        raise ConfigError(f"no MLflow store at {db}; run the study first "
                          "(`ablate run SPEC`) or give --tracking-uri")
    c = client(uri)
    study = load_study(c, name)
    out = Path(args.out) if args.out else results_dir() / "figures" / name.replace("/", "_")
    out.mkdir(parents=True, exist_ok=True)
    partial = unfinished(c, study)
    written, skipped, notes = write_all(study, out, x=args.x, band=args.band, partial=partial)
    if partial:
        print(f"partial: {partial}; the figures and tables say so (rerun when the study is done)")
    for p in written:
        print(p)
    for s in skipped:
        print(f"skipped: {s}")
    for n in notes:
        print(f"note: {n}")
    if args.mlflow_screenshot:
        print(_screenshot(c, uri, name, out / "mlflow-comparison.png"))
    print(f"MLflow comparison: {comparison_link(c, name, ui=args.ui_url, refresh=True)} "
          f"(serve it with: mlflow ui --backend-store-uri {redact(uri)})")
    return 0


def _screenshot(c, uri: str, name: str, path: Path) -> Path:
    from ..tracking.browser import charts_loaded, find_chromium, screenshot, serve_ui, settled_dom
    from ..tracking.view import comparison_link
    if find_chromium() is None:
        raise ConfigError("--mlflow-screenshot needs Chromium; install it with `apt-get install -y chromium`")

    def shoot(ui: str) -> Path:
        link = comparison_link(c, name, ui=ui, refresh=True)
        _, wait = settled_dom(link, charts_loaded)  # how long the charts take to load here
        return screenshot(link, path, size=(2200, 1750), wait_ms=wait)  # tall enough for the curves and legends

    if uri.startswith(("http://", "https://")):
        return shoot(uri)
    with serve_ui(uri) as base:
        return shoot(base)
