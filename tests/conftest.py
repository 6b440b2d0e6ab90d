"""Fixtures shared by the test files: a trained checkpoint (serve, predict, export, hub), and one torch
thread for the files of tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

if "PYTEST_XDIST_WORKER_COUNT" in os.environ and "OMP_NUM_THREADS" not in os.environ:
    # One share of the cores per pytest-xdist worker, for its torch and the subprocesses it starts:
    # OpenMP threads spin while they wait, so two workers of two threads each on two cores run
    # slower than one worker alone. Set before any test module imports torch.
    workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices: thread hand-offs cost more than they save, and much more on a busy 2-core box.
    A module asks for it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_bench(tmp_path_factory) -> Path:
    from qgn.data.synthetic import generate_synthetic_benchmark

    return generate_synthetic_benchmark(
        tmp_path_factory.mktemp("tiny-bench"), num_train=96, num_dev=8, num_test=8, seed=5
    )


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_bench, tmp_path_factory) -> Path:
    """``best/`` of a four-epoch tiny run (about 15 s; with fewer posts or epochs it still predicts
    no entity at all). Tests that need entities load it with ``score_threshold=0`` (a model
    trained for seconds is far from any confident span)."""
    from qgn.engine.settings import settings_from_dict
    from qgn.engine.train import run_training

    run = tmp_path_factory.mktemp("tiny-run")
    settings = settings_from_dict(
        {
            "model": {"preset": "tiny", "num_queries": 8, "score_threshold": 0.0},
            "data": {"path": str(tiny_bench), "image_dir": str(tiny_bench / "images"), "tokenizer": "words"},
            "train": {
                "epochs": 4,
                "batch_size": 8,
                "lr": 1e-3,
                "eval_batch_size": 8,
                "seed": 1,
                "tune_thresholds": False,
            },
        }
    )
    run_training(settings, run, progress=False)
    return run / "best"


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium for the browser test, installed with apt-get when it is missing (README's
    test command runs on a fresh machine); the test fails, never skips, when that cannot be done."""
    import tempfile

    from filelock import FileLock

    from browser import ChromiumUnavailable, chromium_path

    try:
        # under pytest-xdist (README's `-n 2`) one worker installs, the other then finds it on PATH
        with FileLock(Path(tempfile.gettempdir()) / "qgn-tests-chromium.lock"):
            return chromium_path()
    except ChromiumUnavailable as err:
        pytest.fail(str(err), pytrace=False)
