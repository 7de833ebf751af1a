"""User-facing errors: `ConfigError`, and the helpers that keep every message one safe line.

Imports no torch, optuna or mlflow: the command line's parser and its error path stay fast.
"""
from __future__ import annotations

import difflib
import re
from typing import Iterable

from models.spec import ConfigError

__all__ = ["ConfigError", "first_line", "redact", "reject_unknown", "shown", "split_url"]

MASK = "***"
# A URL anywhere in a text (an error message quotes the URL it failed on).
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://\S+")
# Keys whose value is a secret, wherever `key=value` is written: a URL's query string
# (`?password=`, libpq's `sslpassword=`), or a libpq keyword/value string
# (`host=db password='it''s secret'`, `password = x`). Paths (`sslkey=`, `sslrootcert=`) are not
# secrets and stay readable.
_SECRET_KEYS = r"(?:ssl)?password|passwd|pwd|pass|secret|token|api_?key|access_?key|client_?secret"
# The value: libpq's single-quoted form (backslash escapes a quote or a backslash), or a bare
# word up to whitespace, or, inside a URL, up to the next `&` or `#`.
_SECRET_KV = re.compile(rf"(?i)((?:^|(?<=[\s?&;,(\"'])){_SECRET_KEYS})(\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s&#'\"]*)")


def redact(text) -> str:
    """`text` with every secret of every connection string in it masked: the one place the lab
    masks secrets (messages, tags, printed links, stored errors all go through it).

    Parsed, not pattern-replaced where passwords are written raw: `scheme://:pw@host` (empty
    user), `scheme://user:p@ss/w?rd@host` (the userinfo ends at the *last* '@', see `userinfo`),
    `?password=pw` and `&sslpassword=pw` in the query string, and libpq's keyword/value form
    `host=h password='p w'` anywhere in the text.
    """
    text = _URL.sub(lambda m: _redact_url(m.group(0)), str(text))
    return _SECRET_KV.sub(lambda m: m.group(1) + m.group(2) + MASK, text)


def split_url(url: str, *, widest: bool = False) -> tuple[str, str, str | None, str] | None:
    """(scheme, user, password or None, the rest: host, path, query) of a URL whose userinfo may
    hold raw '@', ':', '/', '?' (as people paste passwords); None without '://' or userinfo.

    The userinfo ends at the last '@' that a host follows (a name, an address or `[v6]`, then a
    port, '/', a query string or the end): libpq and SQLAlchemy split at the first '@' or '?', and would
    take part of such a password for the host; where two '@' would do, the last one before a
    query string (`?key=`). `widest` ends it at the last '@' of all, as a
    mask must (a query value holding '@' is then masked too: more than needed, never less)."""
    if "://" not in url:
        return None
    scheme, rest = url.split("://", 1)
    ats = [i for i, c in enumerate(rest) if c == "@"]
    if not widest:
        ats = [i for i in ats if _HOST.match(rest, i + 1)]
        # Two readings both leave a host (`u@h/db?password=@x`): the one whose userinfo holds
        # no query string (`?key=`).
        ats = [i for i in ats if not _QUERY.search(rest, 0, i)] or ats
    if not ats:
        return None
    user, colon, password = rest[:ats[-1]].partition(":")
    return scheme, user, password if colon else None, rest[ats[-1] + 1:]


_QUERY = re.compile(r"\?[A-Za-z_][\w.-]*=")
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]*\]|[\w.%-]*)(:\d*)?(/|\?[A-Za-z_][\w.-]*=|$)")


def _redact_url(url: str) -> str:
    url = _SECRET_KV.sub(lambda m: m.group(1) + m.group(2) + MASK, url)
    parts = split_url(url, widest=True)
    if parts is None:
        return url
    scheme, user, password, tail = parts
    if password is None:
        # A user name alone, unless it holds what a password would (a '/' or '?', or a masked
        # query left in it): then the whole userinfo is suspect.
        return f"{scheme}://{user}@{tail}" if not set(user) & set("/?=") and MASK not in user \
            else f"{scheme}://{MASK}@{tail}"
    return f"{scheme}://{user}:{MASK}@{tail}"


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an error (a driver's own text where it wraps one), redacted and bounded."""
    text = str(getattr(e, "orig", None) or e).strip()
    return redact(text.splitlines()[0] if text else type(e).__name__)[:limit]


def shown(value, limit: int = 60) -> str:
    """`repr(value)` cut to `limit` characters: an error quotes what it rejects, never all of it."""
    return cut(repr(value), limit)


def cut(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def reject_unknown(given: Iterable[str], allowed: Iterable[str], where: str) -> None:
    """ConfigError naming the unknown fields of a mapping and the allowed ones."""
    allowed = list(allowed)
    unknown = sorted(str(k) for k in set(given) - set(allowed))
    if unknown:
        close = {m for k in unknown for m in difflib.get_close_matches(k, allowed, n=1)}
        hint = f" (did you mean {', '.join(sorted(close))}?)" if close else ""
        raise ConfigError(f"{where}: unknown field(s) {', '.join(cut(k, 40) for k in unknown)}{hint}; "
                          f"allowed: {', '.join(allowed)}")
