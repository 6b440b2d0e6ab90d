"""``qgn reproduce --rehearse``: every planned row at the configured size, for a few steps, before any
GPU hour is spent on the grid.

Per row (in its own process group: ``torch.distributed.run`` with N processes, gloo on the CPU):
build the model, train K optimizer steps on the real data's text and boxes, checkpoint, resume for
one more step, evaluate on a few dev posts; at the end one ``qgn predict`` and one ONNX export of the
full model. Encoders that cannot be loaded here are built from their real architectures with random
weights, and missing images are replaced by placeholders of the images' sizes; both are said loudly.
The table gives each row's steps, first and last loss, seconds per step, peak memory and status,
and the grid's projected cost on named GPUs from the FLOPs counted per step.

    python -m qgn.reproduce.rehearse ROW.yaml ROW_DIR --steps K    # one row (what the parent launches)
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from qgn.errors import QGNError

logger = logging.getLogger(__name__)

RESULT_FILE = "rehearsal.json"
ERROR_FILE = "rehearsal_error.txt"
DEV_POSTS = 8  # "a few posts" of dev and test, whatever the split's size
# bf16 dense peaks from the vendors' data sheets (SXM parts; H200 has H100's compute, more and faster memory).
GPU_BF16_PEAK_TFLOPS = {"H100 SXM": 989.4, "H200 SXM": 989.4}
ASSUMED_UTILIZATION = 0.4  # a projection's assumption, said beside it; benchmarks/gpu.py measures the real one

# The encoders of the paper's configs, by the names the configs give, as architectures (shapes only):
# built with random weights when the named weights cannot be loaded here. bert-base-cased's vocabulary
# has 28,996 word pieces; CLIP ViT-B/32's vision tower is 12 layers of width 768 on 32 px patches of 224 px.
_BERT_BASE = dict(
    model_type="bert",
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    max_position_embeddings=512,
)
TEXT_ARCHITECTURES = {  # the two BERT-base checkpoints differ only in their vocabularies
    "bert-base-cased": {**_BERT_BASE, "vocab_size": 28996},
    "bert-base-uncased": {**_BERT_BASE, "vocab_size": 30522},
}
VISION_ARCHITECTURES = {
    "openai/clip-vit-base-patch32": dict(
        model_type="clip_vision_model",
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=224,
        patch_size=32,
        hidden_act="quick_gelu",
    ),
}


def loud(message: str) -> None:
    """A line the reader must not miss: what the rehearsal does differently from a real run."""
    print(f"!! REHEARSAL: {message}", flush=True)


# ----------------------------------------------------------------------------- encoders
def _loadable(name: str, tokenizer: bool) -> bool:
    """The encoder's config (and tokenizer) load here without a download: a local folder or the cache."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        AutoConfig.from_pretrained(name, local_files_only=True)
        if tokenizer:
            AutoTokenizer.from_pretrained(name, local_files_only=True)
    except Exception:  # noqa: BLE001 - any failure means "not here"
        return False
    return True


def prepare_encoders(raw: dict[str, Any]) -> list[str]:
    """Make ``raw`` (a run dict) buildable offline: where a named encoder cannot be loaded here, set
    its ``*_config`` to the named architecture (random weights) and, for the text side, the word-level
    tokenizer (said loudly). Returns a line for each encoder used as configured."""
    model, data = raw["model"], raw["data"]
    lines = []
    for side, key, known in (
        ("text", "text_config", TEXT_ARCHITECTURES),
        ("vision", "vision_config", VISION_ARCHITECTURES),
    ):
        name = model.get(f"{side}_encoder")
        if model.get("text_only") and side == "vision":
            continue
        if model.get(key):
            lines.append(f"{side} encoder: built from the config's {key} (random weights)")
            continue
        if _loadable(name, tokenizer=side == "text" and data.get("tokenizer") != "words"):
            lines.append(f"{side} encoder: {name}, pretrained weights")
            continue
        if name not in known:
            raise QGNError(
                f"--rehearse: the {side} encoder {name!r} cannot be loaded here and its architecture is "
                f"not known to the rehearsal ({', '.join(known)}); give a local folder with "
                f"--set model.{side}_encoder=DIR"
            )
        model[key] = dict(known[name])
        message = f"{side} encoder {name} cannot be loaded here: built from its architecture with RANDOM weights"
        if side == "text":
            data["tokenizer"] = "words"  # its vocabulary cannot be loaded either: word pieces of the training words
            message += " and a word-level tokenizer of the training text (its vocabulary size, not 28,996)"
        loud(message)
    return lines


