"""``qgn data stats`` and ``qgn data convert``.

qgn data stats DIR [--split S] [--json] [--image-dir D] [--fmnerg-xml X]
qgn data convert DIR [--split S] --out FILE.jsonl|OUT_DIR [--fmnerg-xml X] [--image-dir D]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from qgn.data.images import MISSING_IMAGE_POLICIES
from qgn.errors import QGNError

logger = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "data",
        help="dataset statistics and conversion to JSONL",
        description="Inspect a dataset (Twitter-GMNER / Twitter-FMNERG folder or JSONL) or convert it to JSONL.",
    )
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: (parser.print_help(), 0)[1])

    stats = sub.add_parser(
        "stats",
        help="count posts, entities, grounded entities and boxes per split",
        description="Per split: posts, entities (per type), grounded entities, boxes "
        "(xml objects), entity-box links, posts without xml, missing images.",
    )
    stats.add_argument("path", help="dataset folder (txt/ + xml/, or <split>.jsonl files) or a .jsonl file")
    stats.add_argument("--split", help="one split only (default: every split found)")
    stats.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    stats.add_argument("--image-dir", help="also count missing / unreadable images in this folder")
    stats.add_argument("--fmnerg-xml", help="Twitter-FMNERG text: the GMNER v2.0 xml folder")
    stats.set_defaults(func=_stats)

    convert = sub.add_parser(
        "convert",
        help="write a benchmark split (or all splits) as JSONL",
        description="Convert a Twitter-GMNER / Twitter-FMNERG folder to the JSONL format "
        "(docs/data.md). Reading the output back gives the same posts.",
    )
    convert.add_argument("path", help="dataset folder")
    convert.add_argument(
        "--split",
        help="one split, written to --out FILE.jsonl (default: every split, written to --out DIR/<split>.jsonl)",
    )
    convert.add_argument(
        "--out", required=True, help="output .jsonl file (with --split) or folder (gets <split>.jsonl files)"
    )
    convert.add_argument("--fmnerg-xml", help="Twitter-FMNERG text: the GMNER v2.0 xml folder")
    convert.add_argument("--image-dir", help="record each post's image path (relative to the output when inside it)")
    convert.add_argument(
        "--missing-images",
        choices=MISSING_IMAGE_POLICIES,
        default="fail",
        help="with --image-dir: fail (default), skip the post, or keep it without image",
    )
    convert.set_defaults(func=_convert)


def _stats(args: argparse.Namespace) -> int:
    from qgn.data.stats import dataset_stats, format_stats_table, stats_to_dict

    stats = dataset_stats(args.path, split=args.split, image_dir=args.image_dir, fmnerg_xml_dir=args.fmnerg_xml)
    if args.json:
        print(json.dumps(stats_to_dict(stats, args.path), indent=2))
    else:
        print(format_stats_table(stats, args.path))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from qgn.data import available_splits, read_dataset
    from qgn.data.jsonl import write_jsonl

    out = Path(args.out)
    if args.split:
        # a folder (existing, or named without .jsonl) gets <split>.jsonl inside it
        targets = {args.split: out / f"{args.split}.jsonl" if out.is_dir() or out.suffix != ".jsonl" else out}
    else:
        if out.suffix == ".jsonl":
            raise QGNError(f"without --split, --out is a folder (one <split>.jsonl per split), got {out}")
        targets = {split: out / f"{split}.jsonl" for split in available_splits(args.path)}
    for target in targets.values():
        if target.is_dir():
            raise QGNError(f"--out: {target} is a folder, cannot write a JSONL file there")
    for split, target in targets.items():
        posts = read_dataset(
            args.path,
            split=split,
            image_dir=args.image_dir,
            missing_images=args.missing_images if args.image_dir else None,
            fmnerg_xml_dir=args.fmnerg_xml,
        )
        write_jsonl(posts, target)
        print(f"{split}: {len(posts)} posts -> {target}")
    return 0
