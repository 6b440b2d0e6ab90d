"""The web service: ``GET /`` (the demo page), ``POST /api/predict``, ``GET /healthz``.

One FastAPI app around one loaded :class:`qgn.api.Predictor`. The page is a single static file
(``static/index.html``: its script and style inline, nothing fetched from elsewhere), so it works
on a machine with no internet access. Boxes are drawn by the page on a canvas from the JSON answer,
so the API and the page show the same thing.
"""

# No `from __future__ import annotations`: FastAPI reads the route annotations at run time.

import io
import logging
import threading
from dataclasses import dataclass
from importlib import resources
from typing import Any

from qgn.errors import QGNError

logger = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_MB = 20.0
# 40 megapixels: any phone photo (12-24 MP, 48 MP sensors save 12 MP by default), well under PIL's
# 89 MP warning; a decoded 40 MP image is 120 MB of RGB, and at most one is decoded at a time.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
# Above this, the freed pixel buffers are handed back to the OS after the request (see _release_memory).
_LARGE_IMAGE_PIXELS = 4_000_000
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
MAX_TEXT_CHARS = 10_000  # a post, not a book: longer texts are truncated by the encoder anyway


@dataclass
class Example:
    """A post offered on the page: its text and its image's bytes (JPEG or PNG)."""

    text: str
    image: bytes
    media_type: str = "image/jpeg"


def synthetic_examples(count: int = 3) -> list[Example]:
    """Test posts of the embedded synthetic benchmark (what ``qgn demo`` trains on), rendered in
    memory; the page offers them when no ``--examples`` file is given."""
    from qgn.data.synthetic import make_post, render_image

    # generate_synthetic_benchmark's defaults (seed 0, 128x96 images, 25 % size jitter): the demo's own test posts
    examples: list[Example] = []
    index = 0
    while len(examples) < count:
        post = make_post(0, "test", index, (128, 96), 0.25)
        index += 1
        if any(obj.name for obj in post.objects):  # posts with something to ground
            examples.append(Example(" ".join(post.tokens), render_image(post, 0)))
    return examples


def read_examples(path: str) -> list[Example]:
    """``{"text", "image"}`` per line of a JSON-lines file (image paths relative to the file)."""
    from pathlib import Path

    from qgn.data.jsonl import iter_json_lines
    from qgn.errors import DataError

    file = Path(path)
    examples = []
    for number, row in iter_json_lines(file, what="examples file"):
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not isinstance(row.get("image"), str):
            raise DataError('each line needs "text" and "image" strings', str(file), number)
        image = Path(row["image"]) if Path(row["image"]).is_absolute() else file.parent / row["image"]
        if not image.is_file():
            raise DataError(f"image not found: {image}", str(file), number)
        media = "image/png" if image.suffix.lower() == ".png" else "image/jpeg"
        examples.append(Example(row["text"], image.read_bytes(), media))
    return examples


def _release_memory() -> None:
    """Give freed heap memory back to the OS (glibc's malloc_trim). Decoded images are freed after
    each request, but glibc keeps the pages of freed chunks below its mmap threshold (which grows to
    32 MB after large frees): without this, a burst of large uploads leaves the server at its peak."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        pass


def _docs_assets() -> Any:
    """The folder of Swagger UI's files (the swagger-ui-py package of the serve extra), or None."""
    try:
        return resources.files("swagger_ui").joinpath("static")
    except ModuleNotFoundError:
        return None


