"""``qgn predict``: run a trained checkpoint on one (image, text) post or a JSON-lines batch."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterator, TextIO

from qgn.errors import DataError, QGNError


def _batch_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | DataError]]:
    """``(line number, row)`` of each non-blank input line, or ``(line, DataError)`` for a bad one
    (the others still run). A row is ``{"id", "text" or "tokens", "image"}``; image paths are
    relative to the file's folder; a repeated id is an error for the whole file."""
    from qgn.data.jsonl import parse_json_lines

    seen: dict[str, int] = {}
    for number, obj in parse_json_lines(path, what="input file"):
        if isinstance(obj, DataError):  # bad JSON: reported, the other lines still run
            yield number, obj
            continue
        if not isinstance(obj, dict) or not (isinstance(obj.get("text"), str) or "tokens" in obj):
            yield number, DataError('each line needs a "text" string or a "tokens" list (and optional "id", '
                                    '"image")', str(path), number)
            continue
        post_id = str(obj.get("id", number))
        if post_id in seen:
            raise DataError(f"id {post_id!r} repeats the post of line {seen[post_id]}; ids must be unique",
                            str(path), number)
        seen[post_id] = number
        image = obj.get("image")
        if image is not None and not isinstance(image, str):
            yield number, DataError('"image" must be a path string', str(path), number)
            continue
        if image is not None and not Path(image).is_absolute():
            image = str(path.parent / image)
        yield number, {"id": post_id, "text": obj.get("text"), "tokens": obj.get("tokens"), "image": image}


def predict_file(predictor: Any, path: Path, out: TextIO, batch_size: int = 16) -> tuple[int, list[str]]:
    """Predict every good line of a JSON-lines input into ``out`` (input order), ``batch_size``
    posts in memory at a time. Returns the number of posts written and one message per bad line."""
    written, failures = 0, []
    chunk: list[tuple[Any, Any]] = []

    def flush() -> None:
        nonlocal written
        if not chunk:
            return
        results = predictor.predict_posts([p for p, _ in chunk], [img for _, img in chunk], batch_size=batch_size)
        from qgn.api import entity_dict

        for (post, _), preds in zip(chunk, results):
            out.write(json.dumps({"id": post.id, "entities": [entity_dict(post, e) for e in preds]},
                                 ensure_ascii=False) + "\n")
        out.flush()
        written += len(chunk)
        chunk.clear()

    for number, row in _batch_rows(path):
        if isinstance(row, DataError):
            failures.append(str(row))
            continue
        try:
            chunk.append(predictor.make_post(row["text"], row["image"], post_id=row["id"], tokens=row["tokens"]))
        except QGNError as err:
            failures.append(str(err) if isinstance(err, DataError) and err.line else f"{path}:{number}: {err}")
            continue
        if len(chunk) >= batch_size:
            flush()
    flush()
    return written, failures


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "predict",
        help="find and ground the entities of new posts",
        description="Predict entities (word span, character offsets, text, type, score, pixel box or null).",
    )
    p.add_argument("--checkpoint", required=True, help="a QGN checkpoint folder (a run's best/)")
    p.add_argument("--image", help="image file of the post")
    p.add_argument("--text", help="text of the post")
    p.add_argument("--input", help='JSON-lines batch: {"id", "text" or "tokens", "image"} per line; "tokens" (a '
                   "benchmark's words) makes the word indices refer to them, so the output scores with qgn evaluate")
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
        if args.draw or args.image:
            raise QGNError("--draw and --image are for one post (--text); with --input each line names its image")
        out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
        try:
            written, failures = predict_file(predictor, Path(args.input), out, batch_size=args.batch_size)
        finally:
            if out is not sys.stdout:
                out.close()
        for message in failures:
            print(f"qgn predict: skipped {message}", file=sys.stderr)
        where = f" to {args.output}" if args.output else ""
        print(f"wrote predictions for {written} posts{where}"
              + (f"; {len(failures)} lines failed (listed above)" if failures else ""), file=sys.stderr)
        return 1 if failures else 0

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
        if Path(args.draw).suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp", ".bmp"):
            raise QGNError(f"--draw {args.draw}: give a picture file name ending in .png or .jpg")
        from qgn.data.images import load_image
        from qgn.visualize import draw_entities

        # upright, as the model saw it: the boxes are in that frame
        draw_entities(load_image(args.image), entities).save(args.draw)
        print(f"drew the entities on {args.draw}", file=sys.stderr)
    return 0
