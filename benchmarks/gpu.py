"""GPU speed of the full-size QGN: bf16 training step, inference, memory, image loading, projected run time.

Needs only torch + transformers + this checkout (no install, no download: the full-size
architecture -- bert-base-cased shapes + CLIP ViT-B/32 at 224 px -- is built from configs with
random weights). About 1-2 minutes on one H100-class GPU, well under 5.

    python benchmarks/gpu.py --json gpu.json
    python benchmarks/gpu.py --allow-cpu          # no GPU: a tiny smoke run on the CPU (tests the script)

Measures, at batch 16 (the paper's):
  - training step under bf16 autocast (forward, the criterion in fp32 as the training engine runs
    it, backward, AdamW step), median of timed steps after warm-up, and its peak GPU memory;
  - inference throughput (eval, inference_mode, bf16 autocast) of QGN and of the bare encoders
    (BertModel + CLIPVisionModel from the same configs), and the QGN / encoders ratio;
  - image pipeline throughput: decode + resize + normalise of synthetic JPEGs of Twitter-like sizes
    with a DataLoader (num_workers = min(8, CPUs)), qgn.data.pipeline.ImageTransform when present;
  - the projected wall time of the paper's recipe: 50 epochs x 7,000 training posts at batch 16
    plus a 1,500-post dev evaluation per epoch (forward passes only, no scoring).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RECIPE = dict(epochs=50, train_posts=7000, dev_posts=1500, batch=16)


# ----------------------------------------------------------------------------- model timings
def time_training(model, criterion, config, batch: int, device, warmup: int, repeats: int) -> dict[str, float]:
    inputs, targets = C.synthetic_batch(config, batch, device=device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    step = C.train_step_fn(model, criterion, optimizer, inputs, targets, autocast_dtype=torch.bfloat16)
    reset_peak(device)
    times = C.time_calls(step, warmup, repeats, sync=sync_fn(device))
    result = dict(
        batch=batch,
        median_s=C.median(times),
        posts_per_s=batch / C.median(times),
        peak_memory_gb=peak_gb(device),
        times_s=times,
    )
    del optimizer
    model.zero_grad(set_to_none=True)
    return result


def time_inference(model, config, batch: int, device, warmup: int, repeats: int) -> dict[str, float]:
    inputs, _ = C.synthetic_batch(config, batch, device=device)
    model.eval()
    reset_peak(device)
    with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        times = C.time_calls(lambda: model(**inputs), warmup, repeats, sync=sync_fn(device))
    return dict(
        batch=batch,
        median_s=C.median(times),
        posts_per_s=batch / C.median(times),
        peak_memory_gb=peak_gb(device),
        times_s=times,
    )


def sync_fn(device):
    return torch.cuda.synchronize if torch.device(device).type == "cuda" else None


def reset_peak(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gb(device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.device(device).type == "cuda" else None


# ----------------------------------------------------------------------------- image pipeline
def fallback_transform(size: int):
    """Resize to size x size (no crop, bilinear, as ImageTransform) and CLIP-normalise: (3, size, size) float32."""
    mean, std = np.array(CLIP_MEAN, np.float32), np.array(CLIP_STD, np.float32)

    def transform(image: Image.Image) -> torch.Tensor:
        array = np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR), np.float32) / 255.0
        return torch.from_numpy(((array - mean) / std).transpose(2, 0, 1).copy())

    return transform


def image_transform(size: int) -> tuple[Any, str]:
    """qgn's ImageTransform if it exists and maps a PIL image to (3, size, size); else the fallback."""
    try:
        from qgn.data.pipeline import ImageTransform

        transform = ImageTransform(size)
        out = transform(Image.new("RGB", (size * 2, size)))
        if torch.is_tensor(out) and tuple(out.shape) == (3, size, size):
            return transform, "qgn.data.pipeline.ImageTransform"
    except Exception as exc:  # absent or another interface: the fallback does the same work
        print(f"(qgn ImageTransform not usable here: {type(exc).__name__}: {exc}; using PIL + numpy)")
    return fallback_transform(size), "PIL + numpy fallback"


class JpegFolder(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path], transform):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        with Image.open(self.paths[index]) as image:
            return self.transform(image)


