"""One precision for choosing the checkpoint and for the figures reported of it (issue 23): the dev
scores that chose the epoch are the dev scores in final_metrics.json, also under bf16 training."""

from __future__ import annotations

import json

import pytest

from qgn.engine.precision import cpu_bf16_units


@pytest.mark.skipif(
    not cpu_bf16_units(),
    reason="this CPU has no bf16 units (amx_bf16 / avx512_bf16): a bf16 run "
    "falls back to fp32 and there is no second precision to differ",
)
def test_the_dev_scores_that_chose_the_epoch_are_the_reported_ones(tmp_path):
    from qgn.data.synthetic import generate_synthetic_benchmark
    from qgn.engine.settings import settings_from_dict
    from qgn.engine.train import run_training

    bench = generate_synthetic_benchmark(tmp_path / "data", num_train=48, num_dev=160, num_test=8, seed=3)
    settings = settings_from_dict(
        {
            # score_threshold 0: the young model predicts many entities, so a precision change shows in the counts
            "model": {"preset": "tiny", "num_queries": 8, "score_threshold": 0.0},
            "data": {"path": str(bench), "image_dir": str(bench / "images"), "tokenizer": "words"},
            "train": {
                "epochs": 2,
                "batch_size": 8,
                "lr": 1e-3,
                "eval_batch_size": 16,
                "seed": 2,
                "mixed_precision": "bf16",
                "tune_thresholds": False,
            },
        }
    )
    final = run_training(settings, tmp_path / "run", progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    chosen = next(r for r in records if r["epoch"] == final["best_epoch"])
    for metric in ("GMNER", "MNER", "EEG"):
        assert final["dev"][metric] == chosen["dev"][metric], metric
        assert final["with_default_thresholds"]["dev"][metric] == chosen["dev"][metric], metric
    assert (
        final["scored_in"] == json.loads((tmp_path / "run" / "run_info.json").read_text())["mixed_precision"] == "bf16"
    )
