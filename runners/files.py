"""Writing a file so that a crash leaves the old version or the new one, never half of one; and
a lock file that serialises processes on one host."""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import BinaryIO, Callable, Iterator


def atomic_write(path: Path, write: Callable[[BinaryIO], None], *, durable: bool = True) -> Path:
    """Call `write(f)` on a temporary file beside `path`, then rename it over `path`.

    The temporary name holds the pid, so two processes never write one temporary file, and starts
    with a dot, so a reader listing the folder skips it. A write that fails (a full disk) removes
    its temporary file and raises. `durable` fsyncs before the rename: for checkpoints and stores,
    not for caches that can be rebuilt.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def stale_temporaries(path: Path) -> list[Path]:
    """The temporary files `atomic_write` left beside `path` when its process died mid-write."""
    return list(Path(path).parent.glob(f".{Path(path).name}.*.tmp"))


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive `flock` on `path` (created if needed) for the block; the kernel releases it
    when its holder dies, so a killed process never leaves it held."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
