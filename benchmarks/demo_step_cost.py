"""CPU time of one training step of the demo's tiny QGN at several input sizes and patch grids.

Why CPU time and not wall time: it is what a run costs on an idle machine, and it stays about the
same when other jobs share the cores (wall time does not). On by default: the alignments, the
box prior and ``box_refine``; the demo's later levers are ``--set`` fields (``box_refine_pixels``,
``pixel_refine_scale``, ``pixel_patch_branch``). Batch 16, fp32, ``_common.synthetic_batch`` with a
``pixel_mask``, one thread. ``--threads N`` runs on N threads and also prints the wall time of a
step, as the demo runs (it means something only on an idle machine); the CPU time is then the
sum over the threads.

    python benchmarks/demo_step_cost.py                      # 64/8, 128/16, 96/12, 96/8, 128/8
    python benchmarks/demo_step_cost.py --sizes 64/8 96/8 --steps 10
    python benchmarks/demo_step_cost.py --sizes 64/8 --set box_refine_pixels=true   # a lever's cost
    python benchmarks/demo_step_cost.py --sizes 64/8 --threads 2 --set box_refine_pixels=true
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qgn.engine.precision import cpu_bf16_units  # noqa: E402
from qgn.modeling import build  # noqa: E402
from qgn.modeling.configuration_qgn import QGNConfig  # noqa: E402

from _common import cpu_model, synthetic_batch, train_step_fn  # noqa: E402

DEFAULT_SIZES = ("64/8", "128/16", "96/12", "96/8", "128/8")


def step_cost(image_size: int, patch: int, steps: int = 5, warmup: int = 3, batch: int = 16, **model: object) -> float:
    """Mean CPU seconds of a forward + backward + AdamW step (fp32) on ``_common.synthetic_batch``;
    ``model``: more QGNConfig fields."""
    return step_times(image_size, patch, steps, warmup, batch, **model)[0]


def step_times(
    image_size: int, patch: int, steps: int = 5, warmup: int = 3, batch: int = 16, **model: object
) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of the mean step of :func:`step_cost`, on torch's current threads."""
    config = QGNConfig.tiny(
        vocab_size=300,
        image_size=image_size,
        vision_config={"patch_size": patch},
        lambda_align=1.0,
        lambda_align_words=1.0,
        align_presence=True,
        align_box_prior=True,
        box_refine=True,
        **model,  # type: ignore[arg-type]
    )
    model, criterion, _ = build(config)
    model.train()
    inputs, targets = synthetic_batch(config, batch)
    side = config.input_image_size  # pixel_refine_scale > 1: a larger input than the ViT sees
    inputs["pixel_mask"] = torch.ones(batch, side, side, dtype=torch.bool)
    step = train_step_fn(model, criterion, torch.optim.AdamW(model.parameters(), 1e-3), inputs, targets)
    started = wall = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            started, wall = time.process_time(), time.perf_counter()
        step()
    return (time.process_time() - started) / steps, (time.perf_counter() - wall) / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), metavar="SIZE/PATCH")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1); above 1 wall time is printed too")
    parser.add_argument(
        "--set", dest="fields", action="append", default=[], metavar="KEY=VALUE", help="a QGNConfig field (YAML value)"
    )
    args = parser.parse_args(argv)
    import yaml

    fields = {}
    for item in args.fields:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
        fields[key.strip()] = yaml.safe_load(value)
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        units = ", ".join(cpu_bf16_units()) or "no bf16 units"
        extra = "".join(f", {k}={v}" for k, v in fields.items())
        plural = "s" if args.threads > 1 else ""
        print(
            f"processor: {cpu_model()} ({units}), torch {torch.__version__}, fp32, {args.threads} thread{plural}{extra}"
        )
        for item in args.sizes:
            size, _, patch = item.partition("/")
            grid = int(size) // int(patch)
            cost, wall = step_times(int(size), int(patch), steps=args.steps, **fields)
            print(
                f"{int(size):4d} px / {int(patch):2d} px patches ({grid} x {grid} grid): "
                f"{cost * 1000:6.0f} ms CPU per step" + (f", {wall * 1000:6.0f} ms wall" if args.threads > 1 else "")
            )
    finally:
        torch.set_num_threads(threads)  # a caller in the same process (a test) keeps its own
    return 0


if __name__ == "__main__":
    sys.exit(main())
