"""Integrity rules of training: the checkpoint and the post-processing thresholds are chosen on dev
alone; the test split is only ever scored, never used to choose anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qgn.data.records import Entity, Post
from qgn.engine.settings import settings_from_dict
from qgn.errors import QGNError


def test_tune_thresholds_refuses_the_test_split_and_candidates_of_other_posts():
    from qgn.engine.thresholds import tune_thresholds
    from qgn.modeling import PostProcessor, QGNConfig
    from qgn.modeling.postprocess import Candidate

    config = QGNConfig.tiny()
    post = Post("p", ["a", "b"], [Entity(0, 1, "PER")], image_size=(20, 20))
    candidates = {"p": [Candidate(0, 1, "PER", 0.9, None, 0.9)]}
    for split, test_split in (("test", "test"), ("held_out", "held_out")):
        with pytest.raises(QGNError, match="never on the test split"):
            tune_thresholds(PostProcessor(config), config, [post], candidates, split=split, test_split=test_split)
    with pytest.raises(QGNError, match="not those of the dev posts"):
        tune_thresholds(PostProcessor(config), config, [post], {"q": candidates["p"]}, split="dev")
    assert tune_thresholds(PostProcessor(config), config, [post], candidates, split="dev")["f1"] == 100.0


def test_training_chooses_the_epoch_and_the_thresholds_on_dev_posts_only(tmp_path, monkeypatch):
    from qgn.data import read_dataset
    from qgn.data.synthetic import generate_synthetic_benchmark
    from qgn.engine import thresholds
    from qgn.engine.train import Trainer, run_training

    bench = generate_synthetic_benchmark(tmp_path / "bench", num_train=8, num_dev=6, num_test=6, seed=11)
    dev_ids = {p.id for p in read_dataset(bench, "dev")}
    test_ids = {p.id for p in read_dataset(bench, "test")}
    assert dev_ids and test_ids and not dev_ids & test_ids, "the check needs disjoint splits"

    evaluated, tuned = [], []
    real_evaluate, real_tune = Trainer.evaluate, thresholds.tune_thresholds

    def spy_evaluate(self, model, posts, loader, split):
        evaluated.append((split, {p.id for p in posts}))
        return real_evaluate(self, model, posts, loader, split)

    def spy_tune(postprocessor, config, posts, candidates, *args, **kwargs):
        tuned.append(({p.id for p in posts}, set(candidates), kwargs.get("split")))
        return real_tune(postprocessor, config, posts, candidates, *args, **kwargs)

    monkeypatch.setattr(Trainer, "evaluate", spy_evaluate)
    monkeypatch.setattr(thresholds, "tune_thresholds", spy_tune)
    settings = settings_from_dict(
        {
            "model": {"preset": "tiny", "num_queries": 4, "score_threshold": 0.0},
            "data": {"path": str(bench), "image_dir": str(bench / "images"), "tokenizer": "words"},
            "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "eval_batch_size": 8, "seed": 1},
        }
    )
    run = tmp_path / "run"
    final = run_training(settings, run, progress=False)

    assert evaluated == [("dev", dev_ids), ("dev", dev_ids)], "the checkpoint is chosen on dev scores alone"
    assert tuned == [(dev_ids, dev_ids, "dev")], "the thresholds are tuned on the dev posts and candidates"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [sorted(k for k in r if k in ("dev", "test")) for r in records] == [["dev"], ["dev"]]
    saved = json.loads(Path(run / "final_metrics.json").read_text())
    assert saved["selected_on"].startswith("dev ") and saved["thresholds"]["chosen_on"].startswith("dev ")
    assert final["best_epoch"] in (1, 2)
