"""``qgn train``: the paper's recipe on HuggingFace accelerate (one GPU, several GPUs, several nodes, CPU).

Run directory layout::

    DIR/config.yaml          resolved run settings (model + data + train)
    DIR/run_info.json        git revision, qgn/torch versions, world size, start time
    DIR/metrics.jsonl        one line per epoch: train losses, dev GMNER/MNER/EEG, lr, time
    DIR/checkpoint/          last training state (model, optimizer, scheduler, scaler, RNG of every
                             process) + trainer_state.json (epoch, step, best so far): --resume
    DIR/best/                the model with the best dev GMNER micro F1 (a `qgn.load`-able folder)
    DIR/final_metrics.json   dev and test metrics of that best checkpoint only, with the post-processing
                         thresholds chosen on dev (stored in best/config.json) and with the defaults

Selection is on dev only (the checkpoint, then its thresholds); the test split is scored once per
reported threshold setting, with the selected checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import torch

from qgn.engine.final_scoring import metrics_summary, score_selected
from qgn.engine.run_parts import (
    build_tokenizer,
    make_loader,
    make_optimizer,
    make_scheduler,
    parameter_groups,
    read_split,
)
from qgn.engine.safe_save import Terminated, _atomic_replace, _raise_terminated, _signals_held, corrupt_files
from qgn.engine.settings import RunSettings, resolve_settings, settings_from_dict
from qgn.errors import QGNError

logger = logging.getLogger(__name__)


class TrainingDiverged(QGNError):
    """The loss became NaN or infinite."""


# ----------------------------------------------------------------------------- helpers
def git_revision() -> str:
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if rev.returncode != 0:
        return "unknown"
    return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


# ----------------------------------------------------------------------------- trainer
class Trainer:
    """Owns one run: data, model, optimisation loop, evaluation, checkpoints and logs."""

    def __init__(self, settings: RunSettings, output_dir: str | Path, resume: bool = False, progress: bool = True):
        from accelerate import Accelerator, DataLoaderConfiguration
        from accelerate.utils import set_seed

        self.settings, self.output_dir, self.progress = settings.with_absolute_paths(), Path(output_dir), progress
        # accelerate logs every checkpoint file at INFO; our own log says what matters.
        logging.getLogger("accelerate").setLevel(logging.WARNING)
        train = settings.train
        from qgn.engine.precision import resolve_precision

        mixed = resolve_precision(train.mixed_precision, "cuda" if torch.cuda.is_available() else "cpu", "training")
        from accelerate.state import AcceleratorState

        state = AcceleratorState._shared_state
        if state and state.get("_mixed_precision") != mixed and AcceleratorState().num_processes == 1:
            # accelerate keeps one state per process and refuses another precision later; a second run
            # in the same Python session (a notebook, a test) may want one. The process group, if any, stays.
            AcceleratorState._reset_state(reset_partial_state=False)
        from accelerate import DistributedDataParallelKwargs

        from qgn.engine.ddp import parameters_left_unused

        # Only configs that leave parameters out of the loss (Table IV's "L_pred only", ...) pay for
        # DDP's per-step search for unused parameters; without it their second step fails.
        self.unused_parameters = parameters_left_unused(settings.model)
        self.accelerator = Accelerator(
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)]
            if self.unused_parameters
            else None,
            # Without CUDA, accelerate only runs several processes (gloo) when told it is on CPU.
            cpu=not torch.cuda.is_available(),
            mixed_precision=mixed,
            gradient_accumulation_steps=train.grad_accum_steps,
            # batch_size is the global batch: split over processes, so results do not depend on world size.
            # One shuffling seed on every process (the model seeds are per process), set per epoch:
            # each process takes its slice of the same global batch, and resuming replays the order.
            dataloader_config=DataLoaderConfiguration(
                split_batches=True, use_seedable_sampler=True, data_seed=train.seed
            ),
        )
        acc = self.accelerator
        if acc.num_processes > 1 and self.unused_parameters:
            logger.info("DDP finds unused parameters every step: %s", "; ".join(self.unused_parameters))
        if train.batch_size % acc.num_processes:
            raise QGNError(f"train.batch_size {train.batch_size} must be divisible by {acc.num_processes} processes")
        set_seed(train.seed, device_specific=True)  # seed + process rank
        if train.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False

        self.checkpoint_dir = self.output_dir / "checkpoint"
        if not resume and self.checkpoint_dir.exists():
            raise QGNError(
                f"{self.output_dir} already holds a run; use --resume {self.output_dir} or another --output-dir"
            )
        self.output_dir.mkdir(parents=True, exist_ok=True)

        self._build(resume)

    # -------------------------------------------------------------- construction
    def _build(self, resume: bool) -> None:
        from qgn.data.pipeline import ImageTransform
        from qgn.modeling import build

        s, acc = self.settings, self.accelerator
        self.skipped: dict[str, dict[str, int]] = {}  # posts dropped by missing_images=skip, per split
        self.train_posts = read_split(s, s.data.train_split, skipped=self.skipped)
        self.dev_posts = read_split(s, s.data.dev_split, skipped=self.skipped)
        self.tokenizer = build_tokenizer(s, self.train_posts)
        self.model, self.criterion, self.postprocessor = build(s.model)
        # The encoders' configs are now filled in (loaded from a hub name or a local directory),
        # so the saved settings rebuild the same model without a download.
        self.image_transform = (
            None if s.model.text_only else ImageTransform(s.model.input_image_size, geometry=s.model.image_geometry)
        )

        train_loader = make_loader(
            self.train_posts, self.tokenizer, s, self.image_transform, s.train.batch_size, True, augment=True
        )
        self.train_dataset = train_loader.dataset  # its augmented views follow the epoch
        dev_loader = make_loader(
            self.dev_posts, self.tokenizer, s, self.image_transform, s.train.eval_batch_size, False
        )
        steps_per_epoch = math.ceil(len(train_loader) / s.train.grad_accum_steps)
        self.total_steps = steps_per_epoch * s.train.epochs
        if s.train.max_steps:
            self.total_steps = min(self.total_steps, s.train.max_steps)
        optimizer = make_optimizer(parameter_groups(self.model, s), s.train.weight_decay)
        scheduler = make_scheduler(optimizer, s, self.total_steps)
        self.model, self.optimizer, self.train_loader, self.dev_loader, self.scheduler = acc.prepare(
            self.model, optimizer, train_loader, dev_loader, scheduler
        )
        self.state: dict[str, Any] = {
            "epoch": 0,
            "batches_done": 0,
            "global_step": 0,
            "best_f1": -1.0,
            "best_epoch": None,
            "running": {"sums": {}, "count": 0},
        }
        if resume:
            self._load_checkpoint()
        elif acc.is_main_process:
            s.save(self.output_dir / "config.yaml")
            info = {
                "git_revision": git_revision(),
                "torch": torch.__version__,
                "num_processes": acc.num_processes,
                "mixed_precision": acc.mixed_precision,
                "ddp_find_unused_parameters": bool(self.unused_parameters),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            (self.output_dir / "run_info.json").write_text(json.dumps(info, indent=2) + "\n")
        self.tb = self._tensorboard()
        self._last_save = time.time()  # for checkpoint_every_minutes

    def _tensorboard(self) -> Any:
        if not self.accelerator.is_main_process:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed: the JSON-lines log is enough
            return None
        return SummaryWriter(str(self.output_dir / "tensorboard"))

    # -------------------------------------------------------------- checkpoints
    def _checkpoint_due(self) -> bool:
        """After an optimizer step: every ``checkpoint_every_steps`` steps, or when
        ``checkpoint_every_minutes`` have passed since the last save. Processes decide together
        (the main process's clock, checked every 10 steps), since a save is collective."""
        t, step = self.settings.train, self.state["global_step"]
        if t.checkpoint_every_steps and step % t.checkpoint_every_steps == 0:
            return True
        if not t.checkpoint_every_minutes:
            return False
        acc = self.accelerator
        if acc.num_processes > 1 and step % 10:
            return False
        due = time.time() - self._last_save >= 60 * t.checkpoint_every_minutes
        if acc.num_processes > 1:
            from accelerate.utils import broadcast

            due = bool(broadcast(torch.tensor([int(due)], device=acc.device), from_process=0).item())
        return due

    def _save_checkpoint(self, stopping: bool = False) -> None:
        with _signals_held(stopping):
            self._write_checkpoint()

    def _write_checkpoint(self) -> None:
        self._last_save = time.time()
        acc = self.accelerator
        tmp = self.output_dir / "checkpoint.tmp"
        if acc.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()  # every process has written its random states before tmp is moved
        # The epoch's running loss sums go into the state too, so that the epoch's logged mean after
        # a resume covers its batches from before the stop as well (averaged over processes: the
        # epoch-end mean of per-process means is linear in them).
        running = self.state["running"]
        if running["sums"] and acc.num_processes > 1:
            names = sorted(running["sums"])
            values = acc.reduce(
                torch.tensor([running["sums"][k] for k in names], device=acc.device, dtype=torch.float64),
                reduction="mean",
            )
            running = {"sums": dict(zip(names, values.tolist())), "count": running["count"]}
        if acc.is_main_process:
            state = {**self.state, "running": running}
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n")
            _atomic_replace(tmp, self.checkpoint_dir)
        acc.wait_for_everyone()

    def _recover_checkpoint(self) -> None:
        """A process killed between the two renames of :func:`_atomic_replace` leaves the previous
        state in ``checkpoint.old`` and the new, complete one in ``checkpoint.tmp`` (its
        ``trainer_state.json`` is written last): take the newest complete one back."""
        if (self.checkpoint_dir / "trainer_state.json").is_file() or not self.accelerator.is_main_process:
            return
        for name in ("checkpoint.tmp", "checkpoint.old"):
            found = self.output_dir / name
            if (found / "trainer_state.json").is_file():
                if self.checkpoint_dir.exists():
                    shutil.rmtree(self.checkpoint_dir)
                found.rename(self.checkpoint_dir)
                logger.warning("recovered the training state from %s (the run stopped while saving it)", found)
                return

    def _load_checkpoint(self) -> None:
        self._recover_checkpoint()
        self.accelerator.wait_for_everyone()
        if not (self.checkpoint_dir / "trainer_state.json").is_file():
            early = (
                " (the run stopped before its first training state was saved: start it again without --resume)"
                if (self.output_dir / "checkpoint.tmp").exists()
                else ""
            )
            raise QGNError(f"nothing to resume in {self.output_dir}: no checkpoint/trainer_state.json{early}")
        for pattern, what in (
            ("model*.safetensors", "the model weights"),
            ("optimizer*.bin", "the optimizer state"),
            ("scheduler*.bin", "the learning-rate schedule"),
        ):
            if not any(self.checkpoint_dir.glob(pattern)) and not (
                pattern.startswith("model") and any(self.checkpoint_dir.glob("pytorch_model*.bin"))
            ):
                name = pattern.replace("*", "")
                raise QGNError(
                    f"cannot resume: {self.checkpoint_dir / name} ({what}) is missing; nothing was changed: "
                    "restore it, or start a new run"
                )
        try:
            self.state = json.loads((self.checkpoint_dir / "trainer_state.json").read_text(encoding="utf-8"))
            self.accelerator.load_state(str(self.checkpoint_dir))
        except Exception as err:  # accelerate/torch/safetensors raise many kinds for one bad file
            bad = corrupt_files(self.checkpoint_dir)
            if bad:
                where = ", ".join(str(p) for p in bad)
                raise QGNError(
                    f"cannot resume: the training state is unreadable: {where} is truncated or overwritten; "
                    "nothing was changed: restore the file, or start a new run"
                ) from None
            first = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else "no message"
            raise QGNError(
                f"cannot resume: the training state in {self.checkpoint_dir} is unreadable "
                f"({type(err).__name__}: {first}); nothing was changed: restore it, or start a new run"
            ) from None
        best = self.output_dir / "best"
        if self.state.get("best_epoch") is not None:
            # Found now, not after the remaining epochs (finish() loads it).
            from qgn.modeling import QGNModel

            if not best.is_dir():
                raise QGNError(
                    f"cannot resume: {best} (the best model so far, epoch {self.state['best_epoch']}) is missing"
                )
            QGNModel.from_pretrained(best)
        self.state.setdefault("running", {"sums": {}, "count": 0})  # checkpoints from before it was kept
        logger.info(
            "resuming at epoch %d, batch %d (step %d)",
            self.state["epoch"] + 1,
            self.state["batches_done"],
            self.state["global_step"],
        )

    def _save_model(self, folder: Path) -> None:
        with _signals_held():
            self._write_model(folder)

    def _write_model(self, folder: Path) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            tmp = folder.with_name(folder.name + ".tmp")
            if tmp.exists():
                shutil.rmtree(tmp)
            model = acc.unwrap_model(self.model)
            model.save_pretrained(
                tmp, tokenizer=self.tokenizer, image_processor=self.image_transform, data_path=self.settings.data.path
            )
            # Verified loadable before it replaces the previous best (a full disk writes short files).
            from qgn.modeling import QGNModel

            QGNModel.from_pretrained(tmp)
            _atomic_replace(tmp, folder)
        acc.wait_for_everyone()

    # -------------------------------------------------------------- loop
    def _loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from qgn.data.pipeline import model_inputs

        outputs = self.model(**model_inputs(batch))
        # Matching costs and losses in fp32 even under bf16/fp16 autocast (the criterion casts).
        with torch.autocast(device_type=self.accelerator.device.type, enabled=False):
            return self.criterion(outputs, batch["targets"])

    def evaluate(self, model: torch.nn.Module, posts: list, loader: Any, split: str) -> dict[str, Any]:
        """GMNER / MNER / EEG of ``model`` on one split."""
        from qgn.engine.inference import predict_loader
        from qgn.metrics import score

        predictions = predict_loader(
            model, self.postprocessor, loader, self.accelerator, description=split, progress=self.progress
        )
        return metrics_summary(score(posts, predictions))

    def _log_epoch(self, record: dict[str, Any]) -> None:
        if not self.accelerator.is_main_process:
            return
        with open(self.output_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.get("train", {}).items():
                self.tb.add_scalar(f"train/{key}", value, record["step"])
            for metric, row in record.get("dev", {}).items():
                self.tb.add_scalar(f"dev/{metric}_f1", row["f1"], record["step"])

    def train(self) -> dict[str, Any]:
        from tqdm.auto import tqdm

        s, acc, state = self.settings, self.accelerator, self.state
        show = self.progress and acc.is_local_main_process
        bar = tqdm(
            total=self.total_steps, initial=state["global_step"], desc="train", disable=not show, dynamic_ncols=True
        )
        stop = False
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
        try:
            for epoch in range(state["epoch"], s.train.epochs):
                stop = self._train_epoch(epoch, bar)
                if stop:
                    break
        except KeyboardInterrupt as interrupt:
            with _signals_held(stopping=True):  # from the first instant: a second Ctrl-C waits for the save
                bar.close()
                what = "terminated (SIGTERM)" if isinstance(interrupt, Terminated) else "interrupted"
                logger.warning(
                    "%s: saving the training state to %s (a few seconds; a second Ctrl-C waits for it)",
                    what,
                    self.checkpoint_dir,
                )
                self._save_checkpoint(stopping=True)
            interrupt.hint = f"the training state is saved; continue with: qgn train --resume {self.output_dir}"  # type: ignore[attr-defined]  # qgn.cli prints it
            logger.warning(interrupt.hint)  # type: ignore[attr-defined]
            raise
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        bar.close()
        return self.finish()

    def _train_epoch(self, epoch: int, bar: Any) -> bool:
        s, acc, state = self.settings, self.accelerator, self.state
        started = time.time()
        self.train_loader.set_epoch(epoch)
        self.train_dataset.set_epoch(epoch)
        loader = self.train_loader
        if state["batches_done"]:
            loader = acc.skip_first_batches(self.train_loader, state["batches_done"])
        running = state["running"]  # carried over from before a resume, else empty
        sums: dict[str, float] = running["sums"]
        self.model.train()
        for batch in loader:
            with acc.accumulate(self.model):
                loss, parts = self._loss(batch)
                if not torch.isfinite(loss):
                    shown = ", ".join(f"{k}={v.item():.4g}" for k, v in parts.items())
                    raise TrainingDiverged(
                        f"non-finite loss at epoch {epoch + 1}, step {state['global_step'] + 1}: {shown}"
                    )
                acc.backward(loss)
                if acc.sync_gradients and s.train.max_grad_norm:
                    acc.clip_grad_norm_(self.model.parameters(), s.train.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            sums["loss"] = sums.get("loss", 0.0) + loss.item()
            running["count"] += 1
            state["batches_done"] += 1
            if acc.sync_gradients:
                state["global_step"] += 1
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4f}")
                if self._checkpoint_due():
                    self._save_checkpoint()
                if s.train.max_steps and state["global_step"] >= s.train.max_steps:
                    break
        stop = bool(s.train.max_steps and state["global_step"] >= s.train.max_steps)
        last = stop or epoch + 1 == s.train.epochs
        names = sorted(sums)
        # Each process saw its share of every batch: average the per-process means.
        means = torch.tensor([sums[k] / max(running["count"], 1) for k in names], device=acc.device)
        means = acc.reduce(means, reduction="mean") if acc.num_processes > 1 else means
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": state["global_step"],
            "lr": self.scheduler.get_last_lr()[0],
            "train": dict(zip(names, means.tolist())),
        }
        if last or (epoch + 1) % s.train.eval_every_epochs == 0:
            dev = self.evaluate(self.model, self.dev_posts, self.dev_loader, "dev")
            record["dev"] = dev
            selected = dev[s.train.select_metric]["f1"]
            if selected > state["best_f1"]:
                state["best_f1"], state["best_epoch"] = selected, epoch + 1
                self._save_model(self.output_dir / "best")
        record["seconds"] = round(time.time() - started, 2)
        self._log_epoch(record)
        state["epoch"], state["batches_done"], state["running"] = epoch + 1, 0, {"sums": {}, "count": 0}
        self._save_checkpoint()
        return stop

    def finish(self) -> dict[str, Any]:
        """Thresholds chosen on dev and the final dev / test scores of the best-on-dev model
        (:func:`qgn.engine.final_scoring.score_selected`)."""
        return score_selected(self)


def run_training(settings: RunSettings, output_dir: str | Path, resume: bool = False, progress: bool = True) -> dict:
    return Trainer(settings, output_dir, resume=resume, progress=progress).train()


# ----------------------------------------------------------------------------- CLI
def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="train QGN (the paper's recipe, on accelerate)",
        description="Train QGN; evaluate on dev after every epoch, keep the best dev GMNER F1 checkpoint, "
        "then score it on test. Launch on several GPUs/nodes with `accelerate launch -m qgn.cli train ...`.",
    )
    p.add_argument("--config", help="run YAML file, or a shipped name (twitter_gmner, twitter_fmnerg, demo)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a setting, e.g. --set train.lr=1e-4 (repeatable)",
    )
    p.add_argument("--output-dir", help="run directory (required unless --resume)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR exactly where it stopped")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_main)


