"""`mlflow ui` on the lab's store, with the links into it: what `ablate ui` serves.

The server runs in its own process group (runners/tracking/browser.py `ui_process`) on a free
port unless one is asked for; the comparison links are made for that port, and the study's view
is published again first, so its fitted y ranges and group tags cover the runs finished since.
"""
from __future__ import annotations

import contextlib
import socket
import subprocess
from dataclasses import dataclass
from typing import Iterator

from ..errors import ConfigError
from ..paths import sqlite_path
from .browser import ui_process
from .links import experiment_link
from .store import client
from .view import VIEW_TAG, comparison_link


@dataclass(frozen=True)
class ServedUI:
    url: str  # http://127.0.0.1:PORT
    links: dict[str, str]  # study name -> its comparison link on this server
    process: subprocess.Popen


def check_port(port: int) -> None:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            raise ConfigError(f"port {port} is in use ({e.strerror}); give another with --port, "
                              "or leave --port out for a free one") from None


def study_links(c, study: str | None, ui: str) -> dict[str, str]:
    """{study: comparison link}: of `study` (ConfigError when the store lacks it), else of every
    experiment in the store that has a comparison view; refreshed for the runs finished since."""
    if study is not None:
        link = comparison_link(c, study, ui=ui, refresh=True)
        if link is None:
            raise ConfigError(f"the MLflow store has no study {study!r}; run it first (`ablate run SPEC`)")
        return {study: link}
    return {e.name: comparison_link(c, e.name, ui=ui, refresh=True) or experiment_link(e.experiment_id, ui)
            for e in c.search_experiments() if VIEW_TAG in e.tags}


@contextlib.contextmanager
def serve_store(tracking_uri: str, study: str | None = None, port: int | None = None) -> Iterator[ServedUI]:
    """The MLflow UI on `tracking_uri` for the duration of the block. Checked before anything
    starts: a SQLite store must exist (none is created), the port must be free, the study known."""
    db = sqlite_path(tracking_uri)
    if db is not None and not db.exists():
        raise ConfigError(f"no MLflow store at {db}; run a study first, or give --tracking-uri")
    if port is not None:
        check_port(port)
    c = client(tracking_uri)
    if study is not None and c.get_experiment_by_name(study) is None:
        raise ConfigError(f"the MLflow store {tracking_uri} has no study {study!r}; run it first "
                          "(`ablate run SPEC`)")
    with ui_process(tracking_uri, port) as (url, proc):
        yield ServedUI(url, study_links(c, study, url), proc)
