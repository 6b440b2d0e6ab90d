"""Exceptions for bad user input. The CLI prints these as one line; everything else is a bug."""

from __future__ import annotations


class QGNError(ValueError):
    """Bad user input or configuration (shown to the user without a traceback)."""


class DataError(QGNError):
    """Malformed data, naming the file and, where known, the line.

    >>> str(DataError("unknown type 'FOO'", path="train.txt", line=12))
    "train.txt:12: unknown type 'FOO'"
    """

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        self.path, self.line, self.message = path, line, message
        where = "" if path is None else (f"{path}:{line}: " if line is not None else f"{path}: ")
        super().__init__(f"{where}{message}")
