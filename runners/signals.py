"""Signals as exceptions: SIGTERM (a scheduler, `kill`) and SIGHUP (a closed terminal or ssh
session) raised in the main thread as `Terminated`, so what is running ends its runs as KILLED,
leaves its stores consistent and exits 128 + the signal's number, as a shell reports it."""
from __future__ import annotations

import contextlib
import signal
from typing import Iterator

STOPPING = (signal.SIGTERM, signal.SIGHUP)


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM or SIGHUP, so the run can be closed as KILLED."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into `Terminated` for the duration (main thread only)."""
    def handler(signum, frame):
        raise Terminated(signum)
    try:
        previous = {s: signal.signal(s, handler) for s in STOPPING}
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
