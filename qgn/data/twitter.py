"""Reader for the Twitter-GMNER benchmark layout (v1 ``Twitter10000`` and ``Twitter10000_v2.0``).

Layout (docs/data.md, "Twitter-GMNER")::

    DIR/txt/{train,dev,test}.txt     CoNLL-like blocks: ``IMGID:<id>`` then ``token<TAB>BIO-tag``
    DIR/xml/<IMGID>.xml              Pascal-VOC boxes; ``<name>`` is the entity surface string

An entity's boxes are every xml object whose ``<name>`` equals the entity's tokens joined by single
spaces (exact, case-sensitive). No xml file, or no object with that name, means "no box".
The CoNLL parsing helpers here are shared with the Twitter-FMNERG reader (three columns).
"""

from __future__ import annotations

import logging
import math
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from qgn.data.files import utf8_lines
from qgn.data.records import Box, Entity, Post
from qgn.errors import DataError, QGNError

logger = logging.getLogger(__name__)

GMNER_TYPES = ("PER", "LOC", "ORG", "OTHER")
SPLITS = ("train", "dev", "test")
_ID_PREFIX = "IMGID:"
# Warn about the first few stray I- tags one by one, then only in the summary: v1 has 8 in total.
_MAX_STRAY_WARNINGS = 5


@dataclass
class ReadReport:
    """Facts a reader learns that the posts alone do not carry (used by ``qgn data stats``).

    Attributes:
        layout: ``twitter-gmner``, ``twitter-fmnerg`` or ``jsonl``.
        path: the file that was read.
        xml_files: posts that had an xml file (``None`` for JSONL).
        xml_objects: ``<object>`` elements in those files, i.e. boxes (``None`` for JSONL).
        unmatched_names: distinct xml names per post that match no entity of the post.
        unmatched_boxes: xml objects carrying those names (boxes no entity receives).
        stray_i_tags: ``I-X`` tags that did not continue an ``X`` entity (repaired IOB1-style).
        skipped_posts: posts dropped by the ``skip`` missing-image policy.
        skipped_entities: gold entities of those posts (a score over the kept posts misses them).
    """

    layout: str = ""
    path: str = ""
    xml_files: int | None = None
    xml_objects: int | None = None
    unmatched_names: int | None = None
    unmatched_boxes: int | None = None
    stray_i_tags: int = 0
    skipped_posts: int = 0
    skipped_entities: int = 0


# ------------------------------------------------------------------------------- CoNLL text
@dataclass
class TaggedBlock:
    """One post of a CoNLL-like file before entities are built.

    ``columns[k][i]`` is the k-th label column of token ``i``; ``lines[i]`` its 1-based line.
    """

    id: str
    id_line: int
    tokens: list[str]
    columns: list[list[str]]
    lines: list[int]


def split_file(data_dir: str | Path, split: str, text_folders: Sequence[str] = ("txt",)) -> Path:
    """``DIR/<folder>/<split>.txt`` for the first folder holding it; a clear error otherwise."""
    tried = [Path(data_dir) / folder / f"{split}.txt" for folder in text_folders]
    for candidate in tried:
        if candidate.is_file():
            return candidate
    raise QGNError(f"split {split!r} not found: looked for {', '.join(str(p) for p in tried)}")


def read_tagged_blocks(path: str | Path, num_columns: int) -> list[TaggedBlock]:
    """Parse a CoNLL-like file into blocks of ``token<TAB>label...`` lines.

    Args:
        path: the txt file.
        num_columns: fields per token line (2 for GMNER, 3 for FMNERG).
    """
    path = str(path)
    blocks: list[TaggedBlock] = []
    current: TaggedBlock | None = None
    for number, raw in utf8_lines(path):
        line = raw.rstrip("\r\n")
        if not line.strip():
            current = None  # blank line(s) end the block
            continue
        if line.startswith(_ID_PREFIX):
            post_id = line[len(_ID_PREFIX) :].strip()
            if not post_id:
                raise DataError("empty IMGID", path=path, line=number)
            current = TaggedBlock(post_id, number, [], [[] for _ in range(num_columns - 1)], [])
            blocks.append(current)
            continue
        if current is None:
            raise DataError(
                f"token line outside a post (expected 'IMGID:<id>' first): {line!r}", path=path, line=number
            )
        fields = line.split("\t")
        if len(fields) != num_columns or not fields[0]:
            raise DataError(
                f"expected {num_columns} tab-separated fields (token, "
                f"{'tag' if num_columns == 2 else 'coarse tag, fine tag'}), got {line!r}",
                path=path,
                line=number,
            )
        current.tokens.append(fields[0])
        for column, label in zip(current.columns, fields[1:]):
            column.append(label.strip())
        current.lines.append(number)
    if not blocks:
        raise DataError("no posts: the file is empty or blank (expected 'IMGID:<id>' blocks of token lines)", path=path)
    seen: dict[str, int] = {}
    for block in blocks:
        if block.id in seen:
            raise DataError(
                f"IMGID {block.id!r} repeats the post of line {seen[block.id]}", path=path, line=block.id_line
            )
        seen[block.id] = block.id_line
    return blocks


