"""Grounded entities placed right, by the size of their object: where a checkpoint's boxes fail.

For each gold entity with a box in the split, the checkpoint's predictions (with the thresholds
saved beside it) place it right when one of them has the entity's span and type and a box with
IoU >= 0.5 against one of its gold boxes: what the GMNER scorer counts as a right box, though
here a prediction is not used up by the entity it matches (the scorer matches one to one).

The size measure is the object's shorter side in pixels of a 64 px input that keeps the
aspect ratio (the longer image side scaled to 64): the same measure for every checkpoint and
geometry, not the pixels a stretching ViT sees. An entity drawn twice is binned by its smaller
object, and is right if either object gets its box, as the scorer has it.

    python benchmarks/grounding_by_size.py --data qgn-demo/data --checkpoint qgn-demo/run/best
    python benchmarks/grounding_by_size.py --data DIR/data --checkpoint A/run/best B/run/best --split dev
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qgn.data.records import Box, Post, Prediction  # noqa: E402
from qgn.metrics.scorer import box_iou_xyxy  # noqa: E402

BINS = ((6.0, "< 6 px"), (10.0, "6-10 px"), (16.0, "10-16 px"), (24.0, "16-24 px"), (float("inf"), ">= 24 px"))
SIDE = 64  # px: the demo ViT's input


def size_bin(boxes: Sequence[Box], image_size: tuple[int, int]) -> str:
    """The bin of the smallest object's shorter side, in pixels of a ``SIDE`` px padded input."""
    scale = SIDE / max(image_size)
    side = min(min(b[2] - b[0], b[3] - b[1]) for b in boxes) * scale
    return next(name for upper, name in BINS if side < upper)


def placed_right_by_size(
    posts: Sequence[Post], predictions: Sequence[Sequence[Prediction]]
) -> dict[str, tuple[int, int]]:
    """{bin: (placed right, grounded gold entities)} over the posts, bins in ``BINS`` order."""
    unsized = [post.id for post in posts if post.image_size is None and any(e.boxes for e in post.entities)]
    if unsized:
        raise ValueError(
            f"{len(unsized)} posts have boxes but no image size, so their objects cannot be binned: {unsized[:3]}"
        )
    tally = {name: [0, 0] for _, name in BINS}
    for post, preds in zip(posts, predictions, strict=True):
        for entity in post.entities:
            if not entity.boxes:
                continue
            right = any(
                p.start == entity.start
                and p.end == entity.end
                and p.type == entity.type
                and p.box is not None
                and any(box_iou_xyxy(p.box, gold) >= 0.5 for gold in entity.boxes)
                for p in preds
            )
            counts = tally[size_bin(entity.boxes, post.image_size)]  # type: ignore[arg-type]  # checked above
            counts[0] += right
            counts[1] += 1
    return {name: (right, total) for name, (right, total) in tally.items() if total}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a dataset folder (the demo's: OUTPUT/data)")
    parser.add_argument("--checkpoint", nargs="+", required=True, help="checkpoint folders (OUTPUT/run/best)")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--image-dir", default=None, help="the images (default: DATA/images)")
    args = parser.parse_args(argv)

    import qgn
    from qgn.data import read_dataset

    data = Path(args.data)
    posts = read_dataset(data, args.split, image_dir=args.image_dir or data / "images")
    placed_right_by_size(posts, [[] for _ in posts])  # fails on posts it cannot bin before any model runs
    images = [None] * len(posts)  # each read from its path as the loader needs it
    print(f"{args.split}: {len(posts)} posts; grounded entities placed right (IoU >= 0.5), by the object's")
    print(f"shorter side in px of a {SIDE} px input that keeps the aspect ratio")
    for checkpoint in args.checkpoint:
        predictions = qgn.load(checkpoint, device="cpu").predict_posts(posts, images, batch_size=32)
        tally = placed_right_by_size(posts, predictions)
        cells = ", ".join(f"{name}: {100 * right / total:.0f} % of {total}" for name, (right, total) in tally.items())
        print(f"{checkpoint}: {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
