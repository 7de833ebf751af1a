"""Where the lab keeps its local state: results/ (or $ABLATE_RESULTS) and the default stores in it."""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_RESULTS = "results"


def results_dir() -> Path:
    return Path(os.environ.get("ABLATE_RESULTS", DEFAULT_RESULTS))


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else a SQLite store under results/ (MLflow 3's default kind)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(results_dir() / 'mlflow.db').resolve()}"


def default_storage(study_name: str) -> str:
    """The single-host Optuna journal of a study."""
    return str(results_dir() / "optuna" / f"{study_name}.journal")
