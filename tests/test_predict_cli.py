"""``qgn predict`` refuses what it cannot do well, and says so before the model loads: no image for
an image model, an empty or repeated-id input, a folder for --image, a missing checkpoint or
tokenizer, a --draw name that is no picture; text past the model's length is said, not ignored."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

import qgn
import qgn.api
from qgn.cli import main
from qgn.errors import QGNError


@pytest.fixture(scope="module")
def image(tiny_bench):
    return str(next((tiny_bench / "images").glob("*.jpg")))


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading the model fails the test: these errors must come before it (17-38 s for a full model)."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(qgn.api.Predictor, "from_pretrained", refuse)


def run(capsys, *argv):
    code = main(["predict", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "case, words",
    [
        ("no image", "--text needs --image FILE: this checkpoint finds entities in an image"),
        ("image is a folder", "is a folder: give one image file"),
        ("image missing", "image not found"),
        ("no checkpoint", "checkpoint not found: /nonexistent/run (give a run's best/ folder, or a hub repo id"),
        ("draw no picture", "--draw out.txt: give a picture file name ending in .png or .jpg"),
        ("draw without image", "--draw needs --image"),
        ("draw into no folder", "does not exist"),
        ("empty input", "empty.jsonl: no posts: the file is empty"),
        ("input missing", "--input"),
    ],
)
def test_bad_arguments_are_one_line_before_the_model_loads(
    tiny_checkpoint, image, tmp_path, capsys, no_model_load, case, words
):
    checkpoint = str(tiny_checkpoint)
    argv = {
        "no image": ["--checkpoint", checkpoint, "--text", "Anna in Paris"],
        "image is a folder": ["--checkpoint", checkpoint, "--text", "Anna", "--image", str(tmp_path)],
        "image missing": ["--checkpoint", checkpoint, "--text", "Anna", "--image", str(tmp_path / "nope.jpg")],
        "no checkpoint": ["--checkpoint", "/nonexistent/run", "--text", "Anna", "--image", image],
        "draw no picture": ["--checkpoint", checkpoint, "--text", "Anna", "--image", image, "--draw", "out.txt"],
        "draw without image": ["--checkpoint", checkpoint, "--text", "Anna", "--draw", "out.png"],
        "draw into no folder": [
            "--checkpoint",
            checkpoint,
            "--text",
            "Anna",
            "--image",
            image,
            "--draw",
            str(tmp_path / "no" / "out.png"),
        ],
        "empty input": ["--checkpoint", checkpoint, "--input", str(tmp_path / "empty.jsonl")],
        "input missing": ["--checkpoint", checkpoint, "--input", str(tmp_path / "missing.jsonl")],
    }[case]
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert words in err and len(err.strip().splitlines()) == 1, err


def test_a_repeated_id_leaves_no_output_file(tiny_checkpoint, tmp_path, capsys, no_model_load):
    posts = tmp_path / "posts.jsonl"
    posts.write_text(json.dumps({"id": "a", "text": "x"}) + "\n" + json.dumps({"id": "a", "text": "y"}) + "\n")
    out = tmp_path / "out.jsonl"
    code, _, err = run(capsys, "--checkpoint", str(tiny_checkpoint), "--input", str(posts), "--output", str(out))
    assert code == 2 and "posts.jsonl:2: id 'a' repeats the post of line 1" in err
    assert not out.exists()


def test_an_input_line_without_image_is_reported_and_skipped(tiny_checkpoint, image, tmp_path, capsys):
    posts = tmp_path / "posts.jsonl"
    posts.write_text(
        json.dumps({"id": "a", "text": "Anna in Paris"})
        + "\n"
        + json.dumps({"id": "b", "text": "Anna in Paris", "image": image})
        + "\n"
    )
    out = tmp_path / "out.jsonl"
    code, _, err = run(
        capsys,
        "--checkpoint",
        str(tiny_checkpoint),
        "--input",
        str(posts),
        "--output",
        str(out),
        "--score-threshold",
        "0",
    )
    assert code == 1
    assert "posts.jsonl:1: no image: this model finds entities in an image" in err
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["b"]


def test_the_python_api_refuses_no_image_for_an_image_model(tiny_checkpoint):
    predictor = qgn.load(tiny_checkpoint, device="cpu")
    with pytest.raises(QGNError, match="no image: this model finds entities in an image"):
        predictor.predict(None, "Anna in Paris")


@pytest.mark.parametrize(
    "missing, words",
    [
        ("tokenizer.json", "has no tokenizer (no tokenizer.json or vocab.txt)"),
        ("config.json", "is not a QGN checkpoint: no config.json"),
    ],
)
def test_a_checkpoint_missing_a_file_is_an_error(tiny_checkpoint, image, tmp_path, capsys, missing, words):
    broken = tmp_path / "best"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / missing).unlink()
    code, out, err = run(capsys, "--checkpoint", str(broken), "--text", "Anna", "--image", image)
    assert code == 2 and out == "" and words in err
    with pytest.raises(QGNError, match=words.split(" (")[0]):
        qgn.load(broken, device="cpu")


def test_text_past_the_model_length_is_said_at_inference(tiny_checkpoint, image, capsys, caplog):
    text = " ".join(["Paris"] * 200)
    with caplog.at_level(logging.WARNING):
        code, out, _ = run(
            capsys,
            "--checkpoint",
            str(tiny_checkpoint),
            "--text",
            text,
            "--image",
            image,
            "--json",
            "--score-threshold",
            "0",
        )
    assert code == 0 and json.loads(out)["entities"]
    assert "truncated at inference: no entity is found past the cut" in caplog.text
    assert "the first 62 of 200 words read" in caplog.text
    assert "targets" not in caplog.text, "no training words at inference"


def test_an_interrupted_batch_says_how_to_resume(tiny_checkpoint, image, tmp_path, capsys, monkeypatch):
    import qgn.engine.predict as predict

    posts = tmp_path / "posts.jsonl"
    posts.write_text(json.dumps({"id": "a", "text": "Anna", "image": image}) + "\n")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(predict, "predict_file", interrupted)
    out = tmp_path / "out.jsonl"
    code, _, err = run(capsys, "--checkpoint", str(tiny_checkpoint), "--input", str(posts), "--output", str(out))
    assert code == 130
    assert err.strip().endswith(
        f"qgn predict: interrupted; {out} keeps the posts predicted so far; continue with the same command and --resume"
    )
