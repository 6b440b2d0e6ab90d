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
    config.write_text(
        yaml.safe_dump(
            {
                # score_threshold 0: the seconds-old model predicts something, so the predictions are compared
                # stretch: with padded 64 px images this seconds-old model still says "no entity" for every
                # query, and comparing two empty prediction sets would prove nothing
                "model": {"preset": "tiny", "num_queries": 8, "score_threshold": 0.0, "image_geometry": "stretch"},
                "data": {"path": str(bench), "image_dir": str(bench / "images"), "tokenizer": "words"},
                "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "eval_batch_size": 4, "seed": 7},
            }
        )
    )
    args = ["-m", "qgn.cli", "train", "--config", str(config), "--no-progress", "--output-dir"]
    _run([sys.executable, *args, str(tmp_path / "one")], tmp_path)
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
    ]
    _run([*torchrun, *args, str(tmp_path / "two")], tmp_path)

    one, two = _records(tmp_path / "one"), _records(tmp_path / "two")
    assert [r["epoch"] for r in one] == [r["epoch"] for r in two] == [1, 2]
    info = json.loads((tmp_path / "two" / "run_info.json").read_text())
    # the full model reaches every parameter: it does not pay for DDP's search for unused ones
    assert info["num_processes"] == 2 and info["ddp_find_unused_parameters"] is False
    for a, b in zip(one, two):
        assert a["step"] == b["step"]
        for name, value in a["train"].items():
            # same global batches, gradients averaged over processes: equal up to float summation order
            assert b["train"][name] == pytest.approx(value, rel=1e-3, abs=1e-4), name
        assert a["dev"]["MNER"]["n_pred"] > 0
        for metric in ("GMNER", "MNER", "EEG"):
            assert b["dev"][metric]["n_gold"] == a["dev"][metric]["n_gold"]
            assert (b["dev"][metric]["n_pred"], b["dev"][metric]["tp"]) == (
                a["dev"][metric]["n_pred"],
                a["dev"][metric]["tp"],
            ), metric
            assert b["dev"][metric]["f1"] == pytest.approx(a["dev"][metric]["f1"], abs=1e-6), metric
    final_one = json.loads((tmp_path / "one" / "final_metrics.json").read_text())
    final_two = json.loads((tmp_path / "two" / "final_metrics.json").read_text())
    assert final_one["best_epoch"] == final_two["best_epoch"]
    assert final_one["test"]["MNER"]["n_pred"] > 0
    for metric in ("GMNER", "MNER", "EEG"):
        assert final_two["test"][metric]["n_pred"] == final_one["test"][metric]["n_pred"], metric
        assert final_two["test"][metric]["f1"] == pytest.approx(final_one["test"][metric]["f1"], abs=1e-6), metric


def test_l_pred_only_trains_under_two_processes(tmp_path):
    """Table IV's "L_pred only" row leaves the no-target head out of the loss; DDP must be told,
    or the second step fails ("Expected to have finished reduction in the prior iteration")."""
    from qgn.data.synthetic import generate_synthetic_benchmark

    bench = generate_synthetic_benchmark(tmp_path / "data", num_train=16, num_dev=4, num_test=4, seed=5)
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"preset": "tiny", "num_queries": 4, "lambda_nt": 0.0, "lambda_con": 0.0},
                "data": {"path": str(bench), "image_dir": str(bench / "images"), "tokenizer": "words"},
                "train": {"epochs": 1, "batch_size": 4, "lr": 1e-3, "eval_batch_size": 4, "tune_thresholds": False},
            }
        )
    )
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
    ]
    _run(
        [
            *torchrun,
            "-m",
            "qgn.cli",
            "train",
            "--config",
            str(config),
            "--no-progress",
            "--output-dir",
            str(tmp_path / "run"),
        ],
        tmp_path,
    )
    assert _records(tmp_path / "run")[0]["step"] == 4  # 16 posts, global batch 4: four steps
    assert json.loads((tmp_path / "run" / "run_info.json").read_text())["ddp_find_unused_parameters"] is True


def _paper_sized_tiny(**switches):
    """The tiny model's widths on 12-layer encoders with the paper's layer schedules, so that every
    row of the grid (Table VI's too) builds."""
    from qgn.modeling import QGNConfig

    return QGNConfig.tiny(
        vocab_size=50,
        text_config={"num_hidden_layers": 12},
        vision_config={"num_hidden_layers": 12},
        text_extract_layers=[1, 4, 7, 10],
        vision_inject_layers=[2, 5, 8, 11],
        vision_extract_layers=[2, 5, 8, 11],
        aux_loss=False,
        num_queries=6,
    ).replace(**switches)


@pytest.mark.parametrize("table", ["III", "IV", "V", "VI", "fig3"])
def test_unused_parameter_rule_matches_a_real_backward_pass(table):
    """``parameters_left_unused`` names exactly the rows whose loss leaves a parameter without a
    gradient (one backward pass of each row of the grid), so DDP is told for those and only those."""
    import torch

    from qgn.engine.ddp import parameters_left_unused
    from qgn.modeling import build
    from qgn.reproduce.grid import table_rows

    g = torch.Generator().manual_seed(0)
    targets = [
        {
            "labels": torch.tensor([0, 2]),
            "start": torch.tensor([0, 2]),
            "end": torch.tensor([1, 2]),
            "boxes": torch.tensor([[0.4, 0.4, 0.2, 0.2], [0.0, 0.0, 0.0, 0.0]]),
            "has_box": torch.tensor([True, False]),
            "entity_index": torch.tensor([0, 1]),
        }
    ] * 2
    unused_rows = []
    for row in table_rows(table):
        config = _paper_sized_tiny(**row.switches)
        torch.manual_seed(0)
        model, criterion, _ = build(config)
        model.train()
        outputs = model(
            input_ids=torch.randint(5, 50, (2, 7), generator=g),
            attention_mask=torch.ones(2, 7),
            word_index=torch.tensor([[-1, 0, 1, 2, 3, 4, -1]] * 2),
            word_mask=torch.ones(2, 5, dtype=torch.bool),
            pixel_values=torch.randn(2, 3, config.image_size, config.image_size, generator=g),
        )
        loss, _ = criterion(outputs, targets)
        loss.backward()
        without = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert bool(without) == bool(parameters_left_unused(config)), (row.label, without[:5])
        if without:
            unused_rows.append(row.label)
    assert unused_rows == {"IV": ["L_pred"], "VI": ["3,1,3,3"]}.get(table, [])
