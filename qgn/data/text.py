"""Split raw text into words the way the Twitter-GMNER benchmark is tokenised.

The benchmark's tokens separate punctuation, ``@``, ``#`` and apostrophes from words
(``Trump ' s``, ``@ instagram``, ``# Tea``). A model trained on it sees such words, so raw text
given to ``qgn predict`` is split the same way; URLs are kept whole.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"https?://\S+|www\.\S+|\w+(?:[.\-]\w+)*|[^\w\s]", re.UNICODE)


def split_words(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Return the words of ``text`` and their ``(start, end)`` character offsets.

    >>> split_words("Angelina Jolie's #Paris trip!")
    (['Angelina', 'Jolie', "'", 's', '#', 'Paris', 'trip', '!'], [(0, 8), (9, 14), (14, 15), (15, 16), (17, 18), (18, 23), (24, 28), (28, 29)])
    """
    tokens, offsets = [], []
    for match in _WORD.finditer(text):
        tokens.append(match.group())
        offsets.append((match.start(), match.end()))
    return tokens, offsets
