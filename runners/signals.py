"""Signals as exceptions: SIGTERM (a scheduler, `kill`) raised in the main thread as `Terminated`,
so what is running ends its runs as KILLED and leaves its stores consistent."""
from __future__ import annotations

import contextlib
import signal
from typing import Iterator


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so the run can be closed as KILLED."""


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into `Terminated` for the duration (main thread only)."""
    def handler(signum, frame):
        raise Terminated()
    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
