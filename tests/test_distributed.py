"""Two CPU processes (gloo, launched by torchrun) train like one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fakes import free_port


def _run(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one(tmp_path):
    from qgn.data.synthetic import generate_synthetic_benchmark

    bench = generate_synthetic_benchmark(tmp_path / "data", num_train=32, num_dev=8, num_test=8, seed=5)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        # score_threshold 0: the seconds-old model predicts something, so the predictions are compared
        "model": {"preset": "tiny", "num_queries": 8, "score_threshold": 0.0},
        "data": {"path": str(bench), "image_dir": str(bench / "images"), "tokenizer": "words"},
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "eval_batch_size": 4, "seed": 7},
    }))
    args = ["-m", "qgn.cli", "train", "--config", str(config), "--no-progress", "--output-dir"]
    _run([sys.executable, *args, str(tmp_path / "one")], tmp_path)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    _run([*torchrun, *args, str(tmp_path / "two")], tmp_path)

    one, two = _records(tmp_path / "one"), _records(tmp_path / "two")
    assert [r["epoch"] for r in one] == [r["epoch"] for r in two] == [1, 2]
    assert json.loads((tmp_path / "two" / "run_info.json").read_text())["num_processes"] == 2
    for a, b in zip(one, two):
        assert a["step"] == b["step"]
        for name, value in a["train"].items():
            # same global batches, gradients averaged over processes: equal up to float summation order
            assert b["train"][name] == pytest.approx(value, rel=1e-3, abs=1e-4), name
        assert a["dev"]["MNER"]["n_pred"] > 0
        for metric in ("GMNER", "MNER", "EEG"):
            assert b["dev"][metric]["n_gold"] == a["dev"][metric]["n_gold"]
            assert (b["dev"][metric]["n_pred"], b["dev"][metric]["tp"]) == (a["dev"][metric]["n_pred"],
                                                                            a["dev"][metric]["tp"]), metric
            assert b["dev"][metric]["f1"] == pytest.approx(a["dev"][metric]["f1"], abs=1e-6), metric
    final_one = json.loads((tmp_path / "one" / "final_metrics.json").read_text())
    final_two = json.loads((tmp_path / "two" / "final_metrics.json").read_text())
    assert final_one["best_epoch"] == final_two["best_epoch"]
    assert final_one["test"]["MNER"]["n_pred"] > 0
    for metric in ("GMNER", "MNER", "EEG"):
        assert final_two["test"][metric]["n_pred"] == final_one["test"][metric]["n_pred"], metric
        assert final_two["test"][metric]["f1"] == pytest.approx(final_one["test"][metric]["f1"], abs=1e-6), metric