# ----------------------------------------------------------------------------- data
def _placeholder(path: Path, size: tuple[int, int]) -> None:
    from PIL import Image

    Image.new("RGB", size, (124, 116, 104)).save(path)  # CLIP's mean colour, flat: cheap to write and to read


def prepare_data(raw: dict[str, Any], folder: Path, train_posts: int) -> dict[str, Any]:
    """The real data's first ``train_posts`` training posts and ``DEV_POSTS`` dev and test posts, as
    JSONL in ``folder`` with their real images where ``data.image_dir`` has them and placeholders of
    the images' sizes (from the xml; the median of the known sizes where it has none) elsewhere.
    Returns the counts, and the full splits' sizes (for the projection)."""
    from qgn.data import read_dataset
    from qgn.data.jsonl import write_jsonl

    data, model = raw["data"], raw["model"]
    folder.mkdir(parents=True, exist_ok=True)
    images = folder / "placeholder-images"
    images.mkdir(exist_ok=True)
    sizes: dict[str, int] = {}
    counts: dict[str, Any] = {"posts": 0, "placeholders": 0}
    wanted = {
        data.get("train_split", "train"): train_posts,
        data.get("dev_split", "dev"): DEV_POSTS,
        data.get("test_split", "test"): DEV_POSTS,
    }
    for split, keep in wanted.items():
        posts = read_dataset(
            data["path"],
            split,
            image_dir=data.get("image_dir"),
            missing_images="text_only",
            fmnerg_xml_dir=data.get("fmnerg_xml_dir"),
            entity_types=model.get("entity_types"),
        )
        sizes[split] = len(posts)
        if len(posts) < keep:
            raise QGNError(
                f"--rehearse: {data['path']} split {split} has {len(posts)} posts, fewer than the {keep} "
                "the rehearsal trains or evaluates on"
            )
        known = [p.image_size for p in posts if p.image_size]
        typical = (
            (int(statistics.median(s[0] for s in known)), int(statistics.median(s[1] for s in known)))
            if known
            else (640, 480)
        )
        chosen = posts[:keep]
        for post in chosen:
            if post.image_path is None:
                post.image_size = tuple(post.image_size or typical)  # type: ignore[assignment]  # (w, h); a list when read from JSON
                path = images / f"{post.id}.png"
                _placeholder(path, post.image_size or typical)
                post.image_path = str(path)
                counts["placeholders"] += 1
        counts["posts"] += len(chosen)
        write_jsonl(chosen, folder / f"{split}.jsonl")
    counts["split_sizes"] = sizes
    return counts


