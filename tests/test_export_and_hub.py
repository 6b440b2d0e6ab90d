"""Checkpoints that travel: the ONNX export runs in onnxruntime like PyTorch, the model card, hub
repo ids resolved offline from a cache in the hub's own layout, and ``qgn push``'s upload call."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qgn.api import load
from qgn.cli import main
from qgn.data import read_dataset
from qgn.data.pipeline import Collator, GMNERDataset, model_inputs


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint):
    return load(tiny_checkpoint, device="cpu", score_threshold=0.0)


EXPORT_LOG: dict[str, object] = {}  # what the export of the onnx_file fixture logged and printed


@pytest.fixture(scope="module")
def onnx_file(tiny_checkpoint, tmp_path_factory) -> Path:
    import contextlib
    import io
    import logging

    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)  # as `qgn export` runs, without -v
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):
            assert main(["export", "--checkpoint", str(tiny_checkpoint), "--format", "onnx", "--output", str(out)]) == 0
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    EXPORT_LOG.update(records=records, printed=printed.getvalue())
    return out


def _batch(predictor, posts):
    dataset = GMNERDataset(
        posts, predictor.tokenizer, predictor.config, image_transform=predictor.image_transform, text_only=False
    )
    return Collator(predictor.tokenizer.pad_token_id)([dataset[i] for i in range(len(posts))])


def test_onnx_matches_pytorch_and_gives_the_same_entities(predictor, onnx_file, tiny_bench):
    _assert_onnx_matches(predictor, onnx_file, tiny_bench)


def test_onnx_export_of_the_demo_levers_matches_pytorch(tiny_checkpoint, tiny_bench, tmp_path):
    """The demo's checkpoints use the alignment heads, the alignment box prior and box refinement
    (grid sampling): they export too, here with a larger input than the ViT's, read by the pixel
    refinement's pyramid and by a CNN beside the ViT (``pixel_refine_scale``, ``pixel_patch_branch``;
    one test, not two, because an export takes most of a minute)."""
    from transformers import AutoTokenizer

    from qgn.data.pipeline import ImageTransform
    from qgn.modeling import QGNConfig, QGNModel

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_checkpoint))
    config = QGNConfig.tiny(
        vocab_size=len(tokenizer),
        num_queries=8,
        score_threshold=0.0,
        lambda_align=1.0,
        lambda_align_words=1.0,
        align_presence=True,
        align_box_prior=True,
        box_refine=True,
        box_refine_pixels=True,
        pixel_refine_scale=2,
        pixel_patch_branch=True,
        pixel_patch_branch_pool="mean_max",  # the demo's: adaptive max pooling exports too
    )
    torch.manual_seed(0)
    model = QGNModel(config).eval()
    torch.nn.init.normal_(model.heads.box_refine.mlp.layers[-1].weight, std=0.1)  # a correction to export
    torch.nn.init.normal_(model.heads.pixel_refine.mlp.layers[-1].weight, std=0.1)
    torch.nn.init.normal_(model.pixel_branch.proj.weight, std=0.1)
    transform = ImageTransform(config.input_image_size, geometry=config.image_geometry)  # 128 px
    model.save_pretrained(tmp_path / "ckpt", tokenizer=tokenizer, image_processor=transform)
    out = tmp_path / "demo.onnx"
    assert main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--format", "onnx", "--output", str(out)]) == 0
    _assert_onnx_matches(load(tmp_path / "ckpt", device="cpu"), out, tiny_bench)


def test_onnx_export_of_the_recognition_aids_matches_pytorch(tiny_checkpoint, tiny_bench, tmp_path):
    """Span-proposal queries (a top-k over a word axis that changes with the batch) and the BIO
    head export, and the graph keeps the word axis dynamic."""
    from transformers import AutoTokenizer

    from qgn.data.pipeline import ImageTransform
    from qgn.modeling import QGNConfig, QGNModel

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_checkpoint))
    config = QGNConfig.tiny(
        vocab_size=len(tokenizer), num_queries=8, score_threshold=0.0, bio_loss_weight=1.0, span_proposals=4
    )
    torch.manual_seed(0)
    model = QGNModel(config).eval()
    model.save_pretrained(tmp_path / "ckpt", tokenizer=tokenizer, image_processor=ImageTransform.load(tiny_checkpoint))
    out = tmp_path / "aids.onnx"
    assert main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--format", "onnx", "--output", str(out)]) == 0
    _assert_onnx_matches(load(tmp_path / "ckpt", device="cpu"), out, tiny_bench)


def _assert_onnx_matches(predictor, onnx_file, tiny_bench):
    import onnxruntime

    from qgn.export import input_names, onnx_outputs

    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert names[:5] == ["input_ids", "attention_mask", "word_index", "word_mask", "pixel_values"]
    assert names == list(input_names(predictor.config))  # and pixel_mask where the images are padded
    posts = read_dataset(str(tiny_bench), split="test", image_dir=str(tiny_bench / "images"))
    # Another batch size, and other sub-word and word lengths, than the batch the graph was traced with.
    batches = [_batch(predictor, posts[:5]), _batch(predictor, [min(posts, key=lambda p: len(p.tokens))])]
    assert batches[0]["word_mask"].shape[1] != batches[1]["word_mask"].shape[1]
    found_entities = 0
    for batch in batches:
        with torch.no_grad():
            reference = predictor.model(**model_inputs(batch))
        ours = onnx_outputs(session, model_inputs(batch))
        for name in ("type_logits", "start_logits", "end_logits", "pred_boxes", "notarget_logits"):
            assert ours[name].shape == reference[name].shape, name
            assert torch.allclose(ours[name], reference[name], atol=1e-4, rtol=1e-4), name
        expected = predictor.postprocessor(reference, batch["posts"])
        got = predictor.postprocessor(ours, batch["posts"])
        for a_post, b_post in zip(expected, got):
            assert [(p.start, p.end, p.type, p.box is None) for p in a_post] == [
                (p.start, p.end, p.type, p.box is None) for p in b_post
            ]
            for a, b in zip(a_post, b_post):
                assert a.score == pytest.approx(b.score, abs=1e-4)
                if a.box is not None:
                    assert a.box == pytest.approx(b.box, abs=1e-2)
            found_entities += len(a_post)
    assert found_entities > 0, "score_threshold 0: the comparison covers real entities"


def test_export_is_quiet_and_names_the_weights_file(onnx_file):
    # It printed 621 lines of the exporter's INFO and wrote NAME.onnx.data without a word.
    noisy = [r for r in EXPORT_LOG["records"] if r.name.startswith(("onnx", "torch"))]
    assert noisy == [], [r.getMessage()[:80] for r in noisy[:3]]
    printed = EXPORT_LOG["printed"].strip()
    assert len(printed.splitlines()) == 1, printed
    assert f"{onnx_file}.data" in printed and "keep the two together" in printed and "qgn predict --onnx" in printed


def test_predict_with_the_onnx_graph_gives_the_pytorch_entities(
    tiny_checkpoint, onnx_file, tiny_bench, tmp_path, capsys
):
    posts = read_dataset(str(tiny_bench), split="test", image_dir=str(tiny_bench / "images"))
    batch = tmp_path / "posts.jsonl"
    batch.write_text("".join(json.dumps({"id": p.id, "tokens": p.tokens, "image": p.image_path}) + "\n" for p in posts))
    outputs = {}
    for name, extra in (("torch", []), ("onnx", ["--onnx", str(onnx_file)])):
        out = tmp_path / f"{name}.jsonl"
        # every query's best span kept, every entity a box: the comparison covers spans, types and boxes
        assert (
            main(
                [
                    "predict",
                    "--checkpoint",
                    str(tiny_checkpoint),
                    "--input",
                    str(batch),
                    "--output",
                    str(out),
                    "--device",
                    "cpu",
                    "--score-threshold",
                    "0",
                    "--no-target-threshold",
                    "1",
                    *extra,
                ]
            )
            == 0
        )
        outputs[name] = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in outputs["onnx"]] == [p.id for p in posts]
    compared = 0
    for a, b in zip(outputs["torch"], outputs["onnx"]):
        assert [(e["start"], e["end"], e["type"]) for e in a["entities"]] == [
            (e["start"], e["end"], e["type"]) for e in b["entities"]
        ]
        for x, y in zip(a["entities"], b["entities"]):
            assert x["score"] == pytest.approx(y["score"], abs=2e-4)
            assert x["box"] == pytest.approx(y["box"], abs=0.2)
            compared += 1
    assert compared > 0
    capsys.readouterr()
    code = main(
        ["predict", "--checkpoint", str(tiny_checkpoint), "--onnx", str(tmp_path / "none.onnx"), "--input", str(batch)]
    )
    assert code == 2 and "--onnx" in capsys.readouterr().err


def test_export_refuses_a_name_without_onnx_suffix(tiny_checkpoint, tmp_path, capsys):
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--output", str(tmp_path / "model.bin")]) == 2
    assert ".onnx" in capsys.readouterr().err


def test_model_card_gives_figures_thresholds_and_loading(tiny_checkpoint):
    card = (tiny_checkpoint / "README.md").read_text(encoding="utf-8")
    final = json.loads((tiny_checkpoint.parent / "final_metrics.json").read_text())
    assert card.startswith("---\nlibrary_name: qgn")
    assert f"| test | GMNER | {final['test']['GMNER']['precision']:.2f} |" in card
    assert f"best epoch {final['best_epoch']}" in card
    assert "`score_threshold`: 0" in card and "`no_target_threshold`: 0.5" in card
    assert "synthetic grounding benchmark" in card and 'qgn.load("' in card
    # qgn has no PyPI distribution: the card must not send readers to `pip install qgn`.
    assert "pip install qgn" not in card and "not on PyPI" in card and "pip install -e ." in card


def _hub_cache(tmp_path: Path, checkpoint: Path, repo: str = "acme/qgn-tiny") -> Path:
    """``HF_HUB_CACHE`` holding ``repo`` the way huggingface_hub writes it: blobs named by hash,
    snapshots/<commit>/ of symlinks to them, refs/main naming the commit."""
    cache = tmp_path / "hub"
    root = cache / ("models--" + repo.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (root / "blobs").mkdir(parents=True)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in checkpoint.iterdir():
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copy(file, root / "blobs" / digest)
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", digest))
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    return cache


def test_a_hub_repo_id_loads_offline_from_the_cache(tiny_checkpoint, tiny_bench, tmp_path):
    cache = _hub_cache(tmp_path, tiny_checkpoint)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    image = sorted((tiny_bench / "images").iterdir())[0]
    cmd = [
        sys.executable,
        "-m",
        "qgn.cli",
        "predict",
        "--device",
        "cpu",
        "--image",
        str(image),
        "--text",
        "Anna met Hugo",
        "--json",
        "--score-threshold",
        "0",
        "--checkpoint",
    ]
    from_hub = subprocess.run([*cmd, "acme/qgn-tiny"], env=env, capture_output=True, text=True, timeout=120)
    assert from_hub.returncode == 0, from_hub.stderr
    local = subprocess.run([*cmd, str(tiny_checkpoint)], env=env, capture_output=True, text=True, timeout=120)
    assert json.loads(from_hub.stdout)["entities"] == json.loads(local.stdout)["entities"]
    missing = subprocess.run([*cmd, "acme/not-cached"], env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "not in the cache" in missing.stderr and "Traceback" not in missing.stderr


def test_push_uploads_the_folder_with_its_card(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create", repo_id, kwargs))

        def upload_folder(self, repo_id, folder_path, **kwargs):
            calls.append(("upload", repo_id, sorted(os.listdir(folder_path)), kwargs))
            return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    (folder / "README.md").unlink()  # an older checkpoint without a card gets one before the upload
    assert main(["push", "--checkpoint", str(folder), "--repo-id", "acme/qgn-tiny", "--private"]) == 0
    assert calls[1] == ("create", "acme/qgn-tiny", {"private": True, "exist_ok": True, "repo_type": "model"})
    assert calls[2][0] == "upload" and "README.md" in calls[2][2] and "model.safetensors" in calls[2][2]
    assert "acme/qgn-tiny/commit/1" in capsys.readouterr().out
    assert main(["push", "--checkpoint", str(folder), "--repo-id", "not a repo"]) == 2
