"""The MLflow tracking store: a checked client, its experiments, and a run's `superseded` mark."""
from __future__ import annotations

import contextlib
import logging
import os

from mlflow.tracking import MlflowClient

from ..database import advisory_lock, canonical_url, check_database
from ..errors import ConfigError, first_line, redact
from ..files import file_lock
from ..paths import default_tracking_uri, results_dir, sqlite_path


def client(uri: str | None = None):
    """An MlflowClient for `uri`, checked to be reachable; errors are one redacted line. A raw
    password in the URI (`--tracking-uri` or MLFLOW_TRACKING_URI) is percent-encoded first, so
    every command reads the URI as `ablate run` does."""
    uri = canonical_url(uri or default_tracking_uri())
    quiet_mlflow()
    # MLflow prints "View run ... at: <the tracking URI>" when a run ends, password and all; the
    # lab prints its own links, redacted.
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    is_db = "://" in uri and not uri.startswith(("sqlite", "http://", "https://", "file:", "databricks"))
    if is_db:
        check_database(uri, "the MLflow tracking store", "check --tracking-uri / MLFLOW_TRACKING_URI")
    # An unreachable server would otherwise be retried with backoff for minutes.
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    saved = {k: os.environ.get(k) for k in quick}
    os.environ.update({k: v for k, v in quick.items() if saved[k] is None})
    try:
        # The first client on an empty database creates MLflow's schema, which is not safe to do
        # twice at once (two `ablate run` started together on an empty results/): once, under a
        # lock, while any other waits.
        lock = advisory_lock(uri, "mlflow-schema") if uri.startswith("postgresql") else \
            file_lock(db.with_name(db.name + ".schema-lock")) if db is not None else contextlib.nullcontext()
        with lock:
            c = MlflowClient(tracking_uri=uri)
            c.search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - any failure here means the store is unusable
        if uri.startswith("file:"):
            # MLflow 3 refuses file stores with a paragraph that never names the path.
            path = uri.removeprefix("file://") if uri.startswith("file://") else uri.removeprefix("file:")
            cause = ("MLflow refuses file stores unless MLFLOW_ALLOW_FILE_STORE=true"
                     if "MLFLOW_ALLOW_FILE_STORE" in str(e) else first_line(e, 200))
            raise ConfigError(f"cannot use the MLflow file store {path}: {cause}; "
                              f"use --tracking-uri sqlite:///{path.rstrip('/')}.db (or fix the path)") from None
        raise ConfigError(f"cannot reach the MLflow tracking store {redact(uri)}: {first_line(e, 200)}; "
                          "check --tracking-uri / MLFLOW_TRACKING_URI") from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
    return c


def store_identity(uri: str) -> tuple[int, int] | None:
    """(device, inode) of the SQLite file behind `uri`; None for other stores or no file. A file
    deleted, or deleted and made again empty by a stray connection, has another identity."""
    db = sqlite_path(canonical_url(uri))
    try:
        st = db.stat() if db is not None else None
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino) if st is not None else None


def quiet_mlflow() -> None:
    """MLflow's INFO lines (schema creation and migration on a new store) are not ours to show."""
    for name in ("mlflow.store", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def mark_superseded(c, run_id: str) -> None:
    """Tag an interrupted attempt whose retry exists: the comparison view and the figures skip it."""
    c.set_tag(run_id, "superseded", "true")


def get_or_create_experiment(c, name: str) -> str:
    """The experiment id of `name`, created if needed; safe when several workers race to create it."""
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    uri = c.tracking_uri
    location = None
    if sqlite_path(uri) is not None:  # keep artifacts beside the local store, not in the CWD
        location = (sqlite_path(uri).parent / "mlartifacts").resolve().as_uri()
    elif not uri.startswith(("http://", "https://", "databricks")):
        # A database store (e.g. PostgreSQL) without a server: artifacts under results/, which
        # must be a shared directory when workers run on several machines. A tracking server
        # decides its own artifact root (--artifacts-destination).
        location = (results_dir() / "mlartifacts").resolve().as_uri()
    try:
        return c.create_experiment(name, artifact_location=location and f"{location}/{name}")
    except Exception:  # noqa: BLE001 - another worker created it first
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id