# ----------------------------------------------------------------------------- one row (worker)
class _Probe:
    """Records, around a Trainer's own methods, each step's loss (mean over processes), when each
    step started and when training ended, and the FLOPs of the first step's forward pass and losses.
    (The backward pass is not counted: torch's FLOP counter aborts the process inside DDP's backward
    when DDP looks for unused parameters; a step is taken as 3 x the forward, the usual estimate,
    which docs/benchmarks.md measured at 3.03 x for the full model.)"""

    def __init__(self, trainer: Any, count_flops: bool):
        self.losses: list[float] = []
        self.starts: list[float] = []
        self.trainer, self.end, self.flops = trainer, None, None
        self._counter = None
        acc = trainer.accelerator
        loss_of, evaluate = trainer._loss, trainer.evaluate

        def timed_loss(batch):
            self.starts.append(time.perf_counter())
            if count_flops and len(self.starts) == 1:
                from torch.utils.flop_counter import FlopCounterMode

                self._counter = FlopCounterMode(display=False)
                self._counter.__enter__()
            loss, parts = loss_of(batch)
            if self._counter is not None:  # the forward pass and the losses; backward: see counted_backward
                self._counter.__exit__(None, None, None)
                self.flops, self._counter = self._counter.get_total_flops(), None
            value = loss.detach().float().clone()
            if acc.num_processes > 1:
                value = acc.reduce(value, reduction="mean")
            self.losses.append(float(value))
            return loss, parts

        def timed_evaluate(*args, **kwargs):
            if self.end is None:
                self.end = time.perf_counter()
            return evaluate(*args, **kwargs)

        trainer._loss, trainer.evaluate = timed_loss, timed_evaluate

    def seconds_per_step(self) -> float | None:
        if not self.starts or self.end is None:
            return None
        if len(self.starts) > 1:  # the first step warms caches up: leave it out
            return (self.end - self.starts[1]) / (len(self.starts) - 1)
        return self.end - self.starts[0]


def _peak_memory(acc: Any) -> tuple[int, str]:
    """The largest peak over the processes: GPU memory allocated on CUDA, else resident set size."""
    import torch

    if acc.device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(acc.device), "GPU"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "RSS"  # Linux: KiB
    if acc.num_processes > 1:
        peak = int(acc.gather(torch.tensor([peak], device=acc.device)).max().item())
    return int(peak), kind


def rehearse_row(config_file: Path, row_dir: Path, steps: int) -> dict[str, Any]:
    """K steps, a checkpoint, a resume for one more step and the dev evaluations of one row."""
    import torch

    from qgn.engine.settings import settings_from_dict
    from qgn.engine.train import Trainer

    raw = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    raw["train"]["max_steps"] = steps
    trainer = Trainer(settings_from_dict(raw), row_dir, progress=False)
    acc = trainer.accelerator
    first = _Probe(trainer, count_flops=True)
    trainer.train()
    flops = first.flops
    if flops is not None and acc.num_processes > 1:  # each process counted its share of the global batch
        flops = int(acc.reduce(torch.tensor([float(flops)], device=acc.device), reduction="sum").item())
    flops = None if flops is None else 3 * flops  # forward + backward (see _Probe)
    losses, seconds, processes = first.losses, first.seconds_per_step(), acc.num_processes
    del trainer, first, acc  # the first model and optimizer go before the resumed ones come (peak memory)
    import gc

    gc.collect()
    raw["train"]["max_steps"] = steps + 1
    resumed = Trainer(settings_from_dict(raw), row_dir, resume=True, progress=False)
    second = _Probe(resumed, count_flops=False)
    final = resumed.train()
    if resumed.state["global_step"] != steps + 1:
        raise QGNError(f"the resumed run stopped at step {resumed.state['global_step']}, not {steps + 1}")
    peak, kind = _peak_memory(resumed.accelerator)
    return {
        "steps": steps + 1,
        "losses": losses + second.losses,
        "seconds_per_step": seconds,
        "flops_per_step": flops,
        "peak_memory_bytes": peak,
        "peak_memory_kind": kind,
        "processes": processes,
        "precision": final.get("scored_in"),
        "dev_gmner_f1": final["dev"]["GMNER"]["f1"],
    }


