"""``qgn reproduce``: run the paper's tables over seeds and write them beside the paper's numbers.

    qgn reproduce --config twitter_gmner --set data.path=... --tables III,IV --seeds 3 --output-dir DIR
    qgn reproduce ... --dry-run                 # the plan, and its cost from a timed training step
    qgn reproduce ... --devices 0,1,2,3         # four runs at once, one per GPU
    qgn reproduce ... --shard 1/4               # this node's quarter of the runs
    qgn reproduce ... --plus twitter_gmner_plus # Table I gets a QGN+ row (not the paper's)
    qgn reproduce --aggregate-only DIR          # rebuild DIR/tables.md from what has finished

Every run is a plain ``qgn train`` in its own process (``DIR/<table>/<row>/seed<k>/``; the full
model once, in ``DIR/full/seed<k>/``). Finished runs are skipped and interrupted ones resumed,
so the same command can be re-run after a crash, or with more seeds.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from qgn.errors import QGNError
from qgn.reproduce.aggregate import write_tables
from qgn.reproduce.grid import (
    DEFAULT_QUERY_SWEEP,
    VI_VISUAL_LAYERS,
    Plus,
    Run,
    parse_shard,
    parse_tables,
    plan,
    plus_switches,
    run_config,
    status,
)

logger = logging.getLogger(__name__)
PLAN_FILE = "reproduce.json"  # what the grid was made of, so --aggregate-only needs nothing else


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "reproduce",
        help="run the paper's tables (I-VI, Fig. 3) over seeds and write them beside the paper's numbers",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--config", help="the GMNER run config: a shipped name (twitter_gmner, demo) or a YAML file")
    p.add_argument("--fmnerg-config", default="twitter_fmnerg", help="the config of Table II (default twitter_fmnerg)")
    p.add_argument(
        "--tables",
        default="I,III,IV,V,VI,fig3",
        help="comma-separated: I, II, III, IV, V, VI, fig3, or all (default: all but II, which needs FMNERG "
        "data; all leaves II out, saying so, when --fmnerg-set data.path is not a folder)",
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds per row (train.seed = 1..K; default 3)")
    p.add_argument("--queries", default=",".join(map(str, DEFAULT_QUERY_SWEEP)), help="Fig. 3's Nq values")
    p.add_argument(
        "--vi-visual-layers",
        choices=VI_VISUAL_LAYERS,
        default="fixed",
        help="Table VI: read the ViT features at the config's vision_extract_layers in every row (fixed, "
        "the paper's V = {2,5,8,11}; default) or at each row's injection layers (follow)",
    )
    p.add_argument(
        "--plus",
        metavar="CONFIG",
        help="a config beyond the paper (a shipped name, e.g. twitter_gmner_plus, or a YAML file) as a second "
        "row of Table I, 'QGN+ (CONFIG, not the paper's)': its switches are what its model and train sections "
        "change on --config's (after --set, applied to both); its data section is not used (default: no such row)",
    )
    p.add_argument("--output-dir", help="where the runs and tables go")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a setting of every GMNER run (repeatable)",
    )
    p.add_argument(
        "--fmnerg-set",
        dest="fmnerg_overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a setting of Table II's runs (repeatable)",
    )
    p.add_argument("--devices", help="run several at once, one per device: 0,1,2,3 (GPUs) or cpu,cpu")
    p.add_argument("--shard", help="i/n: run only every n-th run starting at i (one shard per node)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its estimated cost; run nothing")
    p.add_argument("--aggregate-only", metavar="DIR", help="only rebuild DIR/tables.md and tables.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bars in the runs")
    p.add_argument(
        "--rehearse",
        action="store_true",
        help="run every planned row for --steps steps at the configured size (real text, encoders and "
        "images where they can be loaded, stand-ins said loudly where not), checkpoint, resume one "
        "step, evaluate on a few dev posts; then one qgn predict and one ONNX export; project the "
        "grid's GPU cost (docs/reproduce.md)",
    )
    p.add_argument("--steps", type=int, default=2, help="--rehearse: optimizer steps per row before the resume (2)")
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="--rehearse: processes per row (torch.distributed.run; gloo on the CPU; default 1)",
    )
    p.set_defaults(func=_main)


# ----------------------------------------------------------------------------- configs of the runs
def _fmnerg_data_given(args: Any) -> bool:
    from qgn.engine.settings import apply_overrides, load_run_file

    path = (apply_overrides(load_run_file(args.fmnerg_config), args.fmnerg_overrides).get("data") or {}).get("path")
    return bool(path) and Path(str(path)).is_dir()


def _base_config(name: str, overrides: list[str], root: Path) -> dict[str, Any]:
    """The run dict every row starts from; the demo config gets its synthetic data generated."""
    from qgn.engine.settings import apply_overrides, load_run_file, settings_from_dict

    raw = load_run_file(name)
    if name == "demo" and not (raw.get("data") or {}).get("path"):
        from qgn.data.synthetic import generate_synthetic_benchmark
        from qgn.demo import DEMO_DEV_POSTS, DEMO_TRAIN_POSTS

        data = (root / "data").absolute()
        generate_synthetic_benchmark(data, num_train=DEMO_TRAIN_POSTS, num_dev=DEMO_DEV_POSTS)
        raw.setdefault("data", {}).update(path=str(data), image_dir=str(data / "images"))
    raw = apply_overrides(raw, overrides)
    settings = settings_from_dict(raw)  # a bad --set fails now, before any run
    if not settings.data.path:
        raise QGNError(f"config {name}: data.path is not set; give --set data.path=DIR (and data.image_dir)")
    return settings.with_absolute_paths().to_dict()


def _plus(name: str, overrides: list[str], base: dict[str, Any]) -> Plus:
    """``--plus``: the config ``name`` with the same ``--set`` overrides, as switches on ``base`` (the
    base config's run dict, from :func:`_base_config`)."""
    from qgn.engine.settings import apply_overrides, load_run_file, settings_from_dict

    raw = settings_from_dict(apply_overrides(load_run_file(name), overrides)).with_absolute_paths().to_dict()
    return Plus(Path(name).stem, plus_switches(base, raw))


def _check_layers(raw: dict[str, Any], run: Run) -> None:
    """Table VI's schedules name BERT and ViT layers up to 12 (rows 3 3 3 2 and 3 1 3 3): refuse a
    config whose encoders are shallower now, rather than hours into the grid."""
    model = raw["model"]
    for key, depth_of in (
        ("text_extract_layers", "text_config"),
        ("vision_inject_layers", "vision_config"),
        ("vision_extract_layers", "vision_config"),
    ):
        depth = (model.get(depth_of) or {}).get("num_hidden_layers")
        if depth and max(model.get(key) or [0]) > depth:
            raise QGNError(
                f"{run.key}: {key} {model[key]} needs {max(model[key])} layers, but this config's "
                f"{depth_of} has {depth}; Table VI needs 12-layer encoders (the paper's)"
            )


# ----------------------------------------------------------------------------- running
def _train_command(run: Run, config_file: Path, progress: bool) -> list[str]:
    cmd = [sys.executable, "-m", "qgn.cli", "train"]
    if status(run) == "interrupted":
        cmd += ["--resume", str(run.path)]
    else:
        cmd += ["--config", str(config_file), "--output-dir", str(run.path)]
    return cmd + ([] if progress else ["--no-progress"])


def _start_fresh(run: Run) -> None:
    """A run directory without a checkpoint holds nothing worth keeping (it stopped before its
    first save): clear it so ``qgn train`` starts there."""
    import shutil

    if run.path.exists() and status(run) == "new":
        shutil.rmtree(run.path)


def _execute(runs: list[Run], configs: dict[Path, Path], devices: list[str], progress: bool) -> list[str]:
    """Run ``runs`` (one at a time per device); returns one message per failed run."""
    jobs: queue.Queue = queue.Queue()
    for run in runs:
        jobs.put(run)
    failures: list[str] = []
    lock = threading.Lock()
    done = {"n": 0}

    def worker(device: str | None) -> None:
        while True:
            try:
                run = jobs.get_nowait()
            except queue.Empty:
                return
            env = dict(os.environ)
            if device is not None and device != "cpu":
                env["CUDA_VISIBLE_DEVICES"] = device
            what = "resuming" if status(run) == "interrupted" else "starting"
            _start_fresh(run)
            run.path.parent.mkdir(parents=True, exist_ok=True)
            logger.info("%s %s (seed %d)%s", what, run.path, run.seed, f" on device {device}" if device else "")
            started = time.time()
            log = run.path.parent / f"{run.path.name}.log"
            with open(log, "a", encoding="utf-8") as out:
                code = subprocess.call(
                    _train_command(run, configs[run.path], progress), env=env, stdout=out, stderr=subprocess.STDOUT
                )
            with lock:
                done["n"] += 1
                if code != 0:
                    failures.append(f"{run.path}: qgn train exited with {code} (log: {log})")
                logger.info(
                    "[%d/%d] %s %s in %.1f min",
                    done["n"],
                    len(runs),
                    run.path,
                    "finished" if code == 0 else f"FAILED ({code})",
                    (time.time() - started) / 60,
                )

    threads = [threading.Thread(target=worker, args=(d,)) for d in (devices or [None])]  # type: ignore[list-item]  # None: no device chosen
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failures


def _estimate(base: dict[str, Any], runs: list[Run]) -> str:
    """Seconds per optimizer step of the full model, timed on a few training batches, times the
    steps the remaining runs take (evaluation not counted; a run's ``train.*`` switches, the QGN+ row's,
    can change its epochs and batch)."""
    import tempfile

    import torch

    from qgn.engine.settings import settings_from_dict
    from qgn.engine.train import Trainer

    settings = settings_from_dict(base)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(settings, Path(tmp) / "probe", progress=False)
        batches = iter(trainer.train_loader)
        times = []
        for i in range(4):
            batch = next(batches, None)
            if batch is None:
                break
            started = time.perf_counter()
            loss, _ = trainer._loss(batch)
            trainer.accelerator.backward(loss)
            trainer.optimizer.step()
            trainer.optimizer.zero_grad()
            if i:  # the first step warms caches up
                times.append(time.perf_counter() - started)
        n_batches, train = len(trainer.train_loader), settings.train
        steps = math.ceil(n_batches / train.grad_accum_steps) * train.epochs
        del trainer
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    if not times:
        return "no training batch to time"
    step = sum(times) / len(times)
    todo = [r for r in runs if status(r) != "done"]

    def steps_of(run: Run) -> int:
        switches = dict(run.switches)
        get = lambda key: switches.get(f"train.{key}", getattr(train, key))  # noqa: E731
        posts = n_batches * train.batch_size  # about: the last batch may be short
        return math.ceil(posts / (get("batch_size") * get("grad_accum_steps"))) * get("epochs")

    hours = step * sum(steps_of(r) for r in todo) / 3600
    plus = any(r.key.startswith("gmner/qgn-plus-") for r in todo)
    return (
        f"{step * 1000:.0f} ms a step (full model, timed here), {steps} steps a run: about {hours:.1f} device-hours "
        f"for the {len(todo)} runs not finished (training only; ablations that remove modules are cheaper, "
        + ("the QGN+ row's levers may cost more, " if plus else "")
        + "evaluation adds a little)"
    )


def _describe(switches: Any) -> str:
    return ", ".join(f"{k}={v}" for k, v in switches)


def _main(args: Any) -> int:
    if args.aggregate_only:
        return _aggregate_only(Path(args.aggregate_only))
    if not args.config or not args.output_dir:
        raise QGNError("give --config and --output-dir (or --aggregate-only DIR)")
    if args.seeds < 1:
        raise QGNError("--seeds must be at least 1")
    tables = parse_tables(args.tables)
    if args.tables.strip() == "all" and not _fmnerg_data_given(args):
        tables.remove("II")
        print(
            "--tables all: Table II left out: it trains on Twitter-FMNERG, and --fmnerg-set data.path (the "
            f"{args.fmnerg_config} config's data.path) is not a folder here",
            flush=True,
        )
    try:
        queries = tuple(int(q) for q in args.queries.split(","))
    except ValueError:
        raise QGNError(f"--queries {args.queries!r}: give numbers, e.g. 10,20,40,60") from None
    shard, shards = parse_shard(args.shard)
    devices = [d.strip() for d in args.devices.split(",")] if args.devices else []
    root = Path(args.output_dir)
    root.mkdir(parents=True, exist_ok=True)

    bases = {"gmner": _base_config(args.config, args.overrides, root)}
    plus = None
    if args.plus and "I" in tables:
        plus = _plus(args.plus, args.overrides, bases["gmner"])
        print(f"--plus {args.plus}: Table I row {plus.label!r}, switches: {_describe(plus.switches.items())}")
    elif args.plus:
        print(f"--plus {args.plus}: Table I is not among --tables {args.tables}: no QGN+ row", flush=True)
    # A row that sets what the config already has is the full model and shares its runs (Fig. 3's Nq = 60).
    runs = plan(root, tables, args.seeds, queries, bases["gmner"]["model"], args.vi_visual_layers, plus)
    if any(r.kind == "fmnerg" for r in runs):
        bases["fmnerg"] = _base_config(args.fmnerg_config, args.fmnerg_overrides, root)
    if args.rehearse:
        from qgn.reproduce.rehearse import rehearse

        once = [r for r in runs if r.seed == 1]
        for run in once:
            _check_layers(run_config(bases[run.kind], run), run)
        used = {r.kind for r in once}
        return rehearse(
            once, {k: v for k, v in bases.items() if k in used}, root, args.steps, args.processes, args.seeds
        )
    configs: dict[Path, Path] = {}
    for run in runs:
        raw = run_config(bases[run.kind], run)
        _check_layers(raw, run)
        file = run.path.parent / f"{run.path.name}.yaml"
        if not args.dry_run:
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        configs[run.path] = file
    mine = [r for i, r in enumerate(runs) if i % shards == shard]
    counts = {s: sum(status(r) == s for r in mine) for s in ("done", "interrupted", "new")}
    (root / PLAN_FILE).write_text(
        json.dumps(
            {
                "tables": tables,
                "seeds": args.seeds,
                "queries": list(queries),
                "config": args.config,
                "overrides": args.overrides,
                "vi_visual_layers": args.vi_visual_layers,
                "base_model": bases["gmner"]["model"],
                "plus": plus.to_json() if plus is not None else None,
            },
            indent=2,
        )
        + "\n"
    )
    print(
        f"plan: {len(runs)} runs for tables {', '.join(tables)} x {args.seeds} seed(s)"
        + (f"; shard {shard}/{shards}: {len(mine)} of them" if shards > 1 else "")
        + f"; {counts['done']} finished, {counts['interrupted']} to resume, {counts['new']} to start"
    )
    if args.dry_run:
        for run in mine:
            switches = _describe(run.switches) or "the full model"
            print(f"  {status(run):<11} {run.path}  ({switches}; seed {run.seed})")
        try:
            print("estimate: " + _estimate(bases["gmner"], mine))
        except Exception as err:  # the plan stands without an estimate (no data here, no device...)
            print(f"estimate: not available ({type(err).__name__}: {str(err)[:200]})")
        return 0
    todo = [r for r in mine if status(r) != "done"]
    failures = _execute(todo, configs, devices, progress=not args.no_progress)
    md, _ = write_tables(root, tables, args.seeds, queries, bases["gmner"]["model"], args.vi_visual_layers, plus)
    print(md.read_text(encoding="utf-8"))
    print(f"tables: {md} and {root / 'tables.json'}")
    for message in failures:
        print(f"qgn reproduce: {message}", file=sys.stderr)
    return 1 if failures else 0


def _aggregate_only(root: Path) -> int:
    file = root / PLAN_FILE
    if not file.is_file():
        raise QGNError(f"{root} holds no {PLAN_FILE}: not a qgn reproduce folder")
    meta = json.loads(file.read_text(encoding="utf-8"))
    md, js = write_tables(
        root,
        meta["tables"],
        meta["seeds"],
        tuple(meta["queries"]),
        meta.get("base_model"),
        meta.get("vi_visual_layers", "fixed"),
        Plus.from_json(meta.get("plus")),
    )
    print(md.read_text(encoding="utf-8"))
    print(f"tables: {md} and {js}")
    return 0
