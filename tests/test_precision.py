"""bf16 on CPUs: the precision choice, bf16 inference against fp32 on a trained checkpoint, and a
short bf16 training run that learns like fp32."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from qgn.api import load
from qgn.data import read_dataset
from qgn.data.images import load_image
from qgn.engine import precision
from qgn.engine.precision import resolve_precision
from qgn.errors import QGNError


@pytest.mark.parametrize(
    "units, requested, expected",
    [
        (("amx_bf16", "avx512_bf16"), "auto", "bf16"),
        (("avx512_bf16",), "bf16", "bf16"),
        ((), "auto", "no"),
        ((), "bf16", "no"),  # no bf16 units: fp32, with a warning saying why
        (("amx_bf16",), "fp16", "no"),
        ((), "fp32", "no"),
        ((), "no", "no"),
    ],
)
def test_precision_choice_on_the_cpu(monkeypatch, caplog, units, requested, expected):
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: units)
    with caplog.at_level(logging.INFO, logger="qgn.engine.precision"):
        assert resolve_precision(requested, "cpu") == expected
    if requested == "bf16" and not units:
        assert "no bf16 units" in caplog.text
    if requested == "auto":
        assert ("bf16" if units else "fp32") in caplog.text and "precision auto" in caplog.text


def test_unknown_precision_is_refused():
    with pytest.raises(QGNError, match="precision must be one of"):
        resolve_precision("int8", "cpu")


def test_cpu_flags_are_read_from_cpuinfo():
    units = precision.cpu_bf16_units()
    assert set(units) <= set(precision.CPU_BF16_FLAGS)


def test_bf16_inference_gives_the_fp32_entities(tiny_checkpoint, tiny_bench):
    # Autocast is forced here (not resolved), so bf16 really runs even on a CPU without bf16 units.
    posts = read_dataset(str(tiny_bench), split="train", image_dir=str(tiny_bench / "images"))[:48]
    images = [load_image(p.image_path) for p in posts]
    # Every entity is kept and given a box: whether this barely trained model's no-target head says
    # "no box" depends on float summation order, that is on the thread count (OMP_NUM_THREADS=1
    # gave no box at all); the boxes are what bf16 must reproduce.
    predictor = load(tiny_checkpoint, device="cpu", score_threshold=0.0, no_target_threshold=1.0)
    fp32 = predictor.predict_posts(posts, images)
    predictor.autocast = torch.bfloat16
    bf16 = predictor.predict_posts(posts, images)
    keys = lambda preds: {(p.start, p.end, p.type, p.box is None): p for p in preds}  # noqa: E731
    union = shared = boxed = close = 0
    for a, b in zip(fp32, bf16):
        ka, kb = keys(a), keys(b)
        union += len(ka.keys() | kb.keys())
        shared += len(ka.keys() & kb.keys())
        for k in ka.keys() & kb.keys():
            assert ka[k].score == pytest.approx(kb[k].score, abs=0.03)
            if ka[k].box is not None:
                boxed += 1
                close += ka[k].box == pytest.approx(kb[k].box, abs=3.0)
    assert union > 0 and boxed > 0
    # A span keeps its best query's box; this barely trained model has near-ties between queries
    # of one span, and bf16 rounding may pick the other one (a different box at the same score).
    assert close / boxed >= 0.85, f"{close} of {boxed} boxes within 3 px"
    assert shared / union >= 0.9, f"{shared} of {union} entities agree"


def test_a_short_bf16_run_learns_like_fp32(tiny_bench, tmp_path, monkeypatch):
    from qgn.engine.settings import settings_from_dict
    from qgn.engine.train import run_training

    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: ("avx512_bf16",))  # take the bf16 path everywhere
    losses = {}
    for mode in ("no", "bf16"):
        run = tmp_path / mode
        run_training(
            settings_from_dict(
                {
                    "model": {"preset": "tiny", "num_queries": 8},
                    "data": {"path": str(tiny_bench), "image_dir": str(tiny_bench / "images"), "tokenizer": "words"},
                    "train": {
                        "epochs": 3,
                        "batch_size": 16,
                        "lr": 1e-3,
                        "eval_batch_size": 16,
                        "seed": 1,
                        "mixed_precision": mode,
                        "tune_thresholds": False,
                    },
                }
            ),
            run,
            progress=False,
        )
        assert json.loads((run / "run_info.json").read_text())["mixed_precision"] == mode
        losses[mode] = [json.loads(line)["train"]["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert losses["bf16"][-1] < 0.9 * losses["bf16"][0]
    assert losses["bf16"][-1] == pytest.approx(losses["no"][-1], rel=0.1)