def write_jpegs(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` JPEGs of Twitter-like sizes (400-1200 x 300-900): smooth colour fields plus noise,
    so that they compress like photos rather than like pure noise."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        w, h = int(rng.integers(400, 1201)), int(rng.integers(300, 901))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack(
            [np.sin(xx / rng.uniform(20, 200) + c) * np.cos(yy / rng.uniform(20, 200)) for c in range(3)], -1
        )
        pixels = np.clip(127 + 100 * base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def time_image_loading(size: int, count: int, batch: int) -> dict[str, Any]:
    transform, name = image_transform(size)
    workers = min(8, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(tmp), count)
        loader = torch.utils.data.DataLoader(JpegFolder(paths, transform), batch_size=batch, num_workers=workers)
        start = time.perf_counter()
        iterator = iter(loader)
        next(iterator)
        first = time.perf_counter()
        seen = sum(len(b) for b in iterator)  # steady state: after the workers have started
        end = time.perf_counter()
    return dict(
        transform=name,
        num_workers=workers,
        images=count,
        first_batch_s=first - start,
        images_per_s=seen / (end - first),
        total_s=end - start,
    )


# ----------------------------------------------------------------------------- projection
def project_recipe(train_step_s: float, eval_posts_per_s: float, loader_images_per_s: float) -> dict[str, float]:
    """Wall time of the paper's recipe from the measured step time and inference throughput; the
    loader-bound figure assumes loading overlaps compute, so a step takes the longer of the two."""
    steps_per_epoch = math.ceil(RECIPE["train_posts"] / RECIPE["batch"])
    load_s = RECIPE["batch"] / loader_images_per_s
    eval_epoch_s = RECIPE["dev_posts"] / eval_posts_per_s
    compute = RECIPE["epochs"] * (steps_per_epoch * train_step_s + eval_epoch_s)
    bound = RECIPE["epochs"] * (
        steps_per_epoch * max(train_step_s, load_s) + max(eval_epoch_s, RECIPE["dev_posts"] / loader_images_per_s)
    )
    return dict(
        steps_per_epoch=steps_per_epoch,
        train_epoch_s=steps_per_epoch * train_step_s,
        dev_eval_s=eval_epoch_s,
        total_hours_compute=compute / 3600,
        total_hours_with_loader=bound / 3600,
        loader_keeps_up=loader_images_per_s >= RECIPE["batch"] / train_step_s,
    )


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    parser.add_argument("--allow-cpu", action="store_true", help="without CUDA, run a tiny smoke version on the CPU")
    args = parser.parse_args(argv)
    smoke = not torch.cuda.is_available()
    if smoke and not args.allow_cpu:
        print(
            "gpu.py: no CUDA device found (torch.cuda.is_available() is False). This benchmark measures GPU "
            "speed: run it on a machine with a GPU, or pass --allow-cpu for a tiny smoke run on the CPU."
        )
        return 2
    device = "cpu" if smoke else "cuda"
    info = C.machine_info()
    results: dict[str, Any] = {"smoke_cpu": smoke, "machine": info, "recipe": RECIPE}
    print(
        f"device: {info.get('gpu', 'CPU (smoke run, tiny model: NOT GPU figures)')}; torch {info['torch']}"
        f" (CUDA {info.get('cuda')}), transformers {info['transformers']}, {info['cpu_count']} CPUs"
    )
    if not smoke:
        results["bf16_matmul_peak_tflops"] = C.matmul_peak(8192, device=device, dtype=torch.bfloat16) / 1e12
        print(f"measured bf16 matmul peak (8192^3): {results['bf16_matmul_peak_tflops']:.0f} TFLOP/s")

    config = C.tiny_config() if smoke else C.full_size_config()
    batch = RECIPE["batch"]
    reps = dict(warmup=1, repeats=3) if smoke else dict(warmup=5, repeats=20)
    model, criterion = C.build_qgn(config)
    model.to(device)
    print(
        f"QGN {'tiny' if smoke else 'full-size'}: {C.count_parameters(model) / 1e6:.1f} M parameters, batch {batch}",
        flush=True,
    )

    train = results["train_bf16"] = time_training(model, criterion, config, batch, device, **reps)
    print(
        f"train step (bf16 autocast): {train['median_s'] * 1000:.1f} ms = {train['posts_per_s']:.1f} posts/s"
        + (f", peak {train['peak_memory_gb']:.2f} GiB" if train["peak_memory_gb"] is not None else ""),
        flush=True,
    )
    infer = results["inference_bf16"] = time_inference(model, config, batch, device, **reps)
    model.cpu()
    del model, criterion
    encoders = C.Encoders(config).to(device)
    enc = results["encoders_inference_bf16"] = time_inference(encoders, config, batch, device, **reps)
    del encoders
    results["inference_ratio"] = infer["median_s"] / enc["median_s"]
    print(
        f"inference (bf16): {infer['posts_per_s']:.1f} posts/s"
        + (f", peak {infer['peak_memory_gb']:.2f} GiB" if infer["peak_memory_gb"] is not None else "")
        + f"; encoders alone {enc['posts_per_s']:.1f} posts/s; QGN / encoders time {results['inference_ratio']:.2f}",
        flush=True,
    )

    loading = results["image_loading"] = time_image_loading(config.image_size, 32 if smoke else 512, batch)
    print(
        f"image pipeline ({loading['transform']}, {loading['num_workers']} workers, {loading['images']} JPEGs "
        f"400-1200 px): {loading['images_per_s']:.0f} images/s after a first batch of {loading['first_batch_s']:.2f} s"
    )

    plan = results["projection"] = project_recipe(train["median_s"], infer["posts_per_s"], loading["images_per_s"])
    print(
        f"projected paper recipe ({RECIPE['epochs']} epochs x {RECIPE['train_posts']} posts, batch {RECIPE['batch']},"
        f" dev {RECIPE['dev_posts']} posts/epoch){' [CPU smoke, tiny model]' if smoke else ''}: "
        f"{plan['total_hours_compute']:.2f} h of compute; {plan['total_hours_with_loader']:.2f} h if loading "
        f"bounds it (loader {'keeps up' if plan['loader_keeps_up'] else 'is the bottleneck'})"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
