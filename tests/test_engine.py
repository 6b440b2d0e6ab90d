"""End-to-end: training lowers the loss, --resume is exact, evaluate and predict follow their contracts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qgn.cli import main
from qgn.engine.settings import settings_from_dict
from qgn.engine.train import Trainer, run_training
from qgn.errors import QGNError


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    from qgn.data.synthetic import generate_synthetic_benchmark

    return generate_synthetic_benchmark(tmp_path_factory.mktemp("synthetic"), num_train=32, num_dev=8, num_test=8, seed=3)


def tiny_settings(bench: Path, **train):
    raw = {
        "model": {"preset": "tiny", "num_queries": 8},
        "data": {"path": str(bench), "image_dir": str(bench / "images"), "tokenizer": "words"},
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "eval_batch_size": 8, "seed": 1, **train},
    }
    return settings_from_dict(raw)


@pytest.fixture(scope="module")
def trained_run(bench, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    run_training(tiny_settings(bench, epochs=3), run, progress=False)
    return run


def test_training_writes_run_and_lowers_loss(trained_run):
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[-1]["train"]["loss"] < records[0]["train"]["loss"]
    assert all("GMNER" in r["dev"] for r in records)
    final = json.loads((trained_run / "final_metrics.json").read_text())
    assert final["selected_on"] == "dev GMNER micro F1"
    assert set(final["test"]) == {"GMNER", "MNER", "EEG", "breakdown"}
    assert set(final["with_default_thresholds"]) == {"dev", "test"}
    for name in ("config.yaml", "run_info.json", "best/config.json", "best/model.safetensors", "checkpoint/trainer_state.json"):
        assert (trained_run / name).exists(), name
    assert json.loads((trained_run / "checkpoint/trainer_state.json").read_text())["epoch"] == 3


def _checkpoint_weights(run: Path) -> dict[str, torch.Tensor]:
    files = sorted((run / "checkpoint").glob("model*.safetensors"))
    assert files, "accelerate checkpoint holds the model weights"
    return load_file(str(files[0]))


def test_resume_after_interrupt_matches_uninterrupted(bench, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    run_training(tiny_settings(bench, checkpoint_every_steps=1), straight, progress=False)

    interrupted = tmp_path / "interrupted"
    calls = {"n": 0}
    original = Trainer._loss

    def flaky_loss(self, batch):
        calls["n"] += 1
        if calls["n"] == 6:  # mid-way through the second epoch (4 batches per epoch)
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(Trainer, "_loss", flaky_loss)
    with pytest.raises(KeyboardInterrupt):
        run_training(tiny_settings(bench, checkpoint_every_steps=1), interrupted, progress=False)
    monkeypatch.setattr(Trainer, "_loss", original)
    state = json.loads((interrupted / "checkpoint/trainer_state.json").read_text())
    assert (state["epoch"], state["batches_done"]) == (1, 1)
    assert main(["train", "--resume", str(interrupted), "--no-progress"]) == 0

    a, b = _checkpoint_weights(straight), _checkpoint_weights(interrupted)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    assert (interrupted / "metrics.jsonl").read_text().count("\n") == 2


def test_existing_run_is_not_overwritten(bench, trained_run):
    with pytest.raises(QGNError, match="--resume"):
        Trainer(tiny_settings(bench), trained_run)


def test_evaluate_checkpoint_matches_standalone_scorer(bench, trained_run, tmp_path, capsys):
    preds = tmp_path / "preds.jsonl"
    common = ["--data", str(bench), "--split", "test", "--json"]
    assert main(["evaluate", "--checkpoint", str(trained_run / "best"), "--image-dir", str(bench / "images"),
                 "--pred-out", str(preds), *common]) == 0
    from_model = json.loads(capsys.readouterr().out)
    assert main(["evaluate", "--pred", str(preds), *common]) == 0
    from_file = json.loads(capsys.readouterr().out)
    for metric in ("GMNER", "MNER", "EEG"):
        assert from_model[metric] == from_file[metric]


def test_thresholds_chosen_on_dev_are_stored_in_the_checkpoint_and_used(bench, trained_run, tmp_path, capsys):
    from qgn.engine.thresholds import THRESHOLD_FIELDS, current_thresholds
    from qgn.modeling import QGNConfig

    final = json.loads((trained_run / "final_metrics.json").read_text())
    chosen, default = final["thresholds"]["chosen"], final["thresholds"]["default"]
    assert set(chosen) == set(THRESHOLD_FIELDS) and default == {"score_threshold": 0.3, "no_target_threshold": 0.5,
                                                                "remove_overlaps": False}
    assert current_thresholds(QGNConfig.load(trained_run / "best" / "config.json")) == chosen
    # never worse on dev than the defaults (they are in the search and win ties)
    assert final["dev"]["GMNER"]["f1"] >= final["with_default_thresholds"]["dev"]["GMNER"]["f1"]
    # `qgn evaluate --checkpoint` predicts with the stored thresholds: it reproduces the final test figures
    assert main(["evaluate", "--checkpoint", str(trained_run / "best"), "--image-dir", str(bench / "images"),
                 "--data", str(bench), "--split", "test", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for metric in ("GMNER", "MNER", "EEG"):
        assert report[metric]["n_pred"] == final["test"][metric]["n_pred"]
        assert report[metric]["tp"] == final["test"][metric]["tp"]
    assert report["breakdown"] == final["test"]["breakdown"]


def test_tune_thresholds_takes_the_best_dev_setting_and_keeps_defaults_on_ties():
    from qgn.data.records import Entity, Post
    from qgn.engine.thresholds import tune_thresholds
    from qgn.modeling import PostProcessor, QGNConfig
    from qgn.modeling.postprocess import Candidate

    config = QGNConfig.tiny()
    post = Post("p", ["a", "b", "c"], [Entity(0, 1, "PER", [(0, 0, 10, 10)]), Entity(2, 3, "LOC")], image_size=(20, 20))
    box = (0.0, 0.0, 10.0, 10.0)
    # The grounded entity scores 0.25 (below the default 0.3) with P(no target) 0.45; the box-less
    # one scores 0.9 with P(no target) 0.65 and a box that a 0.7 threshold would keep.
    candidates = {"p": [Candidate(0, 1, "PER", 0.25, box, 0.45), Candidate(2, 3, "LOC", 0.9, box, 0.65)]}
    result = tune_thresholds(PostProcessor(config), config, [post], candidates)
    assert result["default_f1"] == pytest.approx(200 / 3)  # LOC right, PER dropped: 1 of 1 predicted, 2 gold
    assert result["f1"] == 100.0
    chosen = result["thresholds"]
    assert chosen["score_threshold"] <= 0.2 and 0.45 < chosen["no_target_threshold"] <= 0.65
    # nothing to gain: the defaults stay
    easy = {"p": [Candidate(0, 1, "PER", 0.9, box, 0.1), Candidate(2, 3, "LOC", 0.9, None, 0.9)]}
    assert tune_thresholds(PostProcessor(config), config, [post], easy)["thresholds"] == {
        "score_threshold": 0.3, "no_target_threshold": 0.5, "remove_overlaps": False}


def test_evaluate_prints_where_gmner_is_lost(bench, trained_run, tmp_path, capsys):
    from qgn.data import read_dataset
    from qgn.data.records import Prediction
    from qgn.metrics import write_predictions

    posts = read_dataset(str(bench), split="test")
    grounded = [(p, e) for p in posts for e in p.entities if e.boxes]
    boxless = [(p, e) for p in posts for e in p.entities if not e.boxes]
    assert grounded and boxless
    preds = {p.id: [] for p in posts}
    (p0, e0), (p1, e1) = grounded[0], boxless[0]
    preds[p0.id].append(Prediction(e0.start, e0.end, e0.type, None, 0.9))  # grounded, no box
    preds[p1.id].append(Prediction(e1.start, e1.end, e1.type, (0, 0, 5, 5), 0.9))  # box-less, with a box
    write_predictions(preds, tmp_path / "p.jsonl")
    assert main(["evaluate", "--data", str(bench), "--split", "test", "--pred", str(tmp_path / "p.jsonl")]) == 0
    table = capsys.readouterr().out
    n_gold = sum(len(p.entities) for p in posts)
    rows = {line[:40].strip(): line[40:].split() for line in table.splitlines() if "% of #" in line}
    assert rows["grounded entity predicted without a box"] == ["1", f"{100 / n_gold:.2f}%", "of", "#gold"]
    assert rows["box-less entity predicted with a box"][0] == "1"
    assert rows["missed: no prediction with the span"][0] == str(n_gold - 2)
    assert rows["correct (span, type and region)"][0] == "0"
    assert main(["evaluate", "--data", str(bench), "--split", "test", "--pred", str(tmp_path / "p.jsonl"),
                 "--json"]) == 0
    breakdown = json.loads(capsys.readouterr().out)["breakdown"]
    assert breakdown["boxless_with_box"]["count"] == 1 and breakdown["correct"]["count"] == 0
    assert sum(breakdown[k]["count"] for k in breakdown if k != "spurious") == n_gold


def test_gold_predictions_score_100(bench, tmp_path, capsys):
    from qgn.data import read_dataset
    from qgn.metrics import write_predictions
    from qgn.data.records import Prediction

    posts = read_dataset(str(bench), split="test")
    gold = {p.id: [Prediction(e.start, e.end, e.type, e.boxes[0] if e.boxes else None, 1.0) for e in p.entities]
            for p in posts}
    write_predictions(gold, tmp_path / "gold.jsonl")
    assert main(["evaluate", "--data", str(bench), "--split", "test", "--pred", str(tmp_path / "gold.jsonl"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [result[m]["f1"] for m in ("GMNER", "MNER", "EEG")] == [100.0, 100.0, 100.0]


ENTITY_KEYS = {"start": int, "end": int, "char_start": int, "char_end": int, "text": str, "type": str, "score": float}


def test_predict_api_and_cli_follow_schema(bench, trained_run, tmp_path, capsys):
    import qgn

    predictor = qgn.load(trained_run / "best", score_threshold=0.0)
    image = next((bench / "images").glob("*.jpg"))
    text = "Anna and the Blue Comets cheered in Paris !"
    entities = predictor.predict(str(image), text)
    assert entities, "score_threshold=0 keeps at least the best query"
    spans = set()
    for e in entities:
        for key, kind in ENTITY_KEYS.items():
            assert isinstance(e[key], kind), (key, e)
        assert 0 <= e["start"] < e["end"]
        assert text[e["char_start"] : e["char_end"]] == e["text"]
        assert e["type"] in ("PER", "LOC", "ORG", "OTHER")
        assert e["box"] is None or (len(e["box"]) == 4 and e["box"][0] <= e["box"][2] and e["box"][1] <= e["box"][3])
        spans.add((e["start"], e["end"]))
    assert len(spans) == len(entities), "at most one entity per span"

    drawn = tmp_path / "drawn.png"
    assert main(["predict", "--checkpoint", str(trained_run / "best"), "--image", str(image), "--text", text,
                 "--json", "--draw", str(drawn), "--score-threshold", "0"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["entities"] == entities
    assert drawn.stat().st_size > 0

    batch = tmp_path / "posts.jsonl"
    batch.write_text(json.dumps({"id": "a", "text": text, "image": str(image)}) + "\n"
                     + json.dumps({"id": "b", "text": "Paris"}) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["predict", "--checkpoint", str(trained_run / "best"), "--input", str(batch), "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b"]


def test_predict_rejects_bad_input(trained_run, tmp_path):
    import qgn

    predictor = qgn.load(trained_run / "best")
    with pytest.raises(QGNError, match="empty text"):
        predictor.predict(None, "   ")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(QGNError, match="cannot read image"):
        predictor.predict(str(bad), "Paris")
    with pytest.raises(QGNError, match="not found"):
        predictor.predict(str(tmp_path / "missing.jpg"), "Paris")
    long_text = " ".join(["Paris"] * 500)
    assert isinstance(predictor.predict(None, long_text), list)  # truncated with a warning, not an error


def test_demo_runs_end_to_end_and_prints_both_tables(tmp_path, capsys):
    """`qgn demo` at toy size: data, training, test table, text-only baseline, picture, result file."""
    from PIL import Image

    from qgn.data import read_dataset

    out = tmp_path / "demo"
    assert main(["demo", "--output-dir", str(out), "--train-posts", "48", "--set", "train.epochs=1",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "Text-only baseline" in printed and "wall time" in printed
    result = json.loads((out / "demo_result.json").read_text())
    # The baseline is right exactly for the test entities without a box.
    test = read_dataset(str(out / "data"), split="test", image_dir=str(out / "data" / "images"))
    entities = [e for p in test for e in p.entities]
    unboxed = sum(not e.boxes for e in entities)
    assert result["text_only_baseline"]["GMNER"]["tp"] == unboxed
    assert result["text_only_baseline"]["MNER"]["f1"] == 100.0
    assert result["qgn"]["GMNER"]["n_gold"] == len(entities)
    with Image.open(out / "predictions.png") as picture:
        assert picture.width > 64 and picture.height > 64
