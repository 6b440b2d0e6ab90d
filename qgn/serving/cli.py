"""``qgn serve``: the web demo page and JSON API of a checkpoint."""

from __future__ import annotations

from typing import Any

from qgn.engine.predict import add_inference_arguments, threshold_overrides
from qgn.serving.app import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_UPLOAD_MB


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a checkpoint: a web page (/) and a JSON API (POST /api/predict)",
        description="Serve a QGN checkpoint over HTTP. GET / is a page to upload an image, type the text and "
        "see the boxes; POST /api/predict takes multipart fields image and text and returns the entities as "
        "JSON (the schema of qgn predict --json); GET /healthz answers 200 once the model is loaded. "
        "Needs the serve extra: pip install 'qgn[serve]'.",
    )
    p.add_argument("--checkpoint", required=True, help="a QGN checkpoint folder (a run's best/) or a hub repo id")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    add_inference_arguments(p)
    p.add_argument(
        "--examples",
        help='JSON-lines file of {"text", "image"} posts the page offers (default: a few '
        "posts of the synthetic demo benchmark)",
    )
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=DEFAULT_MAX_UPLOAD_MB,
        help=f"largest image file accepted (default {DEFAULT_MAX_UPLOAD_MB:g} MB)",
    )
    p.add_argument(
        "--max-image-pixels",
        type=_positive_int,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        help=f"largest image accepted, in pixels (width x height; default {DEFAULT_MAX_IMAGE_PIXELS:,}), "
        "checked from the file's header before it is decoded: a small PNG can hold a huge image",
    )
    p.set_defaults(func=_main)


def _positive_int(text: str) -> int:
    import argparse

    try:
        value = int(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of pixels") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _main(args: Any) -> int:
    from qgn.serving.app import serve

    serve(
        args.checkpoint,
        host=args.host,
        port=args.port,
        device=args.device,
        precision=args.precision,
        examples_file=args.examples,
        max_upload_mb=args.max_upload_mb,
        max_image_pixels=args.max_image_pixels,
        **threshold_overrides(args),
    )
    return 0