def worker_main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m qgn.reproduce.rehearse")
    parser.add_argument("config", type=Path)
    parser.add_argument("row_dir", type=Path)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    rank = int(os.environ.get("RANK", "0"))
    try:
        result = rehearse_row(args.config, args.row_dir, args.steps)
    except BaseException as err:  # noqa: BLE001 - reported in one line to the parent, then re-raised
        if rank == 0 or not (args.row_dir / ERROR_FILE).exists():
            args.row_dir.mkdir(parents=True, exist_ok=True)
            text = " ".join(f"{type(err).__name__}: {err}".split())[:400]
            (args.row_dir / ERROR_FILE).write_text(text + "\n", encoding="utf-8")
        raise
    if rank == 0:
        (args.row_dir / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # every process is done with its collectives before any leaves (see __main__)
    return 0


# ----------------------------------------------------------------------------- the grid (parent)
def _launch(processes: int, module_args: list[str]) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", *module_args]
    from socket import AF_INET, SOCK_STREAM, socket

    with socket(AF_INET, SOCK_STREAM) as s:  # a free port: a fixed one collides with a parallel run
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(processes),
        "--master_port",
        str(port),
        "-m",
        *module_args,
    ]


def _format_bytes(n: int | None) -> str:
    return "–" if n is None else f"{n / 2**30:.2f} GiB"


def _row_line(name: str, result: dict[str, Any] | None, status: str, wall: float) -> str:
    if result is None:
        return f"| {name} | – | – | – | – | – | {wall:.0f} | {status} |"
    losses = result["losses"]
    sps = result["seconds_per_step"]
    return (
        f"| {name} | {result['steps']} | {losses[0]:.4f} | {losses[-1]:.4f} | "
        f"{'–' if sps is None else f'{sps:.2f}'} | {_format_bytes(result['peak_memory_bytes'])} "
        f"{result['peak_memory_kind']} | {wall:.0f} | {status} |"
    )


def _first_error(log: Path, fallback: str) -> str:
    """The first line of a worker's log that says what went wrong (a process that died without an
    exception of its own leaves only the launcher's report)."""
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        text = line.strip()
        if (
            text.startswith("terminate called")
            or "Killed" in text
            or ("Error" in text.split(":")[0] and "torch.distributed.elastic" not in text)
        ):
            return text[:300]
    return fallback


def _run_tool(cmd: list[str], log: Path) -> tuple[bool, float, str]:
    started = time.time()
    with open(log, "w", encoding="utf-8") as out:
        code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT)
    tail = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return code == 0, time.time() - started, (tail[-1] if tail else f"exit {code}")[:300]


def projection(
    results: dict[str, dict[str, Any]],
    split_sizes: dict[str, int],
    raw: dict[str, Any],
    seeds: int,
    rows_per_key: dict[str, int],
) -> list[str]:
    """The grid's cost on named GPUs from the FLOPs counted per training step (PROJECTION)."""
    train = raw["train"]
    n_train, n_dev = split_sizes.get("train", 0), split_sizes.get("dev", 0)
    batch, epochs = train.get("batch_size", 16), train.get("epochs", 50)
    steps = math.ceil(n_train / (batch * train.get("grad_accum_steps", 1))) * epochs
    total, runs, missing = 0.0, 0, []
    for key, result in results.items():
        flops = result.get("flops_per_step")
        if not flops:
            missing.append(key)
            continue
        forward_per_post = flops / 3 / batch  # training ~ 3 x the forward (docs/benchmarks.md: 3.03 x)
        run = flops * steps + forward_per_post * n_dev * epochs  # training + a dev evaluation per epoch
        total += run * seeds * rows_per_key.get(key, 1)
        runs += seeds * rows_per_key.get(key, 1)
    lines = [
        f"PROJECTION (not a measurement): {len(results) - len(missing)} rows x {seeds} seeds, {n_train} train "
        f"posts / batch {batch} x {epochs} epochs = {steps} steps a run at 3 x the FLOPs counted in the "
        f"first step's forward pass of each row (torch.utils.flop_counter: matrix products and attention), "
        f"plus a dev evaluation ({n_dev} posts) per epoch: {total / 1e15:.1f} PFLOP in all, "
        f"{total / max(runs, 1) / 1e15:.1f} PFLOP a run. The matching, data loading and post-processing run on "
        "the CPU and are not in it: a FLOP-bound lower bound."
    ]
    for gpu, peak in GPU_BF16_PEAK_TFLOPS.items():
        hours = total / (peak * 1e12) / 3600
        lines.append(
            f"  {gpu} (bf16 dense peak {peak:.0f} TFLOP/s): {hours:.2f} GPU-hours for the {runs} runs at 100 % "
            f"of the peak ({hours * 60 / max(runs, 1):.1f} min a run), {hours / ASSUMED_UTILIZATION:.2f} at an "
            f"assumed {ASSUMED_UTILIZATION:.0%} ({hours * 60 / max(runs, 1) / ASSUMED_UTILIZATION:.1f} min a run)"
        )
    if missing:
        lines.append(f"  rows without a FLOP count (left out): {', '.join(missing)}")
    return lines