def _main(args: Any) -> int:
    import yaml

    if args.resume:
        run_dir = Path(args.resume)
        if args.output_dir and Path(args.output_dir) != run_dir:
            raise QGNError("--resume DIR continues DIR; do not give another --output-dir")
        if not (run_dir / "config.yaml").is_file():
            raise QGNError(f"{run_dir} holds no config.yaml: not a qgn run directory")
        raw = yaml.safe_load((run_dir / "config.yaml").read_text())
        if args.config or args.overrides:
            raise QGNError("--resume uses the run's own config.yaml; drop --config/--set")
        settings = settings_from_dict(raw)
    else:
        if not args.output_dir:
            raise QGNError("--output-dir is required")
        run_dir = Path(args.output_dir)
        settings = resolve_settings(args.config, args.overrides)
    final = run_training(settings, run_dir, resume=bool(args.resume), progress=not args.no_progress)
    from qgn.engine.inference import format_summary

    print(f"best epoch {final['best_epoch']} (selected on {final['selected_on']})")
    print(format_summary({"dev": final["dev"], "test": final["test"]}))
    for split, count in final.get("skipped_for_missing_images", {}).items():
        if count["posts"]:
            print(
                f"note: {split} skipped {count['posts']} posts without a usable image ({count['entities']} gold "
                "entities); the scores above leave them out (data.missing_images=skip)"
            )
    return 0
