"""User-facing errors: `ConfigError`, and the helpers that keep every message one safe line.

Imports no torch, optuna or mlflow: the command line's parser and its error path stay fast.
"""
from __future__ import annotations

import difflib
import re
from typing import Iterable

from models.spec import ConfigError

__all__ = ["ConfigError", "first_line", "redact", "reject_unknown", "shown"]

MASK = "***"
# A URL anywhere in a text (an error message quotes the URL it failed on).
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://\S+")
# Query-string parameters that carry a secret: libpq's `password`, and the usual others.
_SECRET_PARAM = re.compile(r"(?i)([?&;](?:password|passwd|pwd|pass|secret|token|api_?key|access_?key)=)[^&#\s]*")


def redact(text) -> str:
    """Every URL in `text` with its password masked, wherever the URL carries it.

    Parsed, not pattern-replaced, because passwords are written raw: `scheme://:pw@host` (empty
    user), `scheme://user:p@ss/w:rd@host` (the userinfo ends at the *last* '@', as libpq reads
    it), and `?password=pw` in the query string.
    """
    return _URL.sub(lambda m: _redact_url(m.group(0)), str(text))


def _redact_url(url: str) -> str:
    url = _SECRET_PARAM.sub(lambda m: m.group(1) + MASK, url)
    scheme, rest = url.split("://", 1)
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    if not colon:
        # No ':' -> a user name alone, unless the query masking above left it in a path, in
        # which case the whole userinfo is suspect: keep only up to the first '/'.
        return f"{scheme}://{userinfo}@{hostpart}" if "/" not in userinfo else f"{scheme}://{MASK}@{hostpart}"
    return f"{scheme}://{user}:{MASK}@{hostpart}"


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
