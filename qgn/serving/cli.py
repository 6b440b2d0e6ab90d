"""``qgn serve``: the web demo page and JSON API of a checkpoint."""

from __future__ import annotations

from typing import Any

from qgn.serving.app import DEFAULT_MAX_UPLOAD_MB


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
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"],
                   help="fp32 (default), bf16 autocast, or auto (bf16 where the GPU or CPU has bf16 units)")
    p.add_argument("--examples", help='JSON-lines file of {"text", "image"} posts the page offers (default: a few '
                   "posts of the synthetic demo benchmark)")
    p.add_argument("--score-threshold", type=float, help="override the checkpoint's entity score threshold")
    p.add_argument("--no-target-threshold", type=float, help="override the no-target (no box) threshold")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                   help=f"largest image accepted (default {DEFAULT_MAX_UPLOAD_MB:g} MB)")
    p.set_defaults(func=_main)


def _main(args: Any) -> int:
    from qgn.serving.app import serve

    thresholds = {name: value for name, value in (("score_threshold", args.score_threshold),
                                                  ("no_target_threshold", args.no_target_threshold))
                  if value is not None}
    serve(args.checkpoint, host=args.host, port=args.port, device=args.device, precision=args.precision,
          examples_file=args.examples,
          max_upload_mb=args.max_upload_mb, **thresholds)
    return 0
