"""Typed records shared by every reader, the scorer, the model's data pipeline and the CLI.

A post is one (text, image) pair. Text is a list of whitespace tokens ("words"); entity spans are
word indices ``[start, end)``. Boxes are ``(x1, y1, x2, y2)`` in original-image pixels, the
convention of the Twitter-GMNER xml files (x right, y down, area without +1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

Box = tuple[float, float, float, float]


@dataclass
class Entity:
    """A gold or predicted named entity.

    Attributes:
        start: first word index (inclusive).
        end: word index one past the last word (exclusive).
        type: the label the model predicts and the scorer compares: the 4-way GMNER type
            (``PER``, ``LOC``, ``ORG``, ``OTHER``), or the fine type for Twitter-FMNERG.
        boxes: gold boxes in pixels; empty means "no box" (ungroundable).
        coarse_type: FMNERG coarse category (``person``, ``building``...), else ``None``.
    """

    start: int
    end: int
    type: str
    boxes: list[Box] = field(default_factory=list)
    coarse_type: str | None = None

    @property
    def span(self) -> tuple[int, int]:
        return (self.start, self.end)

    @property
    def has_box(self) -> bool:
        return bool(self.boxes)


@dataclass
class Prediction:
    """One predicted (span, type, region) triple; ``box`` is ``None`` for "no box"."""

    start: int
    end: int
    type: str
    box: Box | None = None
    score: float | None = None


@dataclass
class Post:
    """One post with its gold annotation.

    Attributes:
        id: the post id (the IMGID for Twitter-GMNER).
        tokens: whitespace tokens (words).
        entities: gold entities, in text order.
        image_path: resolved path of the image, or ``None`` when unknown / missing.
        image_size: ``(width, height)`` in pixels of the original image, from the xml ``<size>``
            or the image file; ``None`` when neither is known.
        text: the raw text when the post came with one (JSONL input); ``None`` otherwise.
        char_offsets: per token ``(start, end)`` character offsets into ``text``; ``None`` when
            there is no raw text.
    """

    id: str
    tokens: list[str]
    entities: list[Entity] = field(default_factory=list)
    image_path: str | None = None
    image_size: tuple[int, int] | None = None
    text: str | None = None
    char_offsets: list[tuple[int, int]] | None = None
