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


# MLflow retries a tracking server that does not answer for minutes (7 retries, backoff from 2 s
# doubling, 120 s a request), per call, and a dead server's run would then hang through every
# call that closes it. A process of the lab gives up sooner: a server that refuses connections
# (killed, restarting) after 3 retries within about 10 s, one that does not answer after at
# most 4 x 30 s; the worker then stops in one line (tracker.StoreUnreachable) and the rerun resumes.
# A value the user set in the environment is kept (one equal to the lab's counts as the lab's:
# workers inherit them).
SERVER_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
# The reachability check before anything is written: an unreachable server is one line at once.
CHECK_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


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
    # Bounded retries for the whole process (`SERVER_LIMITS`), quicker ones for this check.
    own = [k for k in SERVER_LIMITS if os.environ.get(k, SERVER_LIMITS[k]) == SERVER_LIMITS[k]] \
        if uri.startswith(("http://", "https://")) else []
    os.environ.update({k: CHECK_LIMITS.get(k, SERVER_LIMITS[k]) for k in own})
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
        os.environ.update({k: SERVER_LIMITS[k] for k in own})
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
    """MLflow's INFO lines (schema creation and migration on a new store) are not ours to show, nor
    urllib3's warning at each retry of a tracking server: what follows them is one line of ours."""
    for name in ("mlflow.store", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


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
