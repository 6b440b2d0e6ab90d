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

    return generate_synthetic_benchmark(
        tmp_path_factory.mktemp("synthetic"), num_train=32, num_dev=8, num_test=8, seed=3
    )


def tiny_settings(bench: Path, **train):
    # score_threshold 0: a model trained for seconds is far from any confident span, and with the
    # default 0.3 it predicts nothing, which would make every comparison of predictions below vacuous.
    raw = {
        "model": {"preset": "tiny", "num_queries": 8, "score_threshold": 0.0},
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
    assert all(r["dev"]["MNER"]["n_pred"] > 0 for r in records), "the model predicts (score_threshold 0)"
    final = json.loads((trained_run / "final_metrics.json").read_text())
    assert final["selected_on"] == "dev GMNER micro F1"
    assert set(final["test"]) == {"GMNER", "MNER", "EEG", "breakdown"}
    assert set(final["with_default_thresholds"]) == {"dev", "test"}
    for name in (
        "config.yaml",
        "run_info.json",
        "best/config.json",
        "best/model.safetensors",
        "checkpoint/trainer_state.json",
    ):
        assert (trained_run / name).exists(), name
    assert json.loads((trained_run / "checkpoint/trainer_state.json").read_text())["epoch"] == 3


def _checkpoint_weights(run: Path) -> dict[str, torch.Tensor]:
    files = sorted((run / "checkpoint").glob("model*.safetensors"))
    assert files, "accelerate checkpoint holds the model weights"
    return load_file(str(files[0]))


def _train_losses(run: Path) -> list[dict[str, float]]:
    return [json.loads(line)["train"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(straight: Path, resumed: Path) -> None:
    """Same final weights and the same logged train losses, epoch by epoch, as the run never stopped."""
    a, b = _checkpoint_weights(straight), _checkpoint_weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    expected, got = _train_losses(straight), _train_losses(resumed)
    assert len(got) == len(expected) == 2
    for e, g in zip(expected, got):
        assert g == pytest.approx(e, rel=1e-6), "the interrupted epoch logs the mean of all its batches"


@pytest.fixture(scope="module")
def straight_run(bench, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("straight")
    run_training(tiny_settings(bench), run, progress=False)
    return run


def _interrupt_at_loss_call(settings, out: Path, monkeypatch, call: int) -> None:
    """Train into ``out`` until the ``call``-th loss computation raises KeyboardInterrupt, as a
    Ctrl-C there would; the trainer's own handler saves the position."""
    calls = {"n": 0}
    original = Trainer._loss

    def flaky_loss(self, batch):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(Trainer, "_loss", flaky_loss)
    with pytest.raises(KeyboardInterrupt):
        run_training(settings, out, progress=False)
    monkeypatch.setattr(Trainer, "_loss", original)


def test_resume_after_interrupt_matches_uninterrupted(bench, straight_run, tmp_path, monkeypatch):
    # No periodic checkpoint: only the save on Ctrl-C can hold the position inside epoch 2.
    interrupted = tmp_path / "interrupted"
    # the third batch of the second epoch (4 batches per epoch)
    settings = tiny_settings(bench, checkpoint_every_steps=0, checkpoint_every_minutes=0)
    _interrupt_at_loss_call(settings, interrupted, monkeypatch, call=7)
    state = json.loads((interrupted / "checkpoint/trainer_state.json").read_text())
    assert (state["epoch"], state["batches_done"], state["global_step"]) == (1, 2, 6)
    assert state["running"]["count"] == 2
    assert main(["train", "--resume", str(interrupted), "--no-progress"]) == 0
    _assert_same_run(straight_run, interrupted)


def test_augmentation_reaches_the_train_split_only_and_resumes_exactly(bench, tmp_path, monkeypatch):
    """With train.augment_flip / augment_zoom on, the train loader gives views drawn for that
    epoch, dev never does, and a run stopped inside epoch 2 resumes to the same weights and losses
    (the views come from (seed, epoch, post), not from a stream that a restart would lose)."""
    from qgn.data.augment import BoxSafeAugment

    def settings():
        return tiny_settings(
            bench, augment_flip=0.5, augment_zoom=0.5, checkpoint_every_steps=0, checkpoint_every_minutes=0
        )

    calls: list[tuple[int, int]] = []
    original_call = BoxSafeAugment.__call__

    def recording_call(self, pixels, mask, boxes, has_box, frame, epoch, index):
        calls.append((epoch, index))
        return original_call(self, pixels, mask, boxes, has_box, frame, epoch, index)

    monkeypatch.setattr(BoxSafeAugment, "__call__", recording_call)
    straight = tmp_path / "straight"
    run_training(settings(), straight, progress=False)
    # every one of the 32 training posts once per epoch, with that epoch's number; dev's posts never
    assert sorted(calls) == [(e, i) for e in (0, 1) for i in range(32)]

    interrupted = tmp_path / "interrupted"
    _interrupt_at_loss_call(settings(), interrupted, monkeypatch, call=7)
    assert json.loads((interrupted / "checkpoint/trainer_state.json").read_text())["batches_done"] == 2
    assert main(["train", "--resume", str(interrupted), "--no-progress"]) == 0
    _assert_same_run(straight, interrupted)


KILL_AFTER_CHECKPOINT = """
import os, signal, sys
from qgn.engine import train

save = train.Trainer._save_checkpoint

def save_then_die(self):
    save(self)
    if self.state["global_step"] == int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)  # no handler runs, nothing more is written

train.Trainer._save_checkpoint = save_then_die
from qgn.cli import main
sys.exit(main(["train", "--config", sys.argv[1], "--output-dir", sys.argv[2], "--no-progress"]))
"""


def test_a_run_with_a_larger_input_than_the_vit_trains_saves_and_predicts(bench, tmp_path):
    """pixel_refine_scale=2: the trainer feeds 128 px images (the ViT sees 64), the checkpoint's
    image processor resizes to 128, and the loaded model predicts from an image of any size."""
    from PIL import Image

    import qgn
    from qgn.data.pipeline import ImageTransform

    settings = tiny_settings(bench, epochs=1)
    settings.model = settings.model.replace(box_refine_pixels=True, pixel_refine_scale=2, pixel_patch_branch=True)
    run_training(settings, tmp_path / "run", progress=False)
    best = tmp_path / "run" / "best"
    assert ImageTransform.load(best).image_size == 128
    predictor = qgn.load(best, device="cpu")
    assert predictor.config.input_image_size == 128 and predictor.config.image_size == 64
    entities = predictor.predict(Image.new("RGB", (300, 100), (200, 30, 30)), "Anna met Bob in Paris")
    assert isinstance(entities, list)  # score_threshold 0: it returns what it found, boxes in pixels
    assert all(e["box"] is None or max(e["box"][0], e["box"][2]) <= 300 for e in entities)


@pytest.mark.parametrize(
    "periodic",
    [
        {"checkpoint_every_steps": 3, "checkpoint_every_minutes": 0},
        {"checkpoint_every_steps": 0, "checkpoint_every_minutes": 1e-9},
    ],
    ids=["every_steps", "every_minutes"],
)
def test_resume_after_sigkill_matches_uninterrupted(bench, straight_run, tmp_path, periodic):
    # A periodic checkpoint (by steps, or by time: here at once after every step), then SIGKILL
    # right after the one at step 6 (inside epoch 2): only the periodic save can have kept the position.
    import subprocess
    import sys

    config = tmp_path / "run.yaml"
    tiny_settings(bench, **periodic).save(config)
    script = tmp_path / "kill.py"
    script.write_text(KILL_AFTER_CHECKPOINT)
    killed = tmp_path / "killed"
    done = subprocess.run(
        [sys.executable, str(script), str(config), str(killed), "6"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == -9, done.stderr[-2000:]
    assert not (killed / "final_metrics.json").exists()
    state = json.loads((killed / "checkpoint/trainer_state.json").read_text())
    assert (state["epoch"], state["batches_done"], state["global_step"]) == (1, 2, 6)
    assert main(["train", "--resume", str(killed), "--no-progress"]) == 0
    _assert_same_run(straight_run, killed)


SIGNAL_IN_TRAINING = """
import os, signal, sys
import accelerate
from qgn.engine import train

# A shell's background job starts with SIGINT ignored, and Python then keeps it ignored: give this
# process the usual Ctrl-C handler, as an interactive terminal would.
signal.signal(signal.SIGINT, signal.default_int_handler)
mode, calls = sys.argv[3], {"n": 0}
loss, save_state = train.Trainer._loss, accelerate.Accelerator.save_state

def loss_then_signal(self, batch):
    calls["n"] += 1
    if calls["n"] == 7:  # the third batch of the second epoch (4 batches per epoch)
        os.kill(os.getpid(), signal.SIGTERM if mode == "sigterm" else signal.SIGINT)
    return loss(self, batch)

def save_state_with_a_second_ctrl_c(self, *args, **kwargs):
    if mode == "double-ctrl-c" and calls["n"] >= 7:
        os.kill(os.getpid(), signal.SIGINT)  # the impatient second Ctrl-C, while the state is being written
    return save_state(self, *args, **kwargs)

train.Trainer._loss = loss_then_signal
accelerate.Accelerator.save_state = save_state_with_a_second_ctrl_c
from qgn.cli import main
sys.exit(main(["train", "--config", sys.argv[1], "--output-dir", sys.argv[2], "--no-progress"]))
"""


@pytest.mark.parametrize("mode, code, said", [("sigterm", 143, "terminated"), ("double-ctrl-c", 130, "interrupted")])
def test_sigterm_and_a_second_ctrl_c_during_the_save_leave_a_resumable_state(
    bench, straight_run, tmp_path, mode, code, said
):
    # Real signals through the real handlers, in a subprocess, with no periodic checkpoint: SIGTERM
    # used to save nothing (exit 143, up to 10 minutes lost); a second Ctrl-C mid-save left an
    # empty checkpoint.tmp and "nothing to resume".
    import subprocess
    import sys

    config = tmp_path / "run.yaml"
    tiny_settings(bench, checkpoint_every_steps=0, checkpoint_every_minutes=0).save(config)
    script = tmp_path / "stop.py"  # not signal.py: it would shadow the standard module
    script.write_text(SIGNAL_IN_TRAINING)
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, str(script), str(config), str(run), mode], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == code, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last == f"qgn train: {said}; the training state is saved; continue with: qgn train --resume {run}"
    if mode == "double-ctrl-c":
        assert "still saving the training state" in done.stderr
    assert not (run / "checkpoint.tmp").exists()
    state = json.loads((run / "checkpoint/trainer_state.json").read_text())
    assert (state["epoch"], state["batches_done"], state["global_step"]) == (1, 2, 6)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    _assert_same_run(straight_run, run)


def test_a_kill_between_the_renames_of_a_save_is_recovered(trained_run, tmp_path, capsys):
    # SIGKILL cannot be held: killed after the old state was moved aside and before the new one
    # was moved in, the run has checkpoint.old and a complete checkpoint.tmp, and no checkpoint/.
    import shutil

    run = _copy_run(trained_run, tmp_path / "run")
    shutil.copytree(run / "checkpoint", run / "checkpoint.tmp")
    (run / "checkpoint").rename(run / "checkpoint.old")
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert (run / "checkpoint/trainer_state.json").is_file() and not (run / "checkpoint.tmp").exists()


def test_resume_names_the_missing_file_in_a_whole_sentence(trained_run, tmp_path, capsys):
    import shutil

    run = _copy_run(trained_run, tmp_path / "run")
    (run / "checkpoint/model.safetensors").unlink()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"qgn train: error: cannot resume: {run}/checkpoint/model.safetensors (the model weights) is "
        "missing; nothing was changed: restore it, or start a new run"
    )
    run = _copy_run(trained_run, tmp_path / "run2")
    _truncate(run / "checkpoint/optimizer.bin")
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        f"{run}/checkpoint/optimizer.bin is truncated or overwritten; nothing was changed: restore "
        "the file, or start a new run"
    ), err
    run = _copy_run(trained_run, tmp_path / "run3")
    shutil.rmtree(run / "checkpoint")
    (run / "checkpoint.tmp").mkdir()  # stopped while saving the first state, before this fix
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    assert "stopped before its first training state was saved" in capsys.readouterr().err


def test_best_checkpoint_is_the_best_dev_epoch_not_the_last(bench, tmp_path, monkeypatch):
    # Scripted dev scores 10, 40, 20: the kept model must be epoch 2's weights.
    scripted = iter([10.0, 40.0, 20.0])
    weights_at_eval = []

    def fake_evaluate(self, model, posts, loader, split):
        weights_at_eval.append(
            {k: v.detach().clone() for k, v in self.accelerator.unwrap_model(model).state_dict().items()}
        )
        f1 = next(scripted)
        return {
            m: {"precision": f1, "recall": f1, "f1": f1, "tp": 0, "n_pred": 0, "n_gold": 0}
            for m in ("GMNER", "MNER", "EEG")
        }

    monkeypatch.setattr(Trainer, "evaluate", fake_evaluate)
    run = tmp_path / "run"
    final = run_training(tiny_settings(bench, epochs=3), run, progress=False)
    assert final["best_epoch"] == 2
    assert json.loads((run / "checkpoint/trainer_state.json").read_text())["best_epoch"] == 2
    best = load_file(str(run / "best" / "model.safetensors"))
    differs = 0
    for name, value in best.items():
        torch.testing.assert_close(value, weights_at_eval[1][name], rtol=0, atol=0, msg=name)
        differs += not torch.equal(value, weights_at_eval[2][name])
    assert differs, "epochs 2 and 3 must have different weights for the test to mean anything"


def _copy_run(run: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run, to)
    return to


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_corrupt_checkpoint_files_are_named(bench, trained_run, tmp_path, capsys):
    import qgn

    run = _copy_run(trained_run, tmp_path / "run")
    _truncate(run / "best" / "model.safetensors")
    with pytest.raises(QGNError, match=r"best/model.safetensors is corrupt or truncated"):
        qgn.load(run / "best")
    image = next((bench / "images").glob("*.jpg"))
    assert main(["predict", "--checkpoint", str(run / "best"), "--text", "Paris", "--image", str(image)]) == 2
    assert "model.safetensors is corrupt or truncated" in capsys.readouterr().err
    assert (
        main(
            ["evaluate", "--checkpoint", str(run / "best"), "--data", str(bench), "--image-dir", str(bench / "images")]
        )
        == 2
    )
    assert "model.safetensors is corrupt or truncated" in capsys.readouterr().err
    # resume: the training state's files, then best/, are checked before any epoch runs
    state = json.loads((run / "checkpoint/trainer_state.json").read_text())
    state["epoch"] = 2  # one epoch left to run
    (run / "checkpoint/trainer_state.json").write_text(json.dumps(state))
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    assert "best/model.safetensors is corrupt or truncated" in capsys.readouterr().err
    for name in ("optimizer.bin", "model.safetensors"):
        broken = _copy_run(trained_run, tmp_path / f"broken-{name}")
        target = next((broken / "checkpoint").glob(name.replace(".", "*.")))
        _truncate(target)
        assert main(["train", "--resume", str(broken), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "cannot resume: the training state is unreadable" in err and str(target) in err, err


def test_a_best_model_that_does_not_load_never_replaces_the_previous_one(trained_run, tmp_path, monkeypatch):
    from qgn.engine.settings import load_run_file
    from qgn.modeling import QGNModel

    run = _copy_run(trained_run, tmp_path / "run")
    before = (run / "best" / "model.safetensors").read_bytes()
    trainer = Trainer(settings_from_dict(load_run_file(str(run / "config.yaml"))), run, resume=True, progress=False)
    save = QGNModel.save_pretrained

    def short_write(self, folder, **kwargs):  # a full disk: the weights file comes out short
        save(self, folder, **kwargs)
        _truncate(Path(folder) / "model.safetensors")

    monkeypatch.setattr(QGNModel, "save_pretrained", short_write)
    with pytest.raises(QGNError, match="corrupt or truncated"):
        trainer._save_model(run / "best")
    assert (run / "best" / "model.safetensors").read_bytes() == before
    QGNModel.from_pretrained(run / "best")


def test_bad_settings_and_devices_are_one_clear_line(bench, trained_run, tmp_path, capsys):
    for setting, message in (
        ("train.epochs=abc", "train.epochs must be an integer, got 'abc'"),
        ("train.epochs=0", "train.epochs must be at least 1"),
        ("train.lr=fast", "train.lr must be a number"),
    ):
        assert main(["demo", "--output-dir", str(tmp_path / "demo"), "--set", setting]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "demo").exists(), "a bad setting fails before any work"
    if not torch.cuda.is_available():
        image = str(next((bench / "images").glob("*.jpg")))
        assert (
            main(
                [
                    "predict",
                    "--checkpoint",
                    str(trained_run / "best"),
                    "--text",
                    "Paris",
                    "--image",
                    image,
                    "--device",
                    "cuda",
                ]
            )
            == 2
        )
        assert "no usable CUDA GPU; use --device cpu" in capsys.readouterr().err


def test_broken_pipe_ends_quietly(bench, trained_run, tmp_path):
    import subprocess
    import sys

    # `qgn predict ... | head -c 1`: the reader leaves early; no BrokenPipeError traceback
    posts = tmp_path / "posts.jsonl"
    image = str(next((bench / "images").glob("*.jpg")))
    posts.write_text(
        "".join(json.dumps({"id": str(i), "text": "Anna in Paris " * 20, "image": image}) + "\n" for i in range(300))
    )
    cmd = (
        f"{sys.executable} -m qgn.cli predict --checkpoint {trained_run / 'best'} --input {posts} "
        "--score-threshold 0 | head -c 1"
    )
    done = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr[-2000:]


def test_ctrl_c_is_one_line_and_exit_130(trained_run, tmp_path, monkeypatch, capsys):
    run = _copy_run(trained_run, tmp_path / "run")

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train", interrupted)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 130
    assert capsys.readouterr().err.strip().endswith("qgn train: interrupted")


def test_posts_skipped_for_missing_images_are_counted_in_the_results(bench, tmp_path, capsys):
    import shutil

    from qgn.data import read_dataset

    data = tmp_path / "data"
    shutil.copytree(bench, data)
    test = read_dataset(str(data), split="test")
    gone = next(p for p in test if p.entities)
    (data / "images" / f"{gone.id}.jpg").unlink()
    config = tmp_path / "run.yaml"
    settings = tiny_settings(data, epochs=1, tune_thresholds=False)
    settings.data.image_dir, settings.data.missing_images = str(data / "images"), "skip"
    settings.save(config)
    assert main(["train", "--config", str(config), "--output-dir", str(tmp_path / "run"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    final = json.loads((tmp_path / "run" / "final_metrics.json").read_text())
    assert final["skipped_for_missing_images"]["test"] == {"posts": 1, "entities": len(gone.entities)}
    assert final["skipped_for_missing_images"]["dev"] == {"posts": 0, "entities": 0}
    assert final["test"]["MNER"]["n_gold"] == sum(len(p.entities) for p in test) - len(gone.entities)
    assert f"test skipped 1 posts without a usable image ({len(gone.entities)} gold entities)" in printed


def test_relative_data_paths_are_stored_absolute_and_resume_from_elsewhere(bench, tmp_path, monkeypatch):
    import shutil

    import yaml

    shutil.copytree(bench, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    settings = tiny_settings(Path("data"), epochs=1, tune_thresholds=False)
    settings.data.image_dir = "data/images"
    run_training(settings, "run", progress=False)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]
    assert saved["path"] == str(tmp_path / "data") and saved["image_dir"] == str(tmp_path / "data" / "images")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--resume", str(tmp_path / "run"), "--no-progress"]) == 0


def test_existing_run_is_not_overwritten(bench, trained_run):
    with pytest.raises(QGNError, match="--resume"):
        Trainer(tiny_settings(bench), trained_run)


def test_evaluate_checkpoint_matches_standalone_scorer(bench, trained_run, tmp_path, capsys):
    preds = tmp_path / "preds.jsonl"
    common = ["--data", str(bench), "--split", "test", "--json"]
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(trained_run / "best"),
                "--image-dir",
                str(bench / "images"),
                "--pred-out",
                str(preds),
                *common,
            ]
        )
        == 0
    )
    from_model = json.loads(capsys.readouterr().out)
    assert main(["evaluate", "--pred", str(preds), *common]) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert from_model["GMNER"]["n_pred"] > 0, "the comparison needs predictions"
    for metric in ("GMNER", "MNER", "EEG"):
        assert from_model[metric] == from_file[metric]


def test_evaluate_checkpoint_never_falls_back_to_blank_images_silently(bench, trained_run, tmp_path, capsys):
    common = ["evaluate", "--checkpoint", str(trained_run / "best"), "--data", str(bench), "--split", "test"]
    assert main(common) == 2
    assert "is an image model: give --image-dir DIR" in capsys.readouterr().err
    assert main([*common, "--no-images", "--json", "--pred-out", str(tmp_path / "blank.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == "none"
    assert main([*common, "--no-images"]) == 0
    assert "images: none (--no-images)" in capsys.readouterr().out
    assert (
        main([*common, "--image-dir", str(bench / "images"), "--json", "--pred-out", str(tmp_path / "seen.jsonl")]) == 0
    )
    assert json.loads(capsys.readouterr().out)["images"] == "images"
    # the blank run really ran on other pixels: the boxes differ
    boxes = lambda name: [  # noqa: E731
        e["box"] for line in (tmp_path / name).read_text().splitlines() for e in json.loads(line)["entities"]
    ]
    assert boxes("blank.jsonl") != boxes("seen.jsonl")


def test_thresholds_chosen_on_dev_are_stored_in_the_checkpoint_and_used(bench, trained_run, tmp_path, capsys):
    from qgn.engine.thresholds import THRESHOLD_FIELDS, current_thresholds
    from qgn.modeling import QGNConfig

    final = json.loads((trained_run / "final_metrics.json").read_text())
    chosen, default = final["thresholds"]["chosen"], final["thresholds"]["default"]
    # the run's own settings are the defaults (tiny_settings sets score_threshold 0)
    assert set(chosen) == set(THRESHOLD_FIELDS) and default == {
        "score_threshold": 0.0,
        "no_target_threshold": 0.5,
        "remove_overlaps": False,
    }
    assert current_thresholds(QGNConfig.load(trained_run / "best" / "config.json")) == chosen
    # never worse on dev than the defaults (they are in the search and win ties)
    assert final["dev"]["GMNER"]["f1"] >= final["with_default_thresholds"]["dev"]["GMNER"]["f1"]
    # `qgn evaluate --checkpoint` predicts with the stored thresholds: it reproduces the final test figures
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(trained_run / "best"),
                "--image-dir",
                str(bench / "images"),
                "--data",
                str(bench),
                "--split",
                "test",
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert final["test"]["GMNER"]["n_pred"] > 0, "the comparison needs predictions"
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
    result = tune_thresholds(PostProcessor(config), config, [post], candidates, split="dev")
    assert result["default_f1"] == pytest.approx(200 / 3)  # LOC right, PER dropped: 1 of 1 predicted, 2 gold
    assert result["f1"] == 100.0
    chosen = result["thresholds"]
    assert chosen["score_threshold"] <= 0.2 and 0.45 < chosen["no_target_threshold"] <= 0.65
    # nothing to gain: the defaults stay
    easy = {"p": [Candidate(0, 1, "PER", 0.9, box, 0.1), Candidate(2, 3, "LOC", 0.9, None, 0.9)]}
    assert tune_thresholds(PostProcessor(config), config, [post], easy, split="dev")["thresholds"] == {
        "score_threshold": 0.3,
        "no_target_threshold": 0.5,
        "remove_overlaps": False,
    }


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
    assert (
        main(["evaluate", "--data", str(bench), "--split", "test", "--pred", str(tmp_path / "p.jsonl"), "--json"]) == 0
    )
    breakdown = json.loads(capsys.readouterr().out)["breakdown"]
    assert breakdown["boxless_with_box"]["count"] == 1 and breakdown["correct"]["count"] == 0
    assert sum(breakdown[k]["count"] for k in breakdown if k != "spurious") == n_gold


def test_gold_predictions_score_100(bench, tmp_path, capsys):
    from qgn.data import read_dataset
    from qgn.data.records import Prediction
    from qgn.metrics import write_predictions

    posts = read_dataset(str(bench), split="test")
    gold = {
        p.id: [Prediction(e.start, e.end, e.type, e.boxes[0] if e.boxes else None, 1.0) for e in p.entities]
        for p in posts
    }
    write_predictions(gold, tmp_path / "gold.jsonl")
    assert (
        main(["evaluate", "--data", str(bench), "--split", "test", "--pred", str(tmp_path / "gold.jsonl"), "--json"])
        == 0
    )
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
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(trained_run / "best"),
                "--image",
                str(image),
                "--text",
                text,
                "--json",
                "--draw",
                str(drawn),
                "--score-threshold",
                "0",
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed["entities"] == entities
    assert drawn.stat().st_size > 0

    batch = tmp_path / "posts.jsonl"
    batch.write_text(
        json.dumps({"id": "a", "text": text, "image": str(image)})
        + "\n"
        + json.dumps({"id": "b", "text": "Paris", "image": str(image)})
        + "\n"
    )
    out = tmp_path / "out.jsonl"
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(trained_run / "best"),
                "--input",
                str(batch),
                "--output",
                str(out),
                "--score-threshold",
                "0",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b"]
    # batched, each post gets what it gets alone (padding and batching change nothing)
    assert rows[0]["entities"] == entities
    alone = predictor.predict(str(image), "Paris")
    assert alone and rows[1]["entities"] == alone


def test_predict_with_tokens_scores_like_evaluate_checkpoint(bench, trained_run, tmp_path, capsys):
    from qgn.data import read_dataset

    posts = read_dataset(str(bench), split="test", image_dir=str(bench / "images"))
    batch = tmp_path / "test.jsonl"
    batch.write_text("".join(json.dumps({"id": p.id, "tokens": p.tokens, "image": p.image_path}) + "\n" for p in posts))
    preds = tmp_path / "preds.jsonl"
    assert (
        main(["predict", "--checkpoint", str(trained_run / "best"), "--input", str(batch), "--output", str(preds)]) == 0
    )
    assert main(["evaluate", "--pred", str(preds), "--data", str(bench), "--split", "test", "--json"]) == 0
    from_predict = json.loads(capsys.readouterr().out)
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(trained_run / "best"),
                "--data",
                str(bench),
                "--split",
                "test",
                "--image-dir",
                str(bench / "images"),
                "--json",
            ]
        )
        == 0
    )
    from_checkpoint = json.loads(capsys.readouterr().out)
    assert from_checkpoint["GMNER"]["n_pred"] > 0
    for metric in ("GMNER", "MNER", "EEG"):
        assert from_predict[metric] == from_checkpoint[metric], metric
    row = json.loads(preds.read_text().splitlines()[0])
    for e in row["entities"]:
        assert e["text"] == " ".join(posts[0].tokens[e["start"] : e["end"]])


def test_predict_input_bad_lines_are_named_and_the_rest_written(bench, trained_run, tmp_path, capsys):
    image = next((bench / "images").glob("*.jpg"))
    lines = [
        {"id": "a", "text": "Anna in Paris", "image": str(image)},
        {"id": "b", "text": "   "},
        {"id": "c", "text": "Paris", "image": "missing.jpg"},
        "not json",
        {"id": "d", "tokens": ["Blue", "Comets"], "image": str(image)},
        {"id": "e", "tokens": "Blue Comets"},
    ]
    batch = tmp_path / "posts.jsonl"
    batch.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    out = tmp_path / "out.jsonl"
    assert (
        main(["predict", "--checkpoint", str(trained_run / "best"), "--input", str(batch), "--output", str(out)]) == 1
    )
    err = capsys.readouterr().err
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["a", "d"]
    for number, words in ((2, "empty text"), (3, "not found"), (4, "not valid JSON"), (6, "tokens must be")):
        assert f"posts.jsonl:{number}: " in err and words in err, (number, err)
    assert "4 lines failed" in err
    batch.write_text(json.dumps({"id": "a", "text": "x"}) + "\n" + json.dumps({"id": "a", "text": "y"}) + "\n")
    assert main(["predict", "--checkpoint", str(trained_run / "best"), "--input", str(batch)]) == 2
    assert "posts.jsonl:2: id 'a' repeats the post of line 1" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(trained_run / "best"), "--input", str(batch), "--draw", "x.png"]) == 2
    assert "--draw and --image are for one post" in capsys.readouterr().err
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(trained_run / "best"),
                "--text",
                "Paris",
                "--image",
                str(image),
                "--draw",
                str(tmp_path / "picture"),
            ]
        )
        == 2
    )
    assert "ending in .png or .jpg" in capsys.readouterr().err


