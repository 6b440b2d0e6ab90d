"""``qgn evaluate``: score a prediction file, or run a checkpoint and score it, against a gold split.

    qgn evaluate --data DIR --split test --pred predictions.jsonl [--json] [--per-type]
                 [--iou-threshold 0.5] [--match-by span|string] [--fmnerg-xml DIR]
    qgn evaluate --data DIR --split test --checkpoint RUN/best [--image-dir IMAGES] [--pred-out FILE]

Prints GMNER / MNER / EEG precision, recall and F1 with the raw counts, or with ``--json`` one
JSON object (the keys of :meth:`qgn.metrics.ScoreReport.to_dict`). The protocol is in
docs/evaluation.md.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from qgn.data.records import Post, Prediction
from qgn.errors import QGNError
from qgn.metrics import ScoreReport, read_predictions, score

logger = logging.getLogger(__name__)

# The Twitter-GMNER label set; a predicted type outside it (e.g. MQSPN's "MISC") is an error
# rather than a silent zero.
GMNER_TYPES = ("PER", "LOC", "ORG", "OTHER")


def default_entity_types(posts: Iterable[Post], fine_to_coarse: Mapping[str, str] | None = None) -> set[str]:
    """The label set predictions are checked against: the benchmark's types plus any gold type seen."""
    base = set(fine_to_coarse) if fine_to_coarse is not None else set(GMNER_TYPES)
    return base | {entity.type for post in posts for entity in post.entities}


def evaluate_predictions(
    posts: Sequence[Post],
    predictions: Mapping[str, Sequence[Prediction]],
    iou_threshold: float = 0.5,
    fine_to_coarse: Mapping[str, str] | None = None,
    match_by: str = "span",
    entity_types: Iterable[str] | None = None,
) -> ScoreReport:
    """Score predictions against gold posts, checking types against the label set.

    Shared by ``--pred`` and ``--checkpoint``. ``entity_types`` defaults to
    :func:`default_entity_types`. Warns (does not fail) when some posts have no predictions.
    """
    if entity_types is None:
        entity_types = default_entity_types(posts, fine_to_coarse)
    report = score(
        posts,
        predictions,
        iou_threshold=iou_threshold,
        fine_to_coarse=fine_to_coarse,
        match_by=match_by,
        entity_types=entity_types,
    )
    if report.n_posts_without_predictions:
        logger.warning(
            "%d of %d gold posts have no entry in the predictions; they are scored as predicting nothing",
            report.n_posts_without_predictions,
            report.n_posts,
        )
    return report


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score predictions against a gold split (GMNER / MNER / EEG)",
        description="Score a prediction file (or a checkpoint) against a gold split with the benchmark's "
        "definition: span + type + box IoU >= threshold with any gold box, one-to-one, micro P/R/F1.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--pred", help='prediction file, JSON lines {"id", "entities": [{start, end, type, box}]}')
    source.add_argument("--checkpoint", help="a QGN checkpoint folder to run on the split and score")
    p.add_argument("--data", help="dataset folder in the Twitter-GMNER layout (txt/<split>.txt, xml/<id>.xml)")
    p.add_argument("--split", default="test", help="split to score (default: test)")
    p.add_argument("--pred-out", help="with --checkpoint: also write the predictions here (JSON lines)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--iou-threshold", type=float, default=0.5, help="a box is right at IoU >= this (default 0.5)")
    p.add_argument(
        "--match-by",
        choices=("span", "string"),
        default="span",
        help="match entities by word span (benchmark) or by surface string (generative baselines)",
    )
    p.add_argument(
        "--fmnerg-xml", help="Twitter-FMNERG: the GMNER v2.0 xml folder; scores fine types with per-category rows"
    )
    p.add_argument("--per-type", action="store_true", help="add per-type rows to the table (always in --json)")
    p.add_argument("--image-dir", help="with --checkpoint: the image folder (flat or twitter2015/2017 sub-folders)")
    p.add_argument(
        "--no-images",
        action="store_true",
        help="with --checkpoint of an image model: score it on blank images on purpose (a text-only "
        "evaluation, marked as such in the output); without it, --image-dir is required",
    )
    p.add_argument(
        "--missing-images",
        choices=("fail", "skip", "text_only"),
        default="fail",
        help="with --checkpoint: what to do with posts whose image is missing (default: fail)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="with --checkpoint: prediction batch size")
    p.add_argument("--device", help="with --checkpoint: cpu, cuda, ... (default: cuda when available)")
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "auto"],
        help="with --checkpoint: fp32 (default), bf16 autocast, or auto (bf16 where the GPU or CPU has it)",
    )
    p.set_defaults(func=_main)


