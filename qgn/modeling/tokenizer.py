"""An offline WordPiece tokenizer built from a word list, for tiny models trained from scratch.

Tests and the CPU demo use text encoders with random weights, so they need a tokenizer that
downloads nothing. The vocabulary is the BERT specials, every printable ASCII character and its
``##`` continuation (so any ASCII text tokenises without ``[UNK]``: an unknown word falls back to
characters), then the given words.
"""

from __future__ import annotations

import os
import string
import tempfile
from collections.abc import Iterable
from pathlib import Path

from transformers import BertTokenizerFast  # type: ignore[attr-defined]  # transformers 5: an alias it does not declare

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # [PAD] must be id 0


def word_vocabulary(words: Iterable[str], lowercase: bool = False) -> list[str]:
    """The vocabulary list (id = position): specials, ASCII chars, ``##`` chars, then the words.

    Words are deduplicated keeping their first occurrence, so the same input always gives the
    same ids. Words with whitespace cannot be WordPiece entries and are skipped (the character
    fallback still covers them).
    """
    characters = [c for c in string.printable if not c.isspace()]
    vocab = SPECIAL_TOKENS + characters + ["##" + c for c in characters]
    seen = set(vocab)
    for word in words:
        if lowercase:
            word = word.lower()
        if not word or any(c.isspace() for c in word) or word in seen:
            continue
        seen.add(word)
        vocab.append(word)
    return vocab


def build_word_tokenizer(
    words: Iterable[str], out_dir: str | os.PathLike | None = None, lowercase: bool = False
) -> BertTokenizerFast:
    """Build a fast BERT WordPiece tokenizer whose vocabulary is ``word_vocabulary(words)``.

    Args:
        words: the words to add whole (e.g. the training words), in a stable order.
        out_dir: where to write ``vocab.txt`` (and the saved tokenizer); a temporary folder when
            ``None``.
        lowercase: lowercase text before lookup (the default keeps case, like ``bert-base-cased``).
    Returns:
        The tokenizer; ``len(tokenizer)`` is the ``vocab_size`` the text encoder needs.
    """
    vocab = word_vocabulary(words, lowercase=lowercase)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(out_dir) if out_dir is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        # from_pretrained on a folder holding only vocab.txt works on transformers 4 and 5
        # (the 5.x constructor ignores ``vocab_file``).
        tokenizer = BertTokenizerFast.from_pretrained(
            str(folder), do_lower_case=lowercase, strip_accents=False if not lowercase else None
        )
        if out_dir is not None:
            tokenizer.save_pretrained(str(folder))
    if len(tokenizer) != len(vocab) or tokenizer.pad_token_id != 0:
        raise RuntimeError(f"word tokenizer has {len(tokenizer)} entries, expected {len(vocab)} with [PAD]=0")
    return tokenizer
