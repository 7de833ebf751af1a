"""SQL databases behind the Optuna storage and the MLflow store: fail fast, lock across machines."""
from __future__ import annotations

import contextlib
import hashlib
from typing import Iterator
from urllib.parse import quote, unquote

import sqlalchemy

from .errors import ConfigError, first_line, redact


def canonical_url(url: str) -> str:
    """`url` with its user and password percent-encoded, as SQLAlchemy and libpq expect.

    People write passwords raw (`postgresql://u:p@ss/w@host/db`); SQLAlchemy would then split at
    the first '@' and take part of the password for the host, which reaches error messages. The
    userinfo ends at the last '@' before the query string, as libpq reads it.
    """
    if "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    head, q, query = rest.partition("?")
    userinfo, at, hostpath = head.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user, _, password = userinfo.partition(":")
    return f"{scheme}://{quote(unquote(user), safe='')}:{quote(unquote(password), safe='')}@{hostpath}{q}{query}"


def check_database(url: str, what: str, fix: str) -> None:
    """Connect once to a SQLAlchemy database URL, failing fast with one redacted line.

    MLflow retries a failing database with backoff for ~100 s; a researcher with a typo in the
    password should hear about it at once.
    """
    try:
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, connect_args=_timeout(url))
        with engine.connect():
            pass
        engine.dispose()
    except Exception as e:  # noqa: BLE001 - driver errors vary; all mean "cannot use this store"
        raise ConfigError(f"cannot reach {what} {redact(url)}: {first_line(e)}; {fix}") from None


def _timeout(url: str) -> dict:
    return {"connect_timeout": 10} if url.startswith("postgresql") else {}


@contextlib.contextmanager
def advisory_lock(url: str, name: str) -> Iterator[None]:
    """A PostgreSQL session-level advisory lock named `name`, held for the block.

    Serialises what must happen once across every worker on every machine: creating the schema
    of an empty database, and setting a study up.
    """
    key = int.from_bytes(hashlib.sha256(f"ablate:{name}".encode()).digest()[:8], "big", signed=True)
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, connect_args=_timeout(url))
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    finally:
        engine.dispose()
