"""Reading text files line by line with errors that name the file and the line."""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from pathlib import Path

from qgn.errors import DataError


def utf8_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a UTF-8 file (a leading BOM is dropped; line ends kept).

    Bytes that are not UTF-8 raise :class:`DataError` at ``file:line`` instead of a bare
    ``UnicodeDecodeError`` that names neither.
    """
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(
                    f"not UTF-8 text (byte 0x{raw[err.start]:02x} at column {err.start + 1}); save the file as UTF-8",
                    str(path),
                    number,
                ) from None
