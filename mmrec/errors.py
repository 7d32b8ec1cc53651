"""Errors meant for users: each says what was wrong, where, and what to do."""

from __future__ import annotations


class MMRecError(Exception):
    """Base class of every error mmrec raises on purpose (the CLI prints these without a traceback)."""


class ConfigError(MMRecError):
    """A configuration value or key is invalid."""


class DataError(MMRecError):
    """Input data is malformed. Carries the file and, when known, the 1-based line (or row) number."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None, hint: str | None = None):
        self.path = str(path) if path is not None else None
        self.line = line
        self.hint = hint
        where = ""
        if self.path is not None:
            where = f"{self.path}"
            if line is not None:
                where += f", line {line}"
            where += ": "
        text = where + message
        if hint:
            text += f"\n  what to do: {hint}"
        super().__init__(text)