@dataclass
class TaggedSpan:
    """A BIO span ``[start, end)`` of one label column, with the line of its first tag."""

    start: int
    end: int
    label: str
    line: int


def bio_spans(block: TaggedBlock, column: int, path: str, stray: list[int] | None = None) -> list[TaggedSpan]:
    """Spans of one BIO label column (IOB2; a stray ``I-X`` starts a new entity, as IOB1).

    Args:
        block: the post.
        column: which label column (0 = first label column).
        path: file name for messages.
        stray: receives the line number of every repaired stray ``I-X`` tag.
    """
    spans: list[TaggedSpan] = []
    open_span: TaggedSpan | None = None
    for i, (tag, line) in enumerate(zip(block.columns[column], block.lines)):
        if tag == "O":
            open_span = None
            continue
        prefix, _, label = tag.partition("-")
        if prefix not in ("B", "I") or not label:
            raise DataError(f"malformed tag {tag!r} (expected O, B-<type> or I-<type>)", path=path, line=line)
        if prefix == "I" and open_span is not None and open_span.label == label:
            open_span.end = i + 1
            continue
        if prefix == "I" and stray is not None:
            stray.append(line)
            if len(stray) <= _MAX_STRAY_WARNINGS:
                logger.warning(
                    "%s:%d: tag %s does not continue an entity of type %s; starting a new entity (IOB1 repair)",
                    path,
                    line,
                    tag,
                    label,
                )
        open_span = TaggedSpan(i, i + 1, label, line)
        spans.append(open_span)
    return spans


def warn_stray_total(path: str, stray: list[int]) -> None:
    if len(stray) > _MAX_STRAY_WARNINGS:
        logger.warning(
            "%s: %d stray I- tags in total were repaired as new entities (first at line %d)", path, len(stray), stray[0]
        )


# ------------------------------------------------------------------------------------- xml
@dataclass
class VocAnnotation:
    """One Pascal-VOC xml: image ``size`` (W, H) and ``objects`` as (name, box) in file order."""

    size: tuple[int, int]
    objects: list[tuple[str, Box]]