def _main(args: Any) -> int:
    if args.checkpoint:
        return _evaluate_checkpoint(args)
    if args.pred_out:
        raise QGNError("--pred-out is for --checkpoint; with --pred the predictions are already in a file")
    if not args.data:
        raise QGNError("--pred needs --data DIR (the gold dataset folder)")
    posts, fine_to_coarse = load_gold(args.data, args.split, args.fmnerg_xml)
    predictions = read_predictions(args.pred)
    report = evaluate_predictions(
        posts, predictions, iou_threshold=args.iou_threshold, fine_to_coarse=fine_to_coarse, match_by=args.match_by
    )
    print_report(report, args, source=args.pred)
    return 0


def load_gold(data: str, split: str, fmnerg_xml: str | None = None) -> tuple[list[Post], Mapping[str, str] | None]:
    """Gold posts of one split and, for Twitter-FMNERG data, the fine -> coarse type map."""
    from qgn.data import read_dataset

    posts = read_dataset(data, split=split, fmnerg_xml_dir=fmnerg_xml)
    # FMNERG gold carries a coarse category on every entity; GMNER gold carries none.
    is_fmnerg = fmnerg_xml is not None or any(e.coarse_type for post in posts for e in post.entities)
    if not is_fmnerg:
        return posts, None
    from qgn.data import FMNERG_FINE_TO_COARSE

    return posts, FMNERG_FINE_TO_COARSE


def print_report(report: ScoreReport, args: Any, source: str, images: str | None = None) -> None:
    """The table (or ``--json`` object) on stdout; warnings go to stderr through logging.
    ``images`` says what a checkpoint saw: "images", "none" (``--no-images``) or "text-only model"."""
    if args.json:
        print(json.dumps({**report.to_dict(), **({"images": images} if images else {})}, indent=2))
        return
    print(f"{source} vs {args.data} [{args.split}]")
    if images == "none":
        print("images: none (--no-images): the image model saw a blank image for every post")
    print(report.format_table(per_type=args.per_type))


def _evaluate_checkpoint(args: Any) -> int:
    """Run a checkpoint on ``--data``/``--split``, optionally write ``--pred-out``, and score it."""
    from torch.utils.data import DataLoader

    from qgn.api import load
    from qgn.data import read_dataset
    from qgn.data.pipeline import Collator, GMNERDataset
    from qgn.engine.inference import predict_loader
    from qgn.metrics import write_predictions

    if not args.data:
        raise QGNError("--checkpoint needs --data DIR (the gold dataset folder)")
    predictor = load(args.checkpoint, device=args.device, precision=args.precision)
    config = predictor.config
    if args.no_images and args.image_dir:
        raise QGNError("--no-images and --image-dir contradict each other; give one")
    blank = args.no_images and not config.text_only
    if not (config.text_only or args.image_dir or args.no_images or Path(args.data).suffix == ".jsonl"):
        # Without images an image model scores far below itself (blank placeholders): never silently.
        raise QGNError(
            f"{args.checkpoint} is an image model: give --image-dir DIR (the post images), or "
            "--no-images to score it on blank images on purpose"
        )
    policy = "text_only" if config.text_only or blank else args.missing_images
    posts = read_dataset(
        args.data, split=args.split, image_dir=args.image_dir, missing_images=policy, fmnerg_xml_dir=args.fmnerg_xml
    )
    if blank:
        for post in posts:
            post.image_path = None
    elif not config.text_only and not any(post.image_path for post in posts):
        raise QGNError(
            f"no post of {args.data} [{args.split}] has an image: give --image-dir DIR, or --no-images "
            "to score the image model on blank images on purpose"
        )
    dataset = GMNERDataset(
        posts,
        predictor.tokenizer,
        config,
        image_transform=predictor.image_transform,
        text_only=config.text_only,
        placeholder_on_error=policy == "text_only",
    )
    loader = DataLoader(dataset, batch_size=args.batch_size, collate_fn=Collator(predictor.tokenizer.pad_token_id))
    predictions = predict_loader(
        predictor.model,
        predictor.postprocessor,
        loader,
        device=predictor.device,
        autocast=predictor.autocast,
        description=args.split,
    )
    if args.pred_out:
        write_predictions(predictions, args.pred_out)
        logger.info("wrote predictions for %d posts to %s", len(predictions), args.pred_out)
    _, fine_to_coarse = load_gold(args.data, args.split, args.fmnerg_xml)
    report = evaluate_predictions(
        posts,
        predictions,
        iou_threshold=args.iou_threshold,
        fine_to_coarse=fine_to_coarse,
        match_by=args.match_by,
        entity_types=config.entity_types,
    )
    print_report(
        report,
        args,
        source=args.checkpoint,
        images="text-only model" if config.text_only else ("none" if blank else "images"),
    )
    return 0
