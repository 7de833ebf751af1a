"""User-facing errors: `ConfigError`, and the helpers that keep every message one safe line.

Imports no torch, optuna or mlflow: the command line's parser and its error path stay fast.
"""
from __future__ import annotations

import re

from models.spec import ConfigError

__all__ = ["ConfigError", "first_line", "redact"]


def redact(url: str) -> str:
    """`scheme://user:secret@host` -> `scheme://user:***@host`: credentials never reach logs."""
    return re.sub(r"(://[^:/@\s]+):[^@\s]*@", r"\1:***@", str(url))


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an error (a driver's own text where it wraps one), redacted and bounded."""
    text = str(getattr(e, "orig", None) or e).strip()
    return redact(text.splitlines()[0] if text else type(e).__name__)[:limit]
