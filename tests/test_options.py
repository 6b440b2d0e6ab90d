"""Options and values the rest of the suite leaves at their defaults: every EXIF orientation, a
batch whose first post has no words, several seeds in an aggregate, hub revisions, the flags of
``qgn evaluate --checkpoint`` / ``qgn predict --checkpoint`` and ``qgn demo``. Each test fails if
its option is ignored."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from PIL import Image

from qgn.cli import main

# ---------------------------------------------------------------- EXIF orientations 1..8

# What a viewer shows for each EXIF orientation of a stored (H, W, 3) array, from the EXIF spec.
UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # turned 180
    4: lambda a: a[::-1, :],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # mirrored over the main diagonal
    6: lambda a: np.rot90(a, k=-1),  # turned 90 clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # mirrored over the other diagonal
    8: lambda a: np.rot90(a, k=1),  # turned 90 counter-clockwise
}


@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_every_exif_orientation_comes_out_upright(tmp_path, orientation):
    from qgn.data.images import load_image, probe_image

    ys, xs = np.mgrid[0:6, 0:10]
    stored = np.stack([xs * 25, ys * 40, (xs + ys) % 2 * 255], axis=-1).astype(np.uint8)  # every pixel distinct
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.png"
    Image.fromarray(stored).save(path, exif=exif)
    expected = UPRIGHT[orientation](stored)
    loaded = load_image(path)
    assert loaded.size == (expected.shape[1], expected.shape[0])
    assert np.array_equal(np.asarray(loaded), expected)
    assert probe_image(str(path)) == ((expected.shape[1], expected.shape[0]), None)


# ---------------------------------------------------------------- a batch whose first post is empty


def test_a_batch_whose_first_post_has_no_words_predicts_the_others_as_alone(tiny_checkpoint, tiny_bench):
    from qgn.api import load
    from qgn.data import read_dataset
    from qgn.data.records import Post

    predictor = load(tiny_checkpoint, score_threshold=0.0)
    post = next(p for p in read_dataset(tiny_bench, "test", image_dir=tiny_bench / "images") if p.entities)
    image = Image.open(post.image_path).convert("RGB")
    alone = predictor.predict_posts([post], [image])[0]
    assert alone, "the comparison needs predictions"
    empty = Post("empty", [], image_size=image.size)
    first_empty = predictor.predict_posts([empty, post], [image, image])
    assert first_empty[0] == []
    assert [(p.start, p.end, p.type, p.box) for p in first_empty[1]] == [(p.start, p.end, p.type, p.box) for p in alone]
    for a, b in zip(first_empty[1], alone):
        assert a.score == pytest.approx(b.score, abs=1e-5)


def test_collator_pads_around_a_first_post_without_words():
    from qgn.data.pipeline import Collator

    items = [
        {
            "input_ids": [101, 102],
            "word_index": [-1, -1],
            "num_words": 0,
            "pixel_values": None,
            "pixel_mask": None,
            "targets": {},
            "post": "a",
            "image_missing": True,
        },
        {
            "input_ids": [101, 7, 8, 9, 102],
            "word_index": [-1, 0, 0, 1, -1],
            "num_words": 2,
            "pixel_values": None,
            "pixel_mask": None,
            "targets": {},
            "post": "b",
            "image_missing": True,
        },
    ]
    batch = Collator(0)(items)
    assert batch["input_ids"].tolist() == [[101, 102, 0, 0, 0], [101, 7, 8, 9, 102]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["word_index"].tolist() == [[-1, -1, -1, -1, -1], [-1, 0, 0, 1, -1]]
    assert batch["word_mask"].tolist() == [[False, False], [True, True]]


# ---------------------------------------------------------------- qgn reproduce: several seeds


def test_aggregate_takes_mean_and_std_over_every_seed(tmp_path):
    from qgn.reproduce.aggregate import collect, to_markdown
    from qgn.reproduce.grid import Row, run_dir

    values = {1: 50.0, 2: 54.0, 3: 61.0}
    for seed, f1 in values.items():
        folder = run_dir(tmp_path, Row("III", "full"), seed)
        folder.mkdir(parents=True)
        metrics = {m: {"precision": f1, "recall": f1, "f1": f1 + (m != "GMNER")} for m in ("GMNER", "MNER", "EEG")}
        (folder / "final_metrics.json").write_text(json.dumps({"test": metrics, "dev": metrics}))
    result = collect(tmp_path, ["I", "III"], 3)
    ours = result["tables"]["I"]["rows"][0]["ours"]["GMNER F1"]
    assert ours["n"] == 3 and ours["values"] == [50.0, 54.0, 61.0]
    assert ours["mean"] == pytest.approx(55.0)
    assert ours["std"] == pytest.approx(math.sqrt(((5**2) + (1**2) + (6**2)) / 2))  # sample std
    assert result["tables"]["I"]["rows"][0]["ours"]["MNER F1"]["mean"] == pytest.approx(56.0)
    full = next(r for r in result["tables"]["III"]["rows"] if r["ours"] and r["ours"]["n"] == 3)
    assert full["ours"]["mean"] == pytest.approx(55.0) and full["delta"] == pytest.approx(0.0)
    assert "55.00 ± 5.57 (n=3)" in to_markdown(result)
    # two seeds asked for: the third run is not read
    assert collect(tmp_path, ["I"], 2)["tables"]["I"]["rows"][0]["ours"]["GMNER F1"]["values"] == [50.0, 54.0]


# ---------------------------------------------------------------- hub revisions


def test_a_hub_revision_is_passed_to_snapshot_download(tmp_path, monkeypatch):
    import huggingface_hub

    from qgn.hub import resolve_checkpoint

    calls = []

    def fake_snapshot_download(repo_id, revision=None, **kwargs):
        calls.append((repo_id, revision))
        return str(tmp_path / (revision or "main"))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.chdir(tmp_path)
    assert resolve_checkpoint("acme/qgn-tiny@v1.2") == tmp_path / "v1.2"
    assert resolve_checkpoint("acme/qgn-tiny@0123abcd") == tmp_path / "0123abcd"
    assert resolve_checkpoint("acme/qgn-tiny") == tmp_path / "main"
    assert calls == [("acme/qgn-tiny", "v1.2"), ("acme/qgn-tiny", "0123abcd"), ("acme/qgn-tiny", None)]


def test_push_passes_revision_token_and_message(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create", repo_id, kwargs))

        def upload_folder(self, repo_id, folder_path, **kwargs):
            calls.append(("upload", repo_id, kwargs))
            return type("Commit", (), {"commit_url": "u"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    code = main(
        [
            "push",
            "--checkpoint",
            str(folder),
            "--repo-id",
            "acme/x",
            "--revision",
            "dev-branch",
            "--token",
            "T0K",
            "--message",
            "my message",
        ]
    )
    if code != 0:
        pytest.fail(capsys.readouterr().err)
    assert calls[0] == ("token", "T0K")
    upload = calls[-1][2]
    assert upload["revision"] == "dev-branch" and upload["commit_message"] == "my message"


# ---------------------------------------------------------------- qgn evaluate / predict --checkpoint flags


@pytest.fixture
def spy_load(monkeypatch):
    import qgn.api

    seen = []
    real = qgn.api.load

    def spy(checkpoint, device=None, precision="fp32", **thresholds):
        seen.append({"precision": precision, "device": device, **thresholds})
        return real(checkpoint, device=device, precision=precision, **thresholds)

    monkeypatch.setattr(qgn.api, "load", spy)
    return seen


def test_evaluate_checkpoint_passes_precision_split_match_by_and_iou(
    tiny_checkpoint, tiny_bench, spy_load, monkeypatch, capsys
):
    import qgn.engine.evaluate as evaluate
    from qgn.data import read_dataset

    scored = []
    real = evaluate.evaluate_predictions

    def spy(posts, predictions, **kwargs):
        scored.append(({p.id for p in posts}, kwargs))
        return real(posts, predictions, **kwargs)

    monkeypatch.setattr(evaluate, "evaluate_predictions", spy)
    code = main(
        [
            "evaluate",
            "--checkpoint",
            str(tiny_checkpoint),
            "--data",
            str(tiny_bench),
            "--split",
            "dev",
            "--image-dir",
            str(tiny_bench / "images"),
            "--precision",
            "bf16",
            "--match-by",
            "string",
            "--iou-threshold",
            "0.7",
            "--batch-size",
            "3",
            "--device",
            "cpu",
            "--json",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert spy_load == [{"precision": "bf16", "device": "cpu"}]
    ((ids, kwargs),) = scored
    assert ids == {p.id for p in read_dataset(tiny_bench, "dev")}
    assert kwargs["match_by"] == "string" and kwargs["iou_threshold"] == 0.7
    report = json.loads(capsys.readouterr().out)
    assert report["GMNER"]["n_gold"] == sum(len(p.entities) for p in read_dataset(tiny_bench, "dev"))


def test_predict_checkpoint_passes_precision_and_threshold_overrides(tiny_checkpoint, tiny_bench, spy_load, capsys):
    from qgn.data import read_dataset

    post = next(p for p in read_dataset(tiny_bench, "test", image_dir=tiny_bench / "images") if p.entities)
    args = [
        "predict",
        "--checkpoint",
        str(tiny_checkpoint),
        "--image",
        post.image_path,
        "--text",
        " ".join(post.tokens),
        "--json",
        "--device",
        "cpu",
    ]
    assert main([*args, "--score-threshold", "0", "--no-target-threshold", "1"]) == 0
    everything = json.loads(capsys.readouterr().out)
    assert main([*args, "--score-threshold", "1.01", "--precision", "bf16"]) == 0
    nothing = json.loads(capsys.readouterr().out)
    assert spy_load == [
        {"precision": "fp32", "device": "cpu", "score_threshold": 0.0, "no_target_threshold": 1.0},
        {"precision": "bf16", "device": "cpu", "score_threshold": 1.01},
    ]
    entities = everything["entities"] if isinstance(everything, dict) else everything
    assert entities, "score threshold 0 keeps every candidate"
    # no-target threshold 1: P(no box) never reaches it, so every entity keeps its box
    assert all(e.get("box") is not None for e in entities)
    assert not (nothing["entities"] if isinstance(nothing, dict) else nothing)


# ---------------------------------------------------------------- qgn demo options


def test_demo_options_are_passed_through(monkeypatch, tmp_path):
    import qgn.demo

    calls = []
    monkeypatch.setattr(qgn.demo, "run_demo", lambda *args, **kwargs: calls.append((args, kwargs)) or {"ok": 1})
    # the parser's lambda looks run_demo up in the module at call time
    assert (
        main(
            [
                "demo",
                "--output-dir",
                str(tmp_path / "d"),
                "--variant",
                "shapes",
                "--train-posts",
                "40",
                "--overwrite",
                "--set",
                "train.epochs=2",
                "--no-progress",
            ]
        )
        == 0
    )
    ((args, kwargs),) = calls
    passed = dict(zip(["output_dir", "overrides", "progress", "train_posts", "overwrite", "variant"], args), **kwargs)
    assert passed == {
        "output_dir": str(tmp_path / "d"),
        "overrides": ["train.epochs=2"],
        "progress": False,
        "train_posts": 40,
        "overwrite": True,
        "variant": "shapes",
    }
    with pytest.raises(SystemExit):
        main(["demo", "--variant", "no-such-variant"])
    assert len(calls) == 1


# ---------------------------------------------------------------- flags passed through to their functions


def _recorder(calls, result=None):
    def record(*args, **kwargs):
        calls.append((args, kwargs))
        return result

    return record


def test_serve_passes_every_flag(monkeypatch):
    import qgn.serving.app

    calls = []
    monkeypatch.setattr(qgn.serving.app, "serve", _recorder(calls))
    assert (
        main(
            [
                "serve",
                "--checkpoint",
                "ck",
                "--host",
                "0.0.0.0",
                "--port",
                "9001",
                "--device",
                "cpu",
                "--precision",
                "bf16",
                "--examples",
                "ex.jsonl",
                "--max-upload-mb",
                "3.5",
                "--max-image-pixels",
                "1e6",
                "--score-threshold",
                "0.25",
                "--no-target-threshold",
                "0.65",
            ]
        )
        == 0
    )
    ((args, kwargs),) = calls
    assert args == ("ck",)
    assert kwargs == {
        "host": "0.0.0.0",
        "port": 9001,
        "device": "cpu",
        "precision": "bf16",
        "examples_file": "ex.jsonl",
        "max_upload_mb": 3.5,
        "max_image_pixels": 1_000_000,
        "score_threshold": 0.25,
        "no_target_threshold": 0.65,
    }


def test_export_passes_the_opset(monkeypatch, tmp_path, capsys):
    import qgn.export

    calls = []
    out = tmp_path / "m.onnx"
    out.write_bytes(b"x")
    monkeypatch.setattr(qgn.export, "export_onnx", _recorder(calls, out))
    assert main(["export", "--checkpoint", "ck", "--output", str(out), "--opset", "17"]) == 0
    assert calls == [(("ck", str(out), 17), {})]


def test_data_convert_and_stats_pass_fmnerg_xml_and_missing_images(monkeypatch, tmp_path, capsys):
    import qgn.data
    import qgn.data.stats

    reads, stats = [], []
    monkeypatch.setattr(qgn.data, "read_dataset", _recorder(reads, []))
    monkeypatch.setattr(qgn.data.stats, "dataset_stats", _recorder(stats, {}))
    monkeypatch.setattr(qgn.data.stats, "format_stats_table", lambda *a, **k: "table")
    assert (
        main(
            [
                "data",
                "convert",
                str(tmp_path),
                "--split",
                "dev",
                "--out",
                str(tmp_path / "o.jsonl"),
                "--image-dir",
                "imgs",
                "--missing-images",
                "skip",
                "--fmnerg-xml",
                "gx",
            ]
        )
        == 0
    )
    ((args, kwargs),) = reads
    assert kwargs == {"split": "dev", "image_dir": "imgs", "missing_images": "skip", "fmnerg_xml_dir": "gx"}
    assert main(["data", "stats", str(tmp_path), "--split", "train", "--image-dir", "imgs", "--fmnerg-xml", "gx"]) == 0
    ((args, kwargs),) = stats
    assert kwargs == {"split": "train", "image_dir": "imgs", "fmnerg_xml_dir": "gx"}


def test_evaluate_passes_missing_images_and_fmnerg_xml(monkeypatch, tiny_checkpoint, tiny_bench, tmp_path, capsys):
    import qgn.data
    import qgn.engine.evaluate as evaluate
    from qgn.data import read_dataset as real_read

    reads = []

    def spy(*args, **kwargs):
        reads.append(kwargs)
        return real_read(*args, **kwargs)

    monkeypatch.setattr(qgn.data, "read_dataset", spy)
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(tiny_checkpoint),
                "--data",
                str(tiny_bench),
                "--image-dir",
                str(tiny_bench / "images"),
                "--missing-images",
                "skip",
                "--json",
                "--device",
                "cpu",
            ]
        )
        == 0
    ), capsys.readouterr().err
    assert reads[0]["missing_images"] == "skip"
    gold = []
    monkeypatch.setattr(evaluate, "load_gold", lambda *args: gold.append(args) or ([], None))
    pred = tmp_path / "p.jsonl"
    pred.write_text("")
    main(["evaluate", "--pred", str(pred), "--data", "d", "--split", "dev", "--fmnerg-xml", "gx"])
    assert gold == [("d", "dev", "gx")]
