"""``qgn demo``: the embedded default, end to end on a CPU in minutes, with no download.

1. Generates the synthetic grounded-NER benchmark (Twitter-GMNER layout: txt + xml + jpg) if absent.
2. Trains the tiny QGN config on it with the same code path as the real benchmark (``qgn train``).
3. Scores the best-on-dev checkpoint on the test split, and, for contrast, a text-only baseline
   that predicts every gold entity with its gold type and no box: what it misses needs the image.
4. Draws a few test predictions into ``DIR/predictions.png``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from qgn.data.records import Prediction

logger = logging.getLogger(__name__)

DEMO_TRAIN_POSTS = 4000
# 400 dev posts (800 entities), not the generator's 200: dev picks the checkpoint and three
# post-processing thresholds, and with 200 the thresholds chosen were noisy on test.
DEMO_DEV_POSTS = 400


def text_only_baseline(posts: list) -> dict[str, list[Prediction]]:
    """Every gold entity with its gold span and type and no box: perfect MNER, no grounding."""
    return {p.id: [Prediction(e.start, e.end, e.type, None, 1.0) for e in p.entities] for p in posts}


def draw_examples(checkpoint: Path, posts: list, out_path: Path, count: int = 4) -> Path:
    """A grid of ``count`` test posts with predicted boxes (coloured) and gold boxes (white)."""
    from PIL import Image, ImageDraw

    from qgn.api import entity_dict, load
    from qgn.data.images import load_image
    from qgn.visualize import draw_entities

    predictor = load(checkpoint, device="cpu")
    chosen = [p for p in posts if any(e.boxes for e in p.entities)][:count]
    images = [load_image(post.image_path) for post in chosen]
    # The posts' own words, exactly as the test split has them (no re-splitting of the text).
    predictions = predictor.predict_posts(chosen, images)
    tiles = []
    for post, image, preds in zip(chosen, images, predictions):
        entities = [entity_dict(post, p) for p in preds]
        gold = [{"box": b} for e in post.entities for b in e.boxes]
        tile = draw_entities(
            image.resize((image.width * 3, image.height * 3)),
            [{**e, "box": None if e["box"] is None else [v * 3 for v in e["box"]]} for e in entities],
            gold=[{"box": [v * 3 for v in g["box"]]} for g in gold],
        )
        caption = Image.new("RGB", (tile.width, 28), "white")
        ImageDraw.Draw(caption).text((4, 8), " ".join(post.tokens)[:90], fill="black")
        framed = Image.new("RGB", (tile.width, tile.height + 28), "white")
        framed.paste(caption, (0, 0))
        framed.paste(tile, (0, 28))
        tiles.append(framed)
    width = sum(t.width for t in tiles) + 8 * (len(tiles) - 1)
    sheet = Image.new("RGB", (max(width, 1), max((t.height for t in tiles), default=1)), "white")
    x = 0
    for t in tiles:
        sheet.paste(t, (x, 0))
        x += t.width + 8
    sheet.save(out_path)
    return out_path


# Filled in from the encoders and the training words when a run is built: not the user's settings.
_BUILT_FIELDS = ("text_config", "vision_config")


def _changed_settings(saved: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``section.key: old -> new`` for every setting that differs between two run dicts."""
    changes = []
    for section in sorted(set(saved) | set(new)):
        a, b = saved.get(section) or {}, new.get(section) or {}
        for key in sorted(set(a) | set(b)):
            if section == "model" and key in _BUILT_FIELDS:
                continue
            if a.get(key) != b.get(key):
                changes.append(f"{section}.{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return changes


def run_demo(
    output_dir: str | Path = "qgn-demo",
    overrides: list[str] | None = None,
    progress: bool = True,
    train_posts: int = DEMO_TRAIN_POSTS,
    overwrite: bool = False,
    variant: str = "default",
) -> dict[str, Any]:
    import shutil

    import yaml

    from qgn.data import read_dataset
    from qgn.data.synthetic import generate_synthetic_benchmark, get_variant
    from qgn.engine.inference import format_summary
    from qgn.engine.settings import apply_overrides, load_run_file, settings_from_dict
    from qgn.engine.train import metrics_summary, run_training
    from qgn.errors import QGNError
    from qgn.metrics import score
    from qgn.metrics.report import format_breakdown

    started = time.time()
    chosen_variant = get_variant(variant)  # an unknown name fails before any work
    out = Path(output_dir)
    run_dir = out / "run"
    # Settings first (a bad --set fails before any work), data paths as the run will store them.
    data_dir = (out / "data").absolute()
    raw = load_run_file("demo")
    raw.setdefault("data", {}).update(path=str(data_dir), image_dir=str(data_dir / "images"))
    settings = settings_from_dict(apply_overrides(raw, overrides or [])).with_absolute_paths()
    if overwrite and out.exists():
        for name in ("run", "data", "predictions.png", "demo_result.json"):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
    resume = (run_dir / "checkpoint" / "trainer_state.json").is_file()
    if resume:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        changes = _changed_settings(saved, settings.to_dict())
        if changes:
            raise QGNError(
                f"{run_dir} holds a demo run with other settings ({'; '.join(changes[:4])}); rerun with "
                "--overwrite to start afresh, or choose another --output-dir"
            )
        logger.info("continuing the demo run in %s (same settings)", run_dir)
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise QGNError(
            f"{run_dir} holds files but no training state to continue; rerun with --overwrite to start "
            "afresh, or choose another --output-dir"
        )
    # Many distinct posts and few epochs rather than the reverse: with a small training set the tiny
    # model memorises posts instead of learning where an entity's object is.
    try:
        generate_synthetic_benchmark(data_dir, num_train=train_posts, num_dev=DEMO_DEV_POSTS, variant=variant)
    except QGNError:
        raise QGNError(
            f"{data_dir} holds other files or a synthetic benchmark of another size or variant "
            "(--train-posts, --variant?); rerun with --overwrite to start afresh, or choose another "
            "--output-dir"
        ) from None
    final = run_training(settings, run_dir, resume=resume, progress=progress)

    test_posts = read_dataset(str(data_dir), split="test", image_dir=str(Path(data_dir) / "images"))
    baseline = metrics_summary(score(test_posts, text_only_baseline(test_posts)))
    picture = draw_examples(run_dir / "best", test_posts, out / "predictions.png")
    curve = dev_curve(run_dir / "metrics.jsonl")
    elapsed = time.time() - started
    result = {
        "variant": chosen_variant.name,
        "qgn": final["test"],
        "qgn_default_thresholds": final["with_default_thresholds"]["test"],
        "thresholds": final["thresholds"],
        "text_only_baseline": baseline,
        "best_epoch": final["best_epoch"],
        "dev_curve": curve,
        "seconds": round(elapsed, 1),
        "picture": str(picture),
        "checkpoint": str(run_dir / "best"),
    }
    (out / "demo_result.json").write_text(json.dumps(result, indent=2) + "\n")

    chosen = final["thresholds"]["chosen"]
    print("\nDev GMNER F1 by epoch: " + ", ".join(f"{f1:.1f}" for f1 in curve["GMNER"]))
    print(
        f"\nQGN (tiny, trained on CPU) on the test split of the synthetic benchmark, variant "
        f"{chosen_variant.name} ({chosen_variant.summary}), best dev epoch {final['best_epoch']}, "
        f"thresholds chosen on dev (score {chosen['score_threshold']:g}, no-target "
        f"{chosen['no_target_threshold']:g}, remove_overlaps {chosen['remove_overlaps']}):"
    )
    print(format_summary({"test": final["test"]}))
    print("\n" + "\n".join(format_breakdown(final["test"]["breakdown"])))
    print("\nThe same checkpoint with the default thresholds:")
    print(format_summary({"test": final["with_default_thresholds"]["test"]}))
    print("\nText-only baseline (gold spans and types, never a box) on the same split:")
    print(format_summary({"test": baseline}))
    print(grounding_verdict(final["test"]["GMNER"]["f1"], baseline["GMNER"]["f1"]))
    print(f"pictures of test predictions: {picture}")
    print(f"checkpoint: {run_dir / 'best'}  (try: qgn predict --checkpoint {run_dir / 'best'} --image IMG --text TEXT)")
    print(f"wall time: {elapsed / 60:.1f} min")
    return result


def grounding_verdict(qgn_f1: float, baseline_f1: float) -> str:
    """The demo's closing line: whether QGN's GMNER clears the box-less text-only baseline, which
    knows every span and type and so loses only the grounding."""
    head = f"\nGMNER F1: QGN {qgn_f1:.2f} vs text-only {baseline_f1:.2f}: "
    if qgn_f1 > baseline_f1 + 5:
        return head + (
            "the baseline knows every span and type, so all it misses is the grounding, which QGN "
            "learned from the image"
        )
    return head + (
        "QGN does not clear the box-less baseline: it has not learned to ground (too few epochs or "
        'posts? see docs/benchmarks.md, "The demo")'
    )


def dev_curve(metrics_file: Path) -> dict[str, list[float]]:
    """Dev F1 of every evaluated epoch, per metric, from a run's metrics.jsonl."""
    curve: dict[str, list[float]] = {"epoch": [], "GMNER": [], "MNER": [], "EEG": []}
    for line in metrics_file.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "dev" in record:
            curve["epoch"].append(record["epoch"])
            for metric in ("GMNER", "MNER", "EEG"):
                curve[metric].append(round(record["dev"][metric]["f1"], 2))
    return curve


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="generate the synthetic benchmark, train the tiny model on CPU, evaluate, draw (no download)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--output-dir", default="qgn-demo", help="where the data, run and pictures go (default: qgn-demo)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a setting of the shipped demo config, e.g. --set train.epochs=5",
    )
    p.add_argument(
        "--train-posts",
        type=int,
        default=DEMO_TRAIN_POSTS,
        help=f"training posts to generate (default {DEMO_TRAIN_POSTS}; the goal is measured with it)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in --output-dir (deletes its run and data); without it, a finished or "
        "interrupted demo there is continued if its settings are the same, and refused if not",
    )
    p.add_argument(
        "--variant",
        default="default",
        choices=list(_variant_names()),
        help="which synthetic benchmark: default, or a variant with what real posts have and the "
        "default lacks (images of every shape, outline looks, more identities, small and large "
        "objects, or all: mixed); docs/benchmarks.md describes each",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(
        func=lambda args: (
            run_demo(
                args.output_dir, args.overrides, not args.no_progress, args.train_posts, args.overwrite, args.variant
            )
            and 0
        )
    )


def _variant_names() -> tuple[str, ...]:
    from qgn.data.synthetic import VARIANTS

    return tuple(VARIANTS)