def test_predict_rejects_bad_input(bench, trained_run, tmp_path, caplog):
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
    image = next((bench / "images").glob("*.jpg"))
    with caplog.at_level("WARNING"):
        entities = qgn.load(trained_run / "best", score_threshold=0.0).predict(str(image), long_text)
    # truncated with a warning, not an error; what is predicted lies in the words that were kept
    assert "longer than max_text_length" in caplog.text and "truncated at inference" in caplog.text
    assert entities and all(0 <= e["start"] < e["end"] <= 500 for e in entities)
    assert all(long_text[e["char_start"] : e["char_end"]] == e["text"] for e in entities)


def test_demo_runs_end_to_end_and_prints_both_tables(tmp_path, capsys, caplog):
    """`qgn demo` at toy size: data, training, test table, text-only baseline, picture, result file."""
    from PIL import Image

    from qgn.data import read_dataset

    out = tmp_path / "demo"
    assert (
        main(["demo", "--output-dir", str(out), "--train-posts", "48", "--set", "train.epochs=1", "--no-progress"]) == 0
    )
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

    # Re-runs: the same settings continue (nothing left to train), other settings are refused with
    # the flag that helps, and --overwrite starts afresh with the new settings.
    common = ["demo", "--output-dir", str(out), "--train-posts", "48", "--no-progress"]
    caplog.set_level("INFO")
    assert main([*common, "--set", "train.epochs=1"]) == 0
    assert "continuing the demo run" in caplog.text
    assert len((out / "run" / "metrics.jsonl").read_text().splitlines()) == 1
    capsys.readouterr()
    assert main([*common, "--set", "train.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert "other settings (train.epochs: 1 -> 2)" in err and "--overwrite" in err and "overwrite=True" not in err
    assert main([*common[:4], "40", *common[5:], "--set", "train.epochs=1"]) == 2
    assert "rerun with --overwrite" in capsys.readouterr().err
    assert main([*common, "--set", "train.epochs=2", "--overwrite"]) == 0
    assert [json.loads(line)["epoch"] for line in (out / "run" / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    import yaml

    assert yaml.safe_load((out / "run" / "config.yaml").read_text())["train"]["epochs"] == 2


@pytest.mark.parametrize("name", ["twitter_gmner", "twitter_fmnerg"])
def test_paper_configs_keep_every_lever_beyond_the_paper_off(name):
    from qgn.engine.settings import load_run_file
    from qgn.modeling.configuration_qgn import QGNConfig

    model, default = settings_from_dict(load_run_file(name)).model, QGNConfig()
    levers = (
        "lambda_align",
        "lambda_align_words",
        "align_presence",
        "align_box_prior",
        "box_refine",
        "box_refine_pixels",
        "pixel_refine_scale",
        "pixel_patch_branch",
        "pixel_patch_branch_width",
        "pixel_patch_branch_pool",
        "bio_loss_weight",
        "span_proposals",
        "aux_loss",
        "aux_one_to_many",
        "cost_span",
        "cost_l1",
        "cost_giou",
        "weight_ce",
    )
    # notarget_unmatched_weight is 0.0 there, the paper's L_nt (tests/test_paper_configs.py)
    assert {k: getattr(model, k) for k in levers} == {k: getattr(default, k) for k in levers}
    assert not default.box_refine and default.lambda_align == 0 and default.aux_one_to_many == 1
    assert not default.box_refine_pixels and default.bio_loss_weight == 0 and default.span_proposals == 0


def test_pixel_cache_is_skipped_with_a_warning_when_memory_is_short(bench, monkeypatch, caplog):
    from qgn.data import pipeline, read_dataset
    from qgn.data.pipeline import ImageTransform
    from qgn.engine import run_parts

    free = pipeline.available_memory()
    assert free is None or free > 0
    settings = tiny_settings(bench)
    settings.model.box_refine_pixels = True
    settings.model.pixel_refine_scale = 2  # the cache holds the input's pixels, larger than the ViT's
    settings.data.cache_images = True
    posts = read_dataset(str(bench), "dev", image_dir=str(bench / "images"))
    tokenizer = run_parts.build_tokenizer(settings, posts)
    side = settings.model.input_image_size
    assert side == 2 * settings.model.image_size
    per_post = 13 * side * side  # float32 pixels and a bool mask
    transform = ImageTransform(side, geometry=settings.model.image_geometry)

    def loader():
        return run_parts.make_loader(posts, tokenizer, settings, transform, 4, False)

    monkeypatch.setattr(pipeline, "available_memory", lambda: 2 * per_post * len(posts))
    assert loader().dataset._pixels == {}, "half the free memory holds the cache: cached"
    monkeypatch.setattr(pipeline, "available_memory", lambda: 2 * per_post * len(posts) - 2)
    assert loader().dataset._pixels is None, "one byte short of half: not cached"
    monkeypatch.setattr(pipeline, "available_memory", lambda: per_post * len(posts))
    with caplog.at_level("WARNING", logger="qgn.data.pipeline"):
        assert loader().dataset._pixels is None
    assert "is not cached" in caplog.text and f"{len(posts)} posts at {side} px" in caplog.text
    monkeypatch.setattr(pipeline, "available_memory", lambda: None)  # a system that does not say
    assert loader().dataset._pixels == {}
    settings.data.cache_images = False
    assert loader().dataset._pixels is None
