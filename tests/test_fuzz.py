"""Every reader, fed arbitrary bytes and structured garbage, either parses or raises QGNError.

A reader that lets a UnicodeDecodeError, KeyError, IndexError or ParseError escape gives the user a
traceback that names no file; these properties find such paths before users do.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from qgn.data import read_dataset, read_jsonl, read_twitter_fmnerg, read_twitter_gmner
from qgn.errors import QGNError
from qgn.metrics import read_predictions

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Pieces that make the garbage look like the formats, so the parsers get past their first line.
TXT_PIECES = [
    "IMGID:",
    "IMGID:7",
    "7",
    "\t",
    "\n",
    "\r\n",
    " ",
    "B-PER",
    "I-PER",
    "B-LOC",
    "O",
    "I-ORG",
    "B-person",
    "B-city",
    "Anna",
    "\ufeff",
    "\x00",
    "é",
    "B-",
    "-",
]
XML_PIECES = [
    "<annotation>",
    "</annotation>",
    "<size>",
    "</size>",
    "<width>",
    "</width>",
    "<height>",
    "</height>",
    "<object>",
    "</object>",
    "<name>",
    "</name>",
    "Anna",
    "<bndbox>",
    "</bndbox>",
    "<xmin>",
    "</xmin>",
    "<ymin>",
    "</ymin>",
    "<xmax>",
    "</xmax>",
    "<ymax>",
    "</ymax>",
    "10",
    "-5",
    "1e9",
    "nan",
    "abc",
    " ",
    "\n",
    "<",
    "&",
]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 50) | st.floats(allow_nan=True) | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "id",
                    "text",
                    "tokens",
                    "entities",
                    "start",
                    "end",
                    "type",
                    "box",
                    "boxes",
                    "image",
                    "image_size",
                    "char_offsets",
                    "score",
                    "coarse_type",
                ]
            )
            | st.text(max_size=4),
            inner,
            max_size=6,
        )
    ),
    max_leaves=20,
)


def pieces(alphabet: list[str]) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(alphabet), max_size=40).map("".join)


def raw_or_structured(alphabet: list[str]) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=300) | pieces(alphabet).map(lambda s: s.encode("utf-8", "surrogatepass"))


def json_lines() -> st.SearchStrategy[bytes]:
    line = JSON_VALUES.map(lambda v: json.dumps(v)) | st.text(max_size=20)
    return st.binary(max_size=200) | st.lists(line, max_size=5).map(lambda ls: "\n".join(ls).encode())


def parses_or_qgn_error(read) -> None:
    try:
        read()
    except QGNError:
        pass


@pytest.fixture
def folder():
    path = Path(tempfile.mkdtemp(prefix="qgn-fuzz-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "txt").mkdir(parents=True)
    (folder / "xml").mkdir()
    return folder


@FUZZ
@given(text=raw_or_structured(TXT_PIECES), xml=raw_or_structured(XML_PIECES))
def test_twitter_gmner_txt_and_xml(folder, text, xml):
    root = fresh(folder / "gmner")
    (root / "txt" / "train.txt").write_bytes(text)
    (root / "xml" / "7.xml").write_bytes(xml)
    parses_or_qgn_error(lambda: read_twitter_gmner(root, "train"))
    parses_or_qgn_error(lambda: read_dataset(root, split="train"))  # layout detection too


@FUZZ
@given(text=raw_or_structured(TXT_PIECES + ["\tB-location\tB-city", "\tO\tO"]), xml=raw_or_structured(XML_PIECES))
def test_twitter_fmnerg(folder, text, xml):
    root = fresh(folder / "fmnerg")
    (root / "txt" / "train.txt").write_bytes(text)
    (root / "xml" / "7.xml").write_bytes(xml)
    parses_or_qgn_error(lambda: read_twitter_fmnerg(root, "train", root / "xml"))


def _predict_input_rows(path: Path) -> list:
    from qgn.engine.predict import _batch_rows

    return list(_batch_rows(path))


@pytest.mark.parametrize(
    "read",
    [read_jsonl, read_predictions, _predict_input_rows],
    ids=["jsonl_posts", "prediction_files", "predict_input_rows"],
)
@FUZZ
@given(content=json_lines())
def test_json_lines_readers(folder, read, content):
    path = folder / "input.jsonl"
    path.write_bytes(content)
    parses_or_qgn_error(lambda: read(path))