def create_app(
    predictor: Any,
    examples: list[Example] | None = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    title: str = "QGN",
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> Any:
    """The FastAPI app serving ``predictor``. ``examples`` are offered on the page; uploads over
    ``max_upload_mb`` megabytes or ``max_image_pixels`` pixels are refused (413) before decoding."""
    try:
        from fastapi import FastAPI, File, Form, Request, UploadFile
        from fastapi.exceptions import RequestValidationError
        from fastapi.openapi.docs import get_swagger_ui_html
        from fastapi.responses import HTMLResponse, JSONResponse, Response
    except ImportError as err:
        raise QGNError(f"qgn serve needs the serve extra: pip install 'qgn[serve]' ({err})") from None
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from qgn.api import entity_dict
    from qgn.data.images import image_size, load_image

    examples = list(examples or [])
    max_bytes = int(max_upload_mb * 1024 * 1024)
    lock = threading.Lock()  # one prediction at a time: the model is shared and torch uses every core
    page = resources.files("qgn.serving").joinpath("static/index.html").read_text(encoding="utf-8")
    page = page.replace("{{TITLE}}", title)
    # /docs is served from local files (Swagger UI of the swagger-ui-py package), not FastAPI's
    # default CDN, which leaves the page blank on a machine without internet access.
    app = FastAPI(title=f"{title} (qgn serve)", docs_url=None, redoc_url=None)
    assets = _docs_assets()
    docs_files = {
        "swagger-ui-bundle.js": "text/javascript",
        "swagger-ui.css": "text/css",
        "favicon-32x32.png": "image/png",
    }

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    # Every client mistake answers {"error": "..."} with a 4xx, never FastAPI's nested detail or a 500.
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        missing = [str(e["loc"][-1]) for e in exc.errors() if e.get("type") == "missing"]
        if missing:
            return error(422, f"missing form field(s): {', '.join(missing)} (send multipart fields image and text)")
        return error(422, "; ".join(str(e.get("msg")) for e in exc.errors()) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/docs", include_in_schema=False)
    def docs() -> Any:
        if assets is None:
            return error(
                404, "the API page needs the serve extra: pip install 'qgn[serve]' (the schema is at /openapi.json)"
            )
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{title} API",
            swagger_js_url="/docs-files/swagger-ui-bundle.js",
            swagger_css_url="/docs-files/swagger-ui.css",
            swagger_favicon_url="/docs-files/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},
        )  # no badge from swagger.io

    @app.get("/docs-files/{name}", include_in_schema=False)
    def docs_file(name: str) -> Response:
        if assets is None or name not in docs_files:
            return error(404, f"no file {name}")
        return Response(
            assets.joinpath(name).read_bytes(),
            media_type=docs_files[name],
            headers={"Cache-Control": "public, max-age=86400"},
        )

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        config = predictor.config
        return {
            "status": "ok",
            "entity_types": list(config.entity_types),
            "text_only": bool(config.text_only),
            "device": str(predictor.device),
        }

    @app.get("/api/examples")
    def list_examples() -> dict[str, Any]:
        return {"examples": [{"id": i, "text": e.text, "image": f"/examples/{i}"} for i, e in enumerate(examples)]}

    @app.get("/examples/{index}")
    def example_image(index: int) -> Response:
        if not 0 <= index < len(examples):
            return error(404, f"no example {index}")
        return Response(examples[index].image, media_type=examples[index].media_type)

    @app.post("/api/predict")
    def predict(request: Request, text: str = Form(""), image: UploadFile | None = File(None)) -> Any:
        # A plain def: FastAPI runs it in its thread pool, so a long prediction does not block the server.
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind not in FORM_TYPES:
            return error(
                415,
                f"send multipart/form-data with the fields image (a file) and text, not "
                f"{kind or 'a body without a content type'} (curl -F image=@photo.jpg -F text=...)",
            )
        if not text.strip():
            return error(400, "empty text: give the post's text")
        if len(text) > MAX_TEXT_CHARS:
            return error(413, f"text too long: {len(text)} characters (at most {MAX_TEXT_CHARS})")
        data = None
        if image is not None and image.filename:
            data = image.file.read(max_bytes + 1)
            if len(data) > max_bytes:
                return error(413, f"image too large: over {max_upload_mb:g} MB (qgn serve --max-upload-mb)")
            if not data:
                return error(400, "the uploaded image is empty")
            try:  # the header only: a pixel bomb is refused before it is decoded
                width, height = image_size(io.BytesIO(data), name=image.filename)
            except QGNError as err:
                status = 413 if "too large" in str(err) else 415
                return error(status, f"not a readable image: {err}" if status == 415 else str(err))
            if width * height > max_image_pixels:
                return error(
                    413,
                    f"image too large: {width} x {height} pixels ({width * height / 1e6:.1f} "
                    f"megapixels), over this server's limit of {max_image_pixels / 1e6:g} megapixels "
                    "(qgn serve --max-image-pixels)",
                )
        elif not predictor.config.text_only:
            return error(400, "no image: this model grounds entities in an image; send the multipart field image")
        large = data is not None and width * height > _LARGE_IMAGE_PIXELS
        try:
            with lock:  # decoded under the lock too: at most one full-size image in memory at a time
                picture = None
                if data is not None:
                    try:
                        picture = load_image(io.BytesIO(data), name=image.filename)  # type: ignore[union-attr]  # data comes from image
                    except QGNError as err:  # a header that reads, pixels that do not (a truncated file)
                        return error(415, f"not a readable image: {err}")
                size = list(picture.size) if picture is not None else None
                post, img = predictor.make_post(text, picture)
                del picture
                predictions = predictor.predict_posts([post], [img])[0]
                del img
                read = predictor.words_read(post)
        except QGNError as err:
            return error(400, str(err))
        finally:
            data = None
            if large:
                _release_memory()
        answer = {
            "entities": [entity_dict(post, p) for p in predictions],
            "image_size": size,
            "words": len(post.tokens),
            "words_read": read,
        }
        if read < len(post.tokens):  # said, not silent: an entity past the cut is never found
            answer["warning"] = (
                f"the text is longer than the model reads (max_text_length="
                f"{predictor.config.max_text_length} sub-words): only its first {read} of "
                f"{len(post.tokens)} words were read, no entity after them is found"
            )
        return answer

    return app


def serve(
    checkpoint: str,
    host: str = "127.0.0.1",
    port: int = 7860,
    device: str | None = None,
    precision: str = "fp32",
    examples_file: str | None = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    **thresholds: Any,
) -> None:
    """Load ``checkpoint`` (``thresholds`` override its post-processing) and serve it with uvicorn
    until interrupted."""
    try:
        import uvicorn
    except ImportError as err:
        raise QGNError(f"qgn serve needs the serve extra: pip install 'qgn[serve]' ({err})") from None
    from qgn.api import load

    predictor = load(checkpoint, device=device, precision=precision, **thresholds)
    examples = read_examples(examples_file) if examples_file else synthetic_examples()
    app = create_app(predictor, examples, max_upload_mb=max_upload_mb, max_image_pixels=max_image_pixels)
    logger.info("serving %s on http://%s:%d (page /, API POST /api/predict, health /healthz)", checkpoint, host, port)
    uvicorn.run(app, host=host, port=port, log_level="info")
