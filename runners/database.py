"""SQL databases behind the Optuna storage and the MLflow store: fail fast, lock across machines."""
from __future__ import annotations

import contextlib
import hashlib
import re
from typing import Iterator
from urllib.parse import quote, unquote

import sqlalchemy

from .errors import ConfigError, first_line, redact, split_url


def canonical_url(url: str) -> str:
    """`url` with its user and password percent-encoded, as SQLAlchemy and libpq expect.

    People write passwords raw (`postgresql://u:p@ss?w/rd@host/db`); SQLAlchemy would then split
    at the first '@' (or '?') and take part of the password for the host, which reaches error
    messages. The userinfo is found as `redact` finds it (runners/errors.py `split_url`).
    A libpq keyword/value string (`host=db password=...`) is refused: Optuna and MLflow take URLs.
    """
    if "://" not in url:
        if _KEYWORD_DSN.match(url):
            raise ConfigError(f"{redact(url)!r} is a libpq keyword/value string; Optuna and MLflow take URLs: "
                              "write it as postgresql://USER:PASSWORD@HOST:PORT/DBNAME (or set PGPASSWORD)")
        return url
    parts = split_url(url)
    if parts is None or parts[2] is None:
        return url
    scheme, user, password, tail = parts
    return f"{scheme}://{quote(unquote(user), safe='')}:{quote(unquote(password), safe='')}@{tail}"


# libpq's keyword/value form: `key=value` words, e.g. `host=db dbname=x password=y`.
_KEYWORD_DSN = re.compile(r"^\s*(host|hostaddr|port|dbname|user|password|service|sslmode)\s*=", re.I)


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
