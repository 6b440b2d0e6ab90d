"""The prediction file that ``qgn evaluate --pred`` scores: JSON lines, one post per line.

    {"id": "71044", "entities": [{"start": 6, "end": 8, "type": "LOC", "box": null, "score": 0.93},
                                 {"start": 0, "end": 1, "type": "PER", "box": [12, 30, 80, 141]}]}

``start``/``end`` are word indices (``end`` exclusive) into the dataset's whitespace tokens,
``box`` is ``[x1, y1, x2, y2]`` in original-image pixels or ``null`` ("no box"), ``score`` is
optional and ignored by the scorer. Other keys (``text``, ``char_start`` ... as written by
``qgn predict``) are ignored. A post without a line predicted nothing.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from qgn.data.jsonl import iter_json_lines
from qgn.data.records import Prediction
from qgn.errors import DataError

REQUIRED_ENTITY_KEYS = ("start", "end", "type", "box")


class PredictionSet(dict):
    """``{post id: [Prediction]}`` that remembers where each id came from, for error messages.

    Attributes:
        path: the file read, or ``None``.
        lines: ``{post id: 1-based line number}``.
    """

    def __init__(self, path: str | None = None):
        super().__init__()
        self.path = path
        self.lines: dict[str, int] = {}


def check_prediction_fields(start: Any, end: Any, type_: Any, box: Any) -> str | None:
    """Why a triple is malformed on its own (without its post), or ``None`` when it is well formed."""
    for name, value in (("start", start), ("end", end)):
        try:  # operator.index accepts Python and numpy integers, rejects floats and strings
            if isinstance(value, bool):
                raise TypeError
            operator.index(value)
        except TypeError:
            return f"'{name}' must be an integer, got {value!r}"
    if start < 0:
        return f"'start' must be >= 0, got {start}"
    if end <= start:
        return f"span [{start}, {end}) is empty or reversed (need end > start; end is exclusive)"
    if not isinstance(type_, str) or not type_:
        return f"'type' must be a non-empty string, got {type_!r}"
    if box is None:
        return None
    try:
        values = [] if isinstance(box, (str, bytes, dict)) else list(box)
    except TypeError:
        values = []
    if len(values) != 4 or not all(_is_finite_number(v) for v in values):
        return f"'box' must be 4 finite numbers [x1, y1, x2, y2] or null, got {box!r}"
    x1, y1, x2, y2 = values
    if x2 < x1 or y2 < y1:
        return f"'box' {values!r} has x2 < x1 or y2 < y1 (expected pixel corners x1, y1, x2, y2)"
    return None


def _is_finite_number(value: Any) -> bool:
    if isinstance(value, (bool, str, bytes)):
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _parse_entity(raw: Any, index: int) -> Prediction:
    """One entity object -> Prediction; raises ValueError with a message naming the entity."""
    if not isinstance(raw, dict):
        raise ValueError(f"entity {index}: expected an object {{start, end, type, box}}, got {raw!r}")
    missing = [k for k in REQUIRED_ENTITY_KEYS if k not in raw]
    if missing:
        # "box" is required too: a forgotten key must not silently mean "no box".
        raise ValueError(f"entity {index}: missing key(s) {', '.join(missing)} (box may be null, not absent)")
    problem = check_prediction_fields(raw["start"], raw["end"], raw["type"], raw["box"])
    if problem is None and raw.get("score") is not None and not _is_finite_number(raw["score"]):
        problem = f"'score' must be a number or null, got {raw['score']!r}"
    if problem is not None:
        raise ValueError(f"entity {index}: {problem}")
    box = None if raw["box"] is None else tuple(float(v) for v in raw["box"])
    score = None if raw.get("score") is None else float(raw["score"])
    return Prediction(start=int(raw["start"]), end=int(raw["end"]), type=raw["type"], box=box, score=score)  # type: ignore[arg-type]  # box: checked to be 4 numbers


def read_predictions(path: str | Path) -> PredictionSet:
    """Read a prediction file (format in the module docstring) into ``{post id: [Prediction]}``.

    Blank lines are skipped. Raises :class:`DataError` naming the file and line on bad JSON, a
    missing key, a wrong type, a malformed span or box, or an id given twice.
    """
    path = Path(path)
    predictions = PredictionSet(str(path))
    for number, obj in iter_json_lines(path, what="prediction file"):
        if not isinstance(obj, dict):
            raise DataError('each line must be an object {"id": ..., "entities": [...]}', str(path), number)
        for key in ("id", "entities"):
            if key not in obj:
                raise DataError(f"missing key {key!r}", str(path), number)
        post_id = obj["id"]
        # Twitter-2015 ids are numeric, so a writer may emit them as JSON numbers.
        if isinstance(post_id, int) and not isinstance(post_id, bool):
            post_id = str(post_id)
        if not isinstance(post_id, str) or not post_id:
            raise DataError(f"'id' must be a non-empty string, got {obj['id']!r}", str(path), number)
        if post_id in predictions:
            raise DataError(f"duplicate id {post_id!r} (first on line {predictions.lines[post_id]})", str(path), number)
        if not isinstance(obj["entities"], list):
            raise DataError(f"'entities' must be a list, got {obj['entities']!r}", str(path), number)
        try:
            predictions[post_id] = [_parse_entity(raw, i) for i, raw in enumerate(obj["entities"])]
        except ValueError as err:
            raise DataError(f"post {post_id!r}, {err}", str(path), number) from err
        predictions.lines[post_id] = number
    return predictions


def write_predictions(predictions: Mapping[str, Sequence[Prediction]], path: str | Path) -> None:
    """Write ``{post id: [Prediction]}`` in the format :func:`read_predictions` reads (ids in mapping order)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for post_id, preds in predictions.items():
            entities = []
            for pred in preds:
                entity: dict[str, Any] = {
                    "start": int(pred.start),
                    "end": int(pred.end),
                    "type": pred.type,
                    "box": None if pred.box is None else [float(v) for v in pred.box],
                }
                if pred.score is not None:
                    entity["score"] = float(pred.score)
                entities.append(entity)
            f.write(json.dumps({"id": str(post_id), "entities": entities}, ensure_ascii=False) + "\n")
