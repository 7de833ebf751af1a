"""Optuna storage for studies: open it, lock its setup, and find the trials of dead workers.

* No URL: a journal file under results/optuna/ (Optuna's `JournalFileBackend`), safe for several
  processes on one host and needing no server. It has no heartbeat, so a dead worker is found by
  its process id: every trial records `host:pid:start-time` of the worker that runs it.
* A database URL (postgresql://..., any SQLAlchemy URL Optuna supports): `RDBStorage` with
  heartbeats, so a worker that dies on any machine has its trial failed and retried by the
  survivors once its heartbeat is older than the grace period.

Setting a study up (creating it, enqueuing its grid, creating its MLflow parent run) happens under
a lock: a PostgreSQL advisory lock, or a file lock beside the journal or SQLite file, so N workers
started at once on N machines never enqueue a grid cell twice.

A journal is verified before it is used: a crash or a full disk can cut its last record short,
and Optuna would skip that record silently and then append to it. A torn last record is cut
off (after a backup copy); anything worse is refused with one line.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator

import optuna
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from ..database import advisory_lock, check_database
from ..errors import ConfigError, first_line, redact
from ..files import file_lock
from ..paths import journal_path, sqlite_path
from . import optuna_private as private
from .optuna_private import heartbeat_interval

_log = logging.getLogger(__name__)

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)


def is_database(url: str) -> bool:
    return journal_path(url) is None


def open_storage(url: str, *, heartbeat: int = 30, on_stale: Callable | None = None):
    """An Optuna storage for `url` (a database URL or a journal file path), checked reachable."""
    if not is_database(url):
        path = journal_path(url)
        created = not path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = JournalFlock(str(path))
        verify_journal(path, lock)
        try:
            return JournalStorage(JournalFileBackend(str(path), lock_obj=lock))
        except Exception as e:  # noqa: BLE001 - e.g. a full disk: leave no empty journal behind
            if created and path.exists() and path.stat().st_size == 0:
                path.unlink()
            raise ConfigError(f"cannot open the Optuna journal {path}: {first_line(e)}") from None
    check_database(url, "the Optuna storage", "check the host, the credentials and that the database exists")
    lock = advisory_lock(url, "optuna-schema") if url.startswith("postgresql") else contextlib.nullcontext()
    try:
        with lock:  # N workers starting at once on an empty database create its tables once
            return optuna.storages.RDBStorage(
                url, engine_kwargs={"pool_pre_ping": True}, heartbeat_interval=heartbeat,
                grace_period=3 * heartbeat, heartbeat_stale_trial_callback=on_stale)
    except Exception as e:  # noqa: BLE001 - driver errors vary; all mean "cannot use this store"
        raise ConfigError(f"cannot open the Optuna storage {redact(url)}: {first_line(e)}; "
                          "check the host, the credentials and that the database exists") from None


class JournalFlock:
    """The journal's write lock as a `flock` on `<journal>.flock`.

    Optuna's default (a symlink) outlives a writer killed by SIGKILL, and the next writer then
    waits its 30 s grace period; the kernel drops a flock the moment its holder dies. A journal
    is single-host by design (several hosts need a database), where flock is reliable.
    """

    def __init__(self, journal: str) -> None:
        self._path = journal + ".flock"
        self._held = threading.local()

    def acquire(self) -> bool:
        f = open(self._path, "a")
        fcntl.flock(f, fcntl.LOCK_EX)
        self._held.file = f
        return True

    def release(self) -> None:
        f = self._held.file
        self._held.file = None
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def verify_journal(path: Path, lock: JournalFlock) -> None:
    """Check that every record of a journal is whole JSON; repair a torn last record.

    A record is one line. A crash or a full disk mid-append leaves the last line without its
    newline: that record was never acknowledged, so it is cut off (the file is first copied to
    `<journal>.torn-<time>`). A bad record anywhere else is damage this cannot judge: refused.
    """
    if not path.exists() or path.stat().st_size == 0:
        return
    lock.acquire()  # no writer is mid-append while we read
    try:
        data = path.read_bytes()
        *lines, tail = data.split(b"\n")
        for i, line in enumerate(lines):
            try:
                ok = isinstance(json.loads(line), dict)
            except ValueError:
                ok = False
            if not ok:
                raise ConfigError(
                    f"Optuna journal {path}: record {i + 1} of {len(lines) + bool(tail)} is not a journal record "
                    "(the file is damaged, not merely cut short); restore it from a backup, or move it aside "
                    "to start the study over (finished runs stay in MLflow)")
        if not tail:
            return
        if not tail.startswith(b"{"):
            raise ConfigError(f"Optuna journal {path}: it ends in {len(tail)} bytes that are not a journal record; "
                              "remove them (after a backup) or restore the file from a backup")
        backup = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.copy2(path, backup)
        with open(path, "r+b") as f:
            f.truncate(len(data) - len(tail))
            f.flush()
            os.fsync(f.fileno())
        _log.warning("Optuna journal %s: its last record was cut short (a crash or a full disk mid-write); "
                     "removed it, kept the original as %s", path, backup)
    finally:
        lock.release()


@contextlib.contextmanager
def setup_lock(url: str, study_name: str) -> Iterator[None]:
    """Serialise study setup across processes and machines."""
    if url.startswith("postgresql"):
        with advisory_lock(url, f"setup:{study_name}"):
            yield
        return
    path = sqlite_path(url) or journal_path(url)
    if path is None:
        # Other databases: no portable lock. Setup is still idempotent, only not race-free.
        yield
        return
    with file_lock(path.with_name(path.name + ".setup-lock")):  # ".lock" is the journal's own lock file
        yield


# -- who runs a trial, and is it still alive? ----------------------------------------------------
def worker_id() -> str:
    """host:pid:start-time; the start time tells a live worker from a reused pid."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def _start_time(pid: int) -> str:
    try:
        # Field 22 of /proc/<pid>/stat; the process name (field 2) may contain spaces.
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def worker_is_dead(worker: str | None) -> bool:
    """True only when `worker` ran on this host and that process is gone."""
    if not worker:
        return False
    host, pid, start = worker.rsplit(":", 2)
    if host != socket.gethostname():
        return False  # another host: only heartbeats (database storage) can tell
    return _start_time(int(pid)) != start


def fail_stale_trials(study: optuna.Study, on_stale: Callable[[optuna.Study, FrozenTrial], None]) -> None:
    """Fail the RUNNING trials of dead workers and hand each to `on_stale` (exactly once)."""
    if heartbeat_interval(private.storage_of(study)):
        optuna.storages.fail_stale_trials(study)  # calls the storage's stale-trial callback
        return
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not worker_is_dead(t.user_attrs.get("worker")):
            continue
        failed = private.fail(study, private.trial_id(t))  # only the process that wins handles it
        if failed is not None:
            on_stale(study, failed)


class Heartbeat:
    """Record a trial's heartbeat on a database storage while it trains (no-op on a journal)."""

    def __init__(self, study: optuna.Study, trial_id: int) -> None:
        storage = private.storage_of(study)
        self._enabled = bool(heartbeat_interval(storage))
        self._storage, self._trial_id = storage, trial_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        interval = heartbeat_interval(self._storage)
        while True:
            try:
                private.record_heartbeat(self._storage, self._trial_id)
            except Exception:  # noqa: BLE001 - a missed beat must not kill training
                pass
            if self._stop.wait(interval):
                return

    def __enter__(self) -> "Heartbeat":
        if self._enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._enabled:
            self._stop.set()
            self._thread.join()
