"""``qgn predict``: run a trained checkpoint on one (image, text) post or a JSON-lines batch."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from qgn.errors import DataError, QGNError


def _read_batch(path: Path) -> list[tuple[str, str | None, str]]:
    """``{"id": ..., "text": ..., "image": path}`` lines; image paths relative to the file's folder."""
    from qgn.data.jsonl import iter_json_lines

    rows = []
    for number, obj in iter_json_lines(path, what="input file"):
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise DataError('each line needs a "text" string (and optional "id", "image")', str(path), number)
        image = obj.get("image")
        if image is not None and not Path(image).is_absolute():
            image = str(path.parent / image)
        rows.append((str(obj.get("id", number)), image, obj["text"]))
    return rows


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "predict",
        help="find and ground the entities of new posts",
        description="Predict entities (word span, character offsets, text, type, score, pixel box or null).",
    )
    p.add_argument("--checkpoint", required=True, help="a QGN checkpoint folder (a run's best/)")
    p.add_argument("--image", help="image file of the post")
    p.add_argument("--text", help="text of the post")
    p.add_argument("--input", help='JSON-lines batch: {"id", "text", "image"} per line')
    p.add_argument("--output", help="write JSON lines here instead of stdout (with --input)")
    p.add_argument("--draw", help="write the image with labelled boxes here (single post)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a readable list")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--score-threshold", type=float, help="override the checkpoint's entity score threshold")
    p.add_argument("--no-target-threshold", type=float, help="override the no-target (no box) threshold")
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(func=_main)


def _main(args: Any) -> int:
    from qgn.api import load

    if bool(args.input) == bool(args.text is not None):
        raise QGNError("give either --text (with --image) for one post, or --input FILE.jsonl for a batch")
    thresholds = {}
    if args.score_threshold is not None:
        thresholds["score_threshold"] = args.score_threshold
    if args.no_target_threshold is not None:
        thresholds["no_target_threshold"] = args.no_target_threshold
    predictor = load(args.checkpoint, device=args.device, **thresholds)

    if args.input:
        rows = _read_batch(Path(args.input))
        results = predictor.predict_many([(image, text) for _, image, text in rows], batch_size=args.batch_size)
        out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
        try:
            for (post_id, _, _), entities in zip(rows, results):
                out.write(json.dumps({"id": post_id, "entities": entities}, ensure_ascii=False) + "\n")
        finally:
            if out is not sys.stdout:
                out.close()
        if args.output:
            print(f"wrote predictions for {len(rows)} posts to {args.output}", file=sys.stderr)
        return 0

    entities = predictor.predict(args.image, args.text)
    if args.json:
        print(json.dumps({"text": args.text, "image": args.image, "entities": entities}, ensure_ascii=False, indent=2))
    else:
        if not entities:
            print("no entities found")
        for e in entities:
            box = "no box" if e["box"] is None else "box " + ", ".join(f"{v:.0f}" for v in e["box"])
            print(f"{e['text']!r:<30} {e['type']:<8} score {e['score']:.2f}  {box}")
    if args.draw:
        if not args.image:
            raise QGNError("--draw needs --image")
        from PIL import Image

        from qgn.visualize import draw_entities

        with Image.open(args.image) as img:
            draw_entities(img, entities).save(args.draw)
        print(f"drew the entities on {args.draw}", file=sys.stderr)
    return 0
