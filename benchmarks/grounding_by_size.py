"""Grounded entities placed right, by the size of their object: where a checkpoint's boxes fail.

For each size bin, the split's gold entities with a box in that bin are scored by the GMNER
scorer (``qgn.metrics.score``, one-to-one matching, IoU >= 0.5 against any of the entity's
boxes) against all of the checkpoint's predictions (with the thresholds saved beside it): an
entity is placed right when it is a GMNER true positive.

The size measure is the object's shorter side in pixels of a 64 px input that keeps the
aspect ratio (the longer image side scaled to 64): the same measure for every checkpoint and
geometry, not the pixels a stretching ViT sees. An entity drawn twice is binned by its smaller
object, and is right if either object gets its box, as the scorer has it.

    python benchmarks/grounding_by_size.py --data qgn-demo/data --checkpoint qgn-demo/run/best
    python benchmarks/grounding_by_size.py --data DIR/data --checkpoint A/run/best B/run/best --split dev
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qgn.data.records import Box, Post, Prediction  # noqa: E402
from qgn.metrics.scorer import score  # noqa: E402

BINS = ((6.0, "< 6 px"), (10.0, "6-10 px"), (16.0, "10-16 px"), (24.0, "16-24 px"), (float("inf"), ">= 24 px"))
SIDE = 64  # px: the demo ViT's input


def size_bin(boxes: Sequence[Box], image_size: tuple[int, int]) -> str:
    """The bin of the smallest object's shorter side, in pixels of a ``SIDE`` px padded input."""
    scale = SIDE / max(image_size)
    side = min(min(b[2] - b[0], b[3] - b[1]) for b in boxes) * scale
    return next(name for upper, name in BINS if side < upper)


def binned_posts(posts: Sequence[Post]) -> dict[str, list[Post]]:
    """{bin: the posts, each with only its grounded entities of that bin}, bins in ``BINS`` order
    and only those that hold an entity."""
    unsized = [post.id for post in posts if post.image_size is None and any(e.boxes for e in post.entities)]
    if unsized:
        raise ValueError(
            f"{len(unsized)} posts have boxes but no image size, so their objects cannot be binned: {unsized[:3]}"
        )
    bins: dict[str, list[Post]] = {}
    for _, name in BINS:
        kept = [
            dataclasses.replace(
                post, entities=[e for e in post.entities if e.boxes and size_bin(e.boxes, size) == name]
            )
            for post in posts
            if (size := post.image_size) is not None
        ]
        if any(post.entities for post in kept):
            bins[name] = kept
    return bins


def placed_right_by_size(
    posts: Sequence[Post], predictions: Sequence[Sequence[Prediction]]
) -> dict[str, tuple[int, int]]:
    """{bin: (placed right, grounded gold entities)} over the posts, bins in ``BINS`` order."""
    by_id = {post.id: list(preds) for post, preds in zip(posts, predictions, strict=True)}
    out = {}
    for name, kept in binned_posts(posts).items():
        gmner = score(kept, by_id).gmner
        out[name] = (gmner.tp, gmner.n_gold)
    return out


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
    binned_posts(posts)  # fails on posts it cannot bin before any model runs
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
