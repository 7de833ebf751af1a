"""Where the lab keeps its local state: results/ (or $ABLATE_RESULTS), the default stores in it,
and the file behind a store URL."""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_RESULTS = "results"
SQLITE = "sqlite:///"
STORAGE_ENV = "ABLATE_STORAGE"  # the Optuna storage a worker process is handed (never on its command line)


def results_dir() -> Path:
    return Path(os.environ.get("ABLATE_RESULTS", DEFAULT_RESULTS))


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else a SQLite store under results/ (MLflow 3's default kind)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"{SQLITE}{(results_dir() / 'mlflow.db').resolve()}"


def default_storage(study_name: str) -> str:
    """$ABLATE_STORAGE (how `ablate run` hands its workers a database URL), else the single-host
    Optuna journal of the study."""
    return os.environ.get(STORAGE_ENV) or str(results_dir() / "optuna" / f"{study_name}.journal")


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URL; None for any other kind of store."""
    return Path(uri[len(SQLITE):]) if uri.startswith(SQLITE) else None


def journal_path(url: str) -> Path | None:
    """The file of a journal storage (a path, or file://path); None for a database URL."""
    if "://" in url and not url.startswith("file://"):
        return None
    return Path(url.removeprefix("file://"))
