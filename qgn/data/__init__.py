"""Readers, writers and records for GMNER data.

:func:`read_dataset` is the one entry point the trainer, the evaluator and the CLI use; it detects
the layout (Twitter-GMNER, Twitter-FMNERG, JSONL) and returns ``list[Post]`` in file order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from qgn.data.fmnerg import (
    FMNERG_COARSE_TO_FINE,
    FMNERG_COARSE_TO_GMNER,
    FMNERG_COARSE_TYPES,
    FMNERG_EXTRA_FINE_TYPES,
    FMNERG_FINE_TO_COARSE,
    FMNERG_FINE_TYPES,
    read_twitter_fmnerg,
)
from qgn.data.images import ImageCheck, ImageResolver, check_images, load_image, maybe_resolve_images, resolve_images
from qgn.data.jsonl import read_jsonl, write_jsonl
from qgn.data.records import Box, Entity, Post, Prediction
from qgn.data.text import split_words
from qgn.data.twitter import GMNER_TYPES, SPLITS, ReadReport, count_text_columns, read_twitter_gmner
from qgn.errors import QGNError

TEXT_FOLDERS = ("txt", "txt_fine")


def detect_layout(path: str | Path, split: str | None = None) -> str:
    """``jsonl`` (a file), ``twitter-gmner`` / ``twitter-fmnerg`` (a folder with ``txt/``, told apart
    by the column count of ``split``'s file), or ``jsonl-dir`` (a folder of ``<split>.jsonl``)."""
    path = Path(path)
    if path.is_file():
        return "jsonl"
    if not path.is_dir():
        raise QGNError(f"dataset not found: {path}")
    for folder in TEXT_FOLDERS:
        if (path / folder).is_dir():
            # Column count of the requested split, else of any split (a missing split is reported by the reader).
            files = [f for f in [path / folder / f"{split}.txt"] if split and f.is_file()]
            files = files or sorted((path / folder).glob("*.txt"))
            if files and count_text_columns(files[0]) == 3:
                return "twitter-fmnerg"
            return "twitter-gmner"
    if any(path.glob("*.jsonl")):
        return "jsonl-dir"
    raise QGNError(
        f"{path}: not a dataset folder (expected txt/<split>.txt with xml/, or <split>.jsonl files, "
        f"or give a .jsonl file)"
    )


def available_splits(path: str | Path) -> list[str]:
    """Splits present in a dataset folder (train/dev/test first, then any others), or the file's stem."""
    path = Path(path)
    if path.is_file():
        return [path.stem]
    layout = detect_layout(path)
    if layout == "jsonl-dir":
        names = [p.stem for p in path.glob("*.jsonl")]
    else:
        names = [p.stem for folder in TEXT_FOLDERS if (path / folder).is_dir() for p in (path / folder).glob("*.txt")]
    names = sorted(set(names))
    return [s for s in SPLITS if s in names] + [s for s in names if s not in SPLITS]


def read_dataset(
    path: str | Path,
    split: str | None = None,
    image_dir: str | Path | None = None,
    missing_images: str | None = None,
    fmnerg_xml_dir: str | Path | None = None,
    entity_types: Sequence[str] | None = None,
    report: ReadReport | None = None,
) -> list[Post]:
    """Read one split of any supported layout.

    Args:
        path: a ``.jsonl`` file (``split`` is then ignored), a Twitter-GMNER / Twitter-FMNERG folder
            (``txt/`` + ``xml/``), or a folder of ``<split>.jsonl`` files.
        split: ``train``, ``dev`` or ``test``; required for folders.
        image_dir: image folder (flat or ``twitter2015_images/`` + ``twitter2017_images/``).
        missing_images: ``fail``, ``skip`` or ``text_only``; ``None`` means ``fail`` when images are
            looked for, and no check of JSONL ``image`` paths when no ``image_dir`` is given.
        fmnerg_xml_dir: the GMNER v2.0 ``xml/`` folder for Twitter-FMNERG text (default: the
            dataset's own ``xml/`` when it has one).
        entity_types: allowed types (default: the layout's inventory; any type for JSONL).
        report: filled with what the reader learned (xml counts, repairs).
    """
    layout = detect_layout(path, split)
    if layout == "jsonl":
        return read_jsonl(path, image_dir, missing_images, entity_types, report)
    if split is None:
        raise QGNError(f"{path}: a dataset folder needs a split (one of {', '.join(available_splits(path))})")
    path = Path(path)
    if layout == "jsonl-dir":
        file = path / f"{split}.jsonl"
        if not file.is_file():
            raise QGNError(f"split {split!r} not found: looked for {file}")
        return read_jsonl(file, image_dir, missing_images, entity_types, report)
    policy = missing_images or "fail"
    if layout == "twitter-fmnerg":
        xml_dir = Path(fmnerg_xml_dir) if fmnerg_xml_dir is not None else path / "xml"
        if not xml_dir.is_dir():
            raise QGNError(
                f"{path} holds Twitter-FMNERG text (3 columns); its boxes come from the GMNER v2.0 "
                f"xml folder: pass fmnerg_xml_dir (--fmnerg-xml DIR); {xml_dir} does not exist"
            )
        return read_twitter_fmnerg(path, split, xml_dir, image_dir, policy, entity_types, report)
    return read_twitter_gmner(path, split, image_dir, policy, entity_types, report)


__all__ = [
    "Box",
    "Entity",
    "Post",
    "Prediction",
    "ReadReport",
    "ImageCheck",
    "ImageResolver",
    "GMNER_TYPES",
    "SPLITS",
    "FMNERG_COARSE_TO_FINE",
    "FMNERG_COARSE_TO_GMNER",
    "FMNERG_COARSE_TYPES",
    "FMNERG_EXTRA_FINE_TYPES",
    "FMNERG_FINE_TO_COARSE",
    "FMNERG_FINE_TYPES",
    "available_splits",
    "check_images",
    "detect_layout",
    "load_image",
    "maybe_resolve_images",
    "read_dataset",
    "read_jsonl",
    "read_twitter_fmnerg",
    "read_twitter_gmner",
    "resolve_images",
    "split_words",
    "write_jsonl",
]