def _object_line(path: str, index: int) -> int | None:
    """Line of the ``index``-th ``<object>`` (ElementTree keeps no line numbers; errors only)."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        text = handle.read()
    starts = [m.start() for m in re.finditer(r"<object[\s>]", text)]
    return text.count("\n", 0, starts[index]) + 1 if index < len(starts) else None


def _number(element: ET.Element, tag: str, path: str, line: int | None) -> float:
    node = element.find(tag)
    if node is None or node.text is None:
        raise DataError(f"missing <{tag}>", path=path, line=line)
    try:
        value = float(node.text.strip())
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataError(f"<{tag}> is not a number: {node.text.strip()!r}", path=path, line=line)
    return value


def read_voc_xml(path: str | Path) -> VocAnnotation:
    """Parse one xml file, checking the size and that every box is ordered and inside the image.

    ``<folder>``, ``<filename>`` and ``<path>`` are annotation-tool leftovers and are ignored.
    """
    path = str(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise DataError(f"xml does not parse: {err}", path=path, line=err.position[0]) from None
    size = root.find("size")
    if size is None:
        raise DataError("missing <size>", path=path)
    width, height = _number(size, "width", path, None), _number(size, "height", path, None)
    if width <= 0 or height <= 0:
        raise DataError(f"image <size> must be positive, got {width:g}x{height:g}", path=path)
    objects: list[tuple[str, Box]] = []
    for index, obj in enumerate(root.findall("object")):
        name = obj.findtext("name")
        bndbox = obj.find("bndbox")
        if name is None or bndbox is None:
            raise DataError("<object> without <name> or <bndbox>", path=path, line=_object_line(path, index))
        coords = []
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            try:
                coords.append(_number(bndbox, tag, path, None))
            except DataError as err:
                raise DataError(err.message, path=path, line=_object_line(path, index)) from None
        x1, y1, x2, y2 = coords
        if x2 < x1 or y2 < y1:
            raise DataError(
                f"box {coords} of {name!r} has x2 < x1 or y2 < y1", path=path, line=_object_line(path, index)
            )
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            raise DataError(
                f"box {coords} of {name!r} lies outside the {width:g}x{height:g} image",
                path=path,
                line=_object_line(path, index),
            )
        objects.append((name, (x1, y1, x2, y2)))
    return VocAnnotation((int(width), int(height)), objects)


def link_boxes(tokens: Sequence[str], entities: Iterable[Entity], annotation: VocAnnotation) -> tuple[int, int]:
    """Give each entity every box whose xml name equals its tokens joined by single spaces.

    Returns:
        (unmatched names, unmatched boxes): xml names of the post no entity carries, and their boxes.
    """
    boxes_by_name: dict[str, list[Box]] = {}
    for name, box in annotation.objects:
        boxes_by_name.setdefault(name, []).append(box)
    used: set[str] = set()
    for entity in entities:
        surface = " ".join(tokens[entity.start : entity.end])
        if surface in boxes_by_name:
            entity.boxes = list(boxes_by_name[surface])
            used.add(surface)
    unmatched = [name for name in boxes_by_name if name not in used]
    return len(unmatched), sum(len(boxes_by_name[name]) for name in unmatched)


def attach_xml(posts: list[Post], xml_dir: Path, report: ReadReport, where: str) -> None:
    """Read ``xml_dir/<id>.xml`` for each post: image size, and boxes linked to entities."""
    if not xml_dir.is_dir():
        logger.warning("%s: xml folder %s not found; every entity is read without a box", where, xml_dir)
        available: set[str] = set()
    else:
        # One directory listing instead of 10,000 stat calls.
        available = {name for name in os.listdir(xml_dir) if name.endswith(".xml")}
    report.xml_files = report.xml_objects = report.unmatched_names = report.unmatched_boxes = 0
    examples: list[str] = []
    for post in posts:
        if f"{post.id}.xml" not in available:
            continue
        annotation = read_voc_xml(xml_dir / f"{post.id}.xml")
        post.image_size = annotation.size
        names, boxes = link_boxes(post.tokens, post.entities, annotation)
        report.xml_files += 1
        report.xml_objects += len(annotation.objects)
        report.unmatched_names += names
        report.unmatched_boxes += boxes
        if names and len(examples) < 3:
            examples.append(post.id)
    if report.unmatched_names:
        logger.warning(
            "%s: %d xml object names (%d boxes) match no entity string of their post and are ignored (e.g. posts %s)",
            where,
            report.unmatched_names,
            report.unmatched_boxes,
            ", ".join(examples),
        )


def check_type(label: str, allowed: Sequence[str], path: str, line: int) -> None:
    if label not in allowed:
        raise DataError(f"unknown entity type {label!r} (allowed: {', '.join(allowed)})", path=path, line=line)


# ---------------------------------------------------------------------------------- reader
def read_twitter_gmner(
    data_dir: str | Path,
    split: str,
    image_dir: str | Path | None = None,
    missing_images: str | None = "fail",
    entity_types: Sequence[str] | None = None,
    report: ReadReport | None = None,
) -> list[Post]:
    """Read one split of a Twitter-GMNER folder (v1 or v2.0) into posts, in file order.

    Args:
        data_dir: the folder holding ``txt/`` and ``xml/``.
        split: ``train``, ``dev`` or ``test`` (any ``txt/<split>.txt``).
        image_dir: image folder (flat or with ``twitter2015_images/`` and ``twitter2017_images/``);
            ``None`` leaves ``image_path`` unset (scoring and stats need no images).
        missing_images: ``fail``, ``skip`` or ``text_only`` (see :func:`qgn.data.images.resolve_images`).
        entity_types: allowed types; default ``PER``, ``LOC``, ``ORG``, ``OTHER``.
        report: filled with xml and repair counts when given.
    """
    from qgn.data.images import maybe_resolve_images

    report = report if report is not None else ReadReport()
    allowed = list(entity_types) if entity_types else list(GMNER_TYPES)
    path = split_file(data_dir, split)
    report.layout, report.path = "twitter-gmner", str(path)
    posts: list[Post] = []
    stray: list[int] = []
    for block in read_tagged_blocks(path, num_columns=2):
        entities = []
        for span in bio_spans(block, 0, str(path), stray):
            check_type(span.label, allowed, str(path), span.line)
            entities.append(Entity(span.start, span.end, span.label))
        posts.append(Post(id=block.id, tokens=block.tokens, entities=entities))
    warn_stray_total(str(path), stray)
    report.stray_i_tags = len(stray)
    attach_xml(posts, Path(data_dir) / "xml", report, str(path))
    return maybe_resolve_images(posts, image_dir, missing_images, report)


def count_text_columns(path: str | Path, sample: int = 50) -> int:
    """Fields per token line of a CoNLL-like file (2 = GMNER, 3 = FMNERG): the most common count
    among its first ``sample`` token lines (2 on a tie), so that one malformed line near the top
    is reported as that line's error, not taken for the file's format."""
    counts: dict[int, int] = {}
    for _, raw in utf8_lines(path):
        line = raw.rstrip("\r\n")
        if line.strip() and not line.startswith(_ID_PREFIX):
            n = len(line.split("\t"))
            counts[n] = counts.get(n, 0) + 1
            if sum(counts.values()) >= sample:
                break
    return 3 if counts.get(3, 0) > counts.get(2, 0) else 2
