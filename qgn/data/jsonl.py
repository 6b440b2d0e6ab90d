"""The JSONL format for one's own data: one post per line, readable and writable without loss.

Each line is one object (blank lines are ignored)::

    {"id": "p1", "text": "Obama visits Paris !", "image": "images/p1.jpg", "image_size": [640, 480],
     "entities": [{"char_start": 0, "char_end": 5, "type": "PER", "boxes": [[10, 20, 200, 400]]},
                  {"start": 2, "end": 3, "type": "LOC", "boxes": []}]}

- ``id`` (string, unique) and either ``tokens`` (list of words) or ``text`` (raw text, split into
  words with :func:`qgn.data.text.split_words`). With both, ``char_offsets`` may give each token's
  ``[start, end)`` in ``text``; otherwise tokens are located in the text left to right.
- ``image``: path relative to the JSONL file's folder, or absolute (optional).
- ``image_size``: ``[W, H]`` in pixels (optional); boxes must then lie inside the image.
- ``entities``: word span ``start``/``end`` (end exclusive) or, with ``text``, character span
  ``char_start``/``char_end`` that must fall on word boundaries; ``type``; ``boxes`` as
  ``[x1, y1, x2, y2]`` pixels (empty = no box); optional ``coarse_type`` (Twitter-FMNERG).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeGuard

from qgn.data.files import utf8_lines
from qgn.data.records import Box, Entity, Post
from qgn.data.text import split_words
from qgn.data.twitter import ReadReport
from qgn.errors import DataError

POST_KEYS = ("id", "text", "tokens", "char_offsets", "image", "image_size", "entities")
ENTITY_KEYS = ("start", "end", "char_start", "char_end", "type", "coarse_type", "boxes")


class _Where:
    """File and line for error messages."""

    def __init__(self, path: str, line: int):
        self.path, self.line = path, line

    def error(self, message: str) -> DataError:
        return DataError(message, path=self.path, line=self.line)


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _check_keys(obj: dict, allowed: Sequence[str], what: str, where: _Where) -> None:
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise where.error(f"unknown {what} key(s) {', '.join(unknown)} (allowed: {', '.join(allowed)})")


def _tokens_and_offsets(obj: dict, where: _Where) -> tuple[list[str], str | None, list[tuple[int, int]] | None]:
    text, tokens, offsets = obj.get("text"), obj.get("tokens"), obj.get("char_offsets")
    if text is not None and not isinstance(text, str):
        raise where.error("'text' must be a string")
    if tokens is None:
        if text is None:
            raise where.error("a post needs 'tokens' or 'text'")
        if offsets is not None:
            raise where.error("'char_offsets' needs 'tokens' beside 'text'")
        words, spans = split_words(text)
        return words, text, spans
    if not isinstance(tokens, list) or not all(isinstance(t, str) and t for t in tokens):
        raise where.error("'tokens' must be a list of non-empty strings")
    if text is None:
        if offsets is not None:
            raise where.error("'char_offsets' needs 'text'")
        return list(tokens), None, None
    if offsets is None:
        offsets, cursor = [], 0
        for token in tokens:
            found = text.find(token, cursor)
            if found < 0:
                raise where.error(f"token {token!r} not found in 'text' after character {cursor}")
            offsets.append((found, found + len(token)))
            cursor = found + len(token)
        return list(tokens), text, offsets
    if not isinstance(offsets, list) or len(offsets) != len(tokens):
        raise where.error("'char_offsets' must be a list with one [start, end] per token")
    checked = []
    for token, pair in zip(tokens, offsets):
        if (
            not (isinstance(pair, list) and len(pair) == 2 and all(_is_int(v) for v in pair))
            or text[pair[0] : pair[1]] != token
            or pair[0] < 0
        ):
            raise where.error(f"char offsets {pair} do not give token {token!r} in 'text'")
        checked.append((pair[0], pair[1]))
    return list(tokens), text, checked


def _image_size(value: Any, where: _Where) -> tuple[int, int] | None:
    if value is None:
        return None
    if not (isinstance(value, list) and len(value) == 2 and all(_is_int(v) and v > 0 for v in value)):
        raise where.error(f"'image_size' must be [width, height] positive integers, got {value!r}")
    return (value[0], value[1])


def _box(value: Any, size: tuple[int, int] | None, where: _Where) -> Box:
    if not (isinstance(value, list) and len(value) == 4 and all(_is_number(v) for v in value)):
        raise where.error(f"a box must be [x1, y1, x2, y2] numbers, got {value!r}")
    x1, y1, x2, y2 = (float(v) for v in value)
    if x2 < x1 or y2 < y1:
        raise where.error(f"box {value} has x2 < x1 or y2 < y1")
    if size is not None and (x1 < 0 or y1 < 0 or x2 > size[0] or y2 > size[1]):
        raise where.error(f"box {value} lies outside the {size[0]}x{size[1]} image")
    return (x1, y1, x2, y2)


def _word_span(item: dict, tokens: list[str], offsets: list[tuple[int, int]] | None, where: _Where) -> tuple[int, int]:
    has_words = "start" in item or "end" in item
    has_chars = "char_start" in item or "char_end" in item
    if has_words == has_chars:
        raise where.error("an entity needs either start/end (words) or char_start/char_end (characters)")
    if has_chars:
        if offsets is None:
            raise where.error("char_start/char_end need the post's 'text'")
        char_start, char_end = item.get("char_start"), item.get("char_end")
        if not (_is_int(char_start) and _is_int(char_end)):
            raise where.error("char_start and char_end must be integers")
        starts = [i for i, (s, _) in enumerate(offsets) if s == char_start]
        ends = [i for i, (_, e) in enumerate(offsets) if e == char_end]
        if not starts or not ends or ends[0] < starts[0]:
            raise where.error(f"characters [{char_start}, {char_end}) do not fall on word boundaries")
        return starts[0], ends[0] + 1
    start, end = item.get("start"), item.get("end")
    if not (_is_int(start) and _is_int(end)) or not 0 <= start < end <= len(tokens):
        raise where.error(f"entity span [{start}, {end}) must satisfy 0 <= start < end <= {len(tokens)} words")
    return start, end


def parse_post(obj: Any, folder: str, entity_types: Sequence[str] | None, where: _Where) -> Post:
    """One JSON object -> :class:`Post` (``folder`` anchors relative image paths)."""
    if not isinstance(obj, dict):
        raise where.error("each line must be a JSON object")
    _check_keys(obj, POST_KEYS, "post", where)
    post_id = obj.get("id")
    if not isinstance(post_id, str) or not post_id:
        raise where.error("'id' must be a non-empty string")
    tokens, text, offsets = _tokens_and_offsets(obj, where)
    size = _image_size(obj.get("image_size"), where)
    image = obj.get("image")
    if image is not None and (not isinstance(image, str) or not image):
        raise where.error("'image' must be a path string")
    image_path = None if image is None else os.path.normpath(os.path.join(folder, image))
    items = obj.get("entities", [])
    if not isinstance(items, list):
        raise where.error("'entities' must be a list")
    entities: list[Entity] = []
    for item in items:
        if not isinstance(item, dict):
            raise where.error("each entity must be an object")
        _check_keys(item, ENTITY_KEYS, "entity", where)
        start, end = _word_span(item, tokens, offsets, where)
        label, coarse = item.get("type"), item.get("coarse_type")
        if not isinstance(label, str) or not label:
            raise where.error("entity 'type' must be a non-empty string")
        if entity_types and label not in entity_types:
            raise where.error(f"unknown entity type {label!r} (allowed: {', '.join(entity_types)})")
        if coarse is not None and not isinstance(coarse, str):
            raise where.error("entity 'coarse_type' must be a string")
        boxes = item.get("boxes", [])
        if not isinstance(boxes, list):
            raise where.error("entity 'boxes' must be a list of [x1, y1, x2, y2]")
        entities.append(Entity(start, end, label, [_box(b, size, where) for b in boxes], coarse))
    entities.sort(key=lambda e: (e.start, e.end))
    for previous, entity in zip(entities, entities[1:]):
        if previous.span == entity.span:
            raise where.error(f"two entities share the word span [{entity.start}, {entity.end})")
    return Post(
        id=post_id,
        tokens=tokens,
        entities=entities,
        image_path=image_path,
        image_size=size,
        text=text,
        char_offsets=offsets,
    )


def parse_json_lines(path: str | Path, what: str = "JSONL file") -> Iterator[tuple[int, Any]]:
    """``(line number, parsed object)`` for each non-blank line; a line of bad JSON gives a
    :class:`DataError` at file:line in place of the object, so a caller may report it and go on."""
    path = str(path)
    if not os.path.isfile(path):
        raise DataError(f"{what} not found", path=path)
    for number, line in utf8_lines(path):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as err:
            yield number, DataError(f"not valid JSON: {err.msg} (column {err.colno})", path, number)


def iter_json_lines(path: str | Path, what: str = "JSONL file") -> Iterator[tuple[int, Any]]:
    """``(line number, parsed object)`` for each non-blank line; bad JSON -> DataError at file:line."""
    for number, obj in parse_json_lines(path, what):
        if isinstance(obj, DataError):
            raise obj
        yield number, obj


def read_jsonl(
    path: str | Path,
    image_dir: str | Path | None = None,
    missing_images: str | None = None,
    entity_types: Sequence[str] | None = None,
    report: ReadReport | None = None,
) -> list[Post]:
    """Read a JSONL file of posts, in file order.

    Args:
        path: the ``.jsonl`` file.
        image_dir: folder to look up ``<id>.jpg`` for posts without an ``image`` field.
        missing_images: policy for missing images (see :func:`qgn.data.images.resolve_images`);
            ``None`` checks images only when ``image_dir`` is given.
        entity_types: allowed types; ``None`` accepts any.
        report: gets ``layout = "jsonl"`` when given.
    """
    from qgn.data.images import maybe_resolve_images

    path = str(path)
    folder = os.path.normpath(os.path.dirname(os.path.abspath(path)))
    posts: list[Post] = []
    seen: dict[str, int] = {}
    for number, obj in iter_json_lines(path):
        where = _Where(path, number)
        post = parse_post(obj, folder, entity_types, where)
        if post.id in seen:
            raise where.error(f"id {post.id!r} repeats the post of line {seen[post.id]}")
        seen[post.id] = number
        posts.append(post)
    if not posts:
        raise DataError("no posts: the file is empty or blank (expected one JSON object per line)", path=path)
    if report is not None:
        report.layout, report.path = "jsonl", path
    return maybe_resolve_images(posts, image_dir, missing_images, report)


def _number_out(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


def post_to_json(post: Post, folder: str) -> dict[str, Any]:
    """:class:`Post` -> JSON object; images under ``folder`` are written relative to it."""
    obj: dict[str, Any] = {"id": post.id}
    if post.text is not None:
        obj["text"] = post.text
    obj["tokens"] = list(post.tokens)
    if post.text is not None and post.char_offsets is not None:
        obj["char_offsets"] = [[s, e] for s, e in post.char_offsets]
    if post.image_path is not None:
        image = os.path.normpath(os.path.abspath(post.image_path))
        inside = os.path.commonpath([image, folder]) == folder
        obj["image"] = os.path.relpath(image, folder) if inside else image
    if post.image_size is not None:
        obj["image_size"] = [int(post.image_size[0]), int(post.image_size[1])]
    entities = []
    for entity in post.entities:
        item: dict[str, Any] = {"start": entity.start, "end": entity.end, "type": entity.type}
        if entity.coarse_type is not None:
            item["coarse_type"] = entity.coarse_type
        item["boxes"] = [[_number_out(v) for v in box] for box in entity.boxes]
        entities.append(item)
    obj["entities"] = entities
    return obj


def write_jsonl(posts: Iterable[Post], path: str | Path) -> Path:
    """Write posts as JSONL (UTF-8, one object per line); parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.path.normpath(str(path.parent.absolute()))
    with open(path, "w", encoding="utf-8") as handle:
        for post in posts:
            handle.write(json.dumps(post_to_json(post, folder), ensure_ascii=False) + "\n")
    return path