def rehearse(
    runs: list[Any],
    bases: dict[str, dict[str, Any]],
    root: Path,
    steps: int,
    processes: int,
    seeds: int,
    progress_print: Any = print,
) -> int:
    """Rehearse every run of ``runs`` (one per row: seed 1) under ``processes`` processes; returns the
    exit status (1 when any row failed)."""
    from qgn.reproduce.grid import run_config

    if steps < 1 or processes < 1:
        raise QGNError("--steps and --processes must be at least 1")
    root = root / "rehearsal"
    if root.exists():
        shutil.rmtree(root)  # a rehearsal is never resumed: every row runs again
    root.mkdir(parents=True)
    started = time.time()
    prepared: dict[str, dict[str, Any]] = {}
    counts: dict[str, dict[str, Any]] = {}
    for kind, base in bases.items():
        raw = json.loads(json.dumps(base))
        train = raw["train"]
        if train["batch_size"] % processes or DEV_POSTS % processes:
            raise QGNError(
                f"--processes {processes} must divide train.batch_size {train['batch_size']} and the "
                f"{DEV_POSTS} dev posts"
            )
        for line in prepare_encoders(raw):
            progress_print(f"{kind}: {line}")
        folder = root / f"data-{kind}"
        counts[kind] = prepare_data(raw, folder, train["batch_size"] * train.get("grad_accum_steps", 1) * steps)
        if counts[kind]["placeholders"]:
            loud(
                f"{kind}: {counts[kind]['placeholders']} of the {counts[kind]['posts']} posts used have no image in "
                f"data.image_dir ({raw['data'].get('image_dir')}): PLACEHOLDER images of their sizes stand in "
                "(losses and timings are real, grounding is not)"
            )
        raw["data"].update(
            path=str(folder),
            image_dir=None,
            missing_images="fail",
            train_split="train",
            dev_split="dev",
            test_split="test",
            fmnerg_xml_dir=None,
        )
        raw["train"].update(
            eval_batch_size=DEV_POSTS, checkpoint_every_minutes=0, checkpoint_every_steps=0, num_workers=0
        )
        prepared[kind] = raw

    by_key: dict[str, Any] = {}
    for run in runs:
        by_key.setdefault(run.key, run)
    rows_per_key = {key: 1 for key in by_key}
    progress_print(f"rehearsal: {len(by_key)} rows, {steps} steps + 1 after a resume each, {processes} process(es)")
    header = [
        "| row | steps | first loss | last loss | s/step | peak memory | wall s | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines, failures, results = [], [], {}
    target: Path | None = None  # the best/ that qgn predict and the export use: the full model's, else the first
    for key, run in by_key.items():
        row_dir = root / key.replace("/", "-")
        config_file = root / f"{key.replace('/', '-')}.yaml"
        raw = run_config(prepared[run.kind], run)
        config_file.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        log = root / f"{key.replace('/', '-')}.log"
        t0 = time.time()
        cmd = _launch(processes, ["qgn.reproduce.rehearse", str(config_file), str(row_dir), "--steps", str(steps)])
        ok, wall, last = _run_tool(cmd, log)
        result = json.loads((row_dir / RESULT_FILE).read_text()) if ok and (row_dir / RESULT_FILE).is_file() else None
        if result is None:
            error = (
                (row_dir / ERROR_FILE).read_text(encoding="utf-8").strip()
                if (row_dir / ERROR_FILE).is_file()
                else _first_error(log, last)
            )
            failures.append(f"row {key} failed: {error} (log: {log})")
            lines.append(_row_line(key, None, "FAILED", time.time() - t0))
        else:
            results[key] = result
            lines.append(_row_line(key, result, "ok", time.time() - t0))
            if target is None or (key.endswith("/full") and not target.parent.name.endswith("-full")):
                if target is not None:
                    shutil.rmtree(target, ignore_errors=True)
                target = row_dir / "best"
        progress_print(lines[-1])
        # full-size checkpoints are GBs each: keep only the best/ that predict and the export use
        shutil.rmtree(row_dir / "checkpoint", ignore_errors=True)
        if target != row_dir / "best":
            shutil.rmtree(row_dir / "best", ignore_errors=True)

    if target is not None and target.is_dir():
        dev = root / f"data-{'gmner' if 'gmner' in prepared else next(iter(prepared))}" / "dev.jsonl"
        inputs = root / "predict-input.jsonl"
        with open(dev, encoding="utf-8") as src, open(inputs, "w", encoding="utf-8") as dst:
            for line in src:
                post = json.loads(line)
                image = post["image"] if os.path.isabs(post["image"]) else str(dev.parent / post["image"])
                dst.write(json.dumps({"id": post["id"], "tokens": post["tokens"], "image": image}) + "\n")
        for name, cmd in (
            (
                "qgn predict",
                [
                    sys.executable,
                    "-m",
                    "qgn.cli",
                    "predict",
                    "--checkpoint",
                    str(target),
                    "--input",
                    str(inputs),
                    "--output",
                    str(root / "predictions.jsonl"),
                    "--no-progress",
                ],
            ),
            (
                "qgn export onnx",
                [
                    sys.executable,
                    "-m",
                    "qgn.cli",
                    "export",
                    "--checkpoint",
                    str(target),
                    "--output",
                    str(root / "model.onnx"),
                ],
            ),
        ):
            ok, wall, last = _run_tool(cmd, root / f"{name.split()[-1]}.log")
            if not ok:
                failures.append(f"{name} of {target} failed: {last}")
            lines.append(
                f"| {name} ({target.parent.name}) | – | – | – | – | – | {wall:.0f} | {'ok' if ok else 'FAILED'} |"
            )
            progress_print(lines[-1])
        for written in root.glob("model.onnx*"):  # the graph and its weights file (a GB): written is what counts
            written.unlink()
    else:
        failures.append("qgn predict and the ONNX export did not run: no row finished")

    table = "\n".join(header + lines)
    out = [
        f"rehearsal of {len(by_key)} rows under {processes} process(es), {steps} steps + 1 after a resume, "
        f"{time.time() - started:.0f} s in all",
        "",
        table,
        "",
    ]
    gmner = "gmner" if "gmner" in counts else next(iter(counts))
    out += projection(results, counts[gmner]["split_sizes"], prepared[gmner], seeds, rows_per_key)
    text = "\n".join(out) + "\n"
    (root / "rehearsal.md").write_text(text, encoding="utf-8")
    (root / "rehearsal.json").write_text(
        json.dumps({"rows": results, "failures": failures, "counts": counts}, indent=2) + "\n", encoding="utf-8"
    )
    print(text)
    for message in failures:
        print(f"qgn reproduce --rehearse: {message}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    code = worker_main(sys.argv[1:])
    # Two trainers ran in this process. Tearing gloo down, at destroy_process_group or at the
    # interpreter's exit, aborted a process now and then ("terminate called without an active
    # exception", SIGABRT) after its work was done and written, which failed the row. Everything
    # is on disk by now, so leave without that teardown.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
