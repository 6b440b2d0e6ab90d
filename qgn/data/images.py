"""Finding, checking and opening the post images.

Accepted folder layouts (docs/data.md, "Images"): one flat folder of ``<id>.jpg`` files (as MQSPN
expects), or the official archive's ``twitter2015_images/`` and ``twitter2017_images/`` sub-folders.
``.jpeg`` and ``.png`` are accepted too. Missing or unreadable images are handled by a policy:

- ``fail``: raise, naming the count, the first ids and the folders searched (default for training);
- ``skip``: drop those posts, with a warning giving the count;
- ``text_only``: keep the posts with ``image_path = None`` (the model sees a blank placeholder).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image, ImageOps

from qgn.data.records import Post
from qgn.errors import DataError, QGNError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
SOURCE_FOLDERS = ("twitter2015_images", "twitter2017_images")
MISSING_IMAGE_POLICIES = ("fail", "skip", "text_only")
# A PIL decode failure can surface as any of these (truncated files, bad headers, huge images).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
# PIL warns through `warnings` about images over Image.MAX_IMAGE_PIXELS (a raw multi-line message
# on stderr); load_image logs its own line instead.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageResolver:
    """Maps a post id to ``<id>.jpg|.jpeg|.png`` under ``image_dir``.

    The flat folder is searched first, then the source sub-folder the id suggests (numeric ids are
    Twitter-2015, others Twitter-2017), then the other one.
    """

    def __init__(self, image_dir: str | Path):
        self.root = Path(os.path.normpath(Path(image_dir).absolute()))
        if not self.root.is_dir():
            raise QGNError(f"image folder not found: {self.root}")
        self.subfolders = {name: self.root / name for name in SOURCE_FOLDERS if (self.root / name).is_dir()}
        self._index: dict[Path, dict[str, str]] = {}

    @property
    def searched_folders(self) -> list[str]:
        return [str(self.root), *(str(p) for p in self.subfolders.values())]

    def candidate_folders(self, post_id: str) -> list[Path]:
        likely = list(SOURCE_FOLDERS) if post_id.isdigit() else list(reversed(SOURCE_FOLDERS))
        return [self.root, *(self.subfolders[name] for name in likely if name in self.subfolders)]

    def _files(self, folder: Path) -> dict[str, str]:
        # One listing per folder (thousands of images) instead of one stat call per id and extension.
        if folder not in self._index:
            by_stem: dict[str, str] = {}
            entries = sorted(os.listdir(folder), key=lambda n: _extension_rank(n))
            for name in entries:
                stem, ext = os.path.splitext(name)
                if ext.lower() in IMAGE_EXTENSIONS:
                    by_stem.setdefault(stem, name)
            self._index[folder] = by_stem
        return self._index[folder]

    def find(self, post_id: str) -> str | None:
        """The image path of ``post_id``, or ``None`` when no folder holds it."""
        for folder in self.candidate_folders(post_id):
            name = self._files(folder).get(post_id)
            if name is not None:
                return str(folder / name)
        return None


def _extension_rank(name: str) -> int:
    ext = os.path.splitext(name)[1].lower()
    return IMAGE_EXTENSIONS.index(ext) if ext in IMAGE_EXTENSIONS else len(IMAGE_EXTENSIONS)


# EXIF orientations that turn the stored frame by 90 degrees: the viewer's width is the file's height.
_SIDEWAYS_ORIENTATIONS = (5, 6, 7, 8)
_EXIF_ORIENTATION = 0x0112


def _too_large(path: str | Path, err: Exception) -> DataError:
    limit = 2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6
    return DataError(f"image too large to decode safely: over {limit:g} megapixels; shrink it", path=str(path))


def image_size(file: str | Path | BinaryIO, name: str | None = None) -> tuple[int, int]:
    """``(W, H)`` as stored, from the file's header alone: nothing is decoded, so a server can
    refuse a 100-megapixel upload before it costs memory. :class:`DataError` if it is no image
    (or one too large for PIL to open at all)."""
    name = str(file) if name is None else name
    try:
        with Image.open(file) as image:
            return image.size
    except Image.DecompressionBombError as err:
        raise _too_large(name, err) from None
    except _DECODE_ERRORS as err:
        raise DataError(f"cannot read image ({_decode_message(err, file, name)})", path=name) from None


def _decode_message(err: Exception, file: Any, name: str) -> str:
    """PIL's message with an open file's repr (``<_io.BytesIO object at 0x...>``) replaced by its name."""
    text = str(err)
    if not isinstance(file, (str, Path)):
        text = text.replace(repr(file), repr(name))
    return f"{type(err).__name__}: {text}"


def probe_image(path: str) -> tuple[tuple[int, int] | None, str | None]:
    """``((W, H), None)`` for an image that decodes fully, ``(None, reason)`` otherwise.

    ``(W, H)`` is the size a viewer shows: turned by the EXIF orientation, as :func:`load_image`
    turns the pixels. The whole file is decoded, so a truncated JPEG is found here, before any
    training starts, and not at some step of an epoch.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(_EXIF_ORIENTATION)
            image.load()
        if orientation in _SIDEWAYS_ORIENTATIONS:
            width, height = height, width
        return (width, height), None
    except FileNotFoundError:
        return None, "file not found"
    except Image.DecompressionBombError as err:
        return None, f"too large to decode safely: {err}"
    except _DECODE_ERRORS as err:
        return None, f"{type(err).__name__}: {err}"


@dataclass
class ImageCheck:
    """Outcome of looking up the images of a list of posts.

    Attributes:
        paths: per post, the readable image path or ``None``.
        sizes: per post, the image ``(W, H)`` or ``None``.
        missing: indices of posts with no image file.
        unreadable: ``(index, path, reason)`` of posts whose file PIL cannot read.
        folders: the folders searched (for messages).
        size_mismatches: posts whose file size differs from their xml ``<size>``.
    """

    paths: list[str | None]
    sizes: list[tuple[int, int] | None]
    missing: list[int] = field(default_factory=list)
    unreadable: list[tuple[int, str, str]] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)
    size_mismatches: list[int] = field(default_factory=list)

    @property
    def bad(self) -> set[int]:
        return set(self.missing) | {i for i, _, _ in self.unreadable}


def check_images(posts: Sequence[Post], image_dir: str | Path | None = None) -> ImageCheck:
    """Find and verify each post's image without changing the posts.

    A post's own ``image_path`` (from JSONL) is checked as given; otherwise the id is looked up
    in ``image_dir``. With neither, the image counts as missing.
    """
    resolver = ImageResolver(image_dir) if image_dir is not None else None
    check = ImageCheck([None] * len(posts), [None] * len(posts), folders=resolver.searched_folders if resolver else [])
    for i, post in enumerate(posts):
        path = post.image_path or (resolver.find(post.id) if resolver else None)
        if path is None or not os.path.isfile(path):
            check.missing.append(i)
            if post.image_path and os.path.dirname(post.image_path) not in check.folders:
                check.folders.append(os.path.dirname(post.image_path))
            continue
        size, reason = probe_image(path)
        if size is None:
            check.unreadable.append((i, path, reason or "unreadable"))
            continue
        check.paths[i], check.sizes[i] = path, size
        if post.image_size is not None and tuple(post.image_size) != size:
            check.size_mismatches.append(i)
    return check


def describe_image_problems(posts: Sequence[Post], check: ImageCheck) -> str:
    """One line: counts, the first ids and the folders searched."""
    first = ", ".join(posts[i].id for i in sorted(check.bad)[:5])
    unreadable = "; ".join(f"{path} ({reason})" for _, path, reason in check.unreadable[:2])
    return (
        f"{len(check.missing)} of {len(posts)} posts have no image file and {len(check.unreadable)} "
        f"have an unreadable one (first ids: {first})"
        + (f"; unreadable e.g. {unreadable}" if unreadable else "")
        + f"; looked in: {', '.join(check.folders) or '(no image folder given)'}"
    )


def resolve_images(
    posts: list[Post], image_dir: str | Path | None, policy: str = "fail", report: Any = None
) -> list[Post]:
    """Set ``image_path`` (and a missing ``image_size``) on each post; apply ``policy`` to the rest.

    Args:
        posts: posts, changed in place.
        image_dir: image folder; ``None`` uses only the posts' own ``image_path``.
        policy: ``fail`` (raise :class:`QGNError`), ``skip`` (drop those posts, with a warning) or
            ``text_only`` (keep them with ``image_path = None``, with a warning).
        report: a :class:`~qgn.data.twitter.ReadReport` that gets the ``skip`` counts.

    Returns:
        The kept posts, in their order.
    """
    if policy not in MISSING_IMAGE_POLICIES:
        raise QGNError(f"missing-image policy must be one of {', '.join(MISSING_IMAGE_POLICIES)}, got {policy!r}")
    check = check_images(posts, image_dir)
    bad = check.bad
    message = describe_image_problems(posts, check) if bad else ""
    if bad and policy == "fail":
        raise QGNError(f"{message}. Use the 'skip' or 'text_only' missing-image policy to go on without them")
    for post, path, size in zip(posts, check.paths, check.sizes):
        post.image_path = path
        if path is not None and post.image_size is None:
            post.image_size = size
    if check.size_mismatches:
        # Boxes are in the xml's pixel space, so the xml size is kept; a different file size usually
        # means a re-encoded or thumbnail image, and boxes drawn on it would be off.
        example = posts[check.size_mismatches[0]]
        logger.warning(
            "%d images differ in size from their annotation's <size> (e.g. %s); keeping the annotation size",
            len(check.size_mismatches),
            example.id,
        )
    if not bad:
        return posts
    if policy == "skip":
        logger.warning("skipping %d posts without a usable image: %s", len(bad), message)
        if report is not None:
            report.skipped_posts += len(bad)
            report.skipped_entities += sum(len(posts[i].entities) for i in bad)
        return [post for i, post in enumerate(posts) if i not in bad]
    logger.warning("%d posts have no usable image and are kept text-only: %s", len(bad), message)
    return posts


def maybe_resolve_images(
    posts: list[Post], image_dir: str | Path | None, policy: str | None, report: Any = None
) -> list[Post]:
    """Resolve images only when the data has some: an ``image_dir``, or JSONL ``image`` fields.

    With JSONL image paths and no ``image_dir``, ``policy=None`` keeps the paths unchecked (scoring
    needs no images); an explicit policy checks them.
    """
    if image_dir is None and (policy is None or not any(post.image_path for post in posts)):
        return posts
    return resolve_images(posts, image_dir, policy or "fail", report)


def load_image(path: str | Path | BinaryIO, name: str | None = None) -> Image.Image:
    """Open an image the way every part of qgn does: decoded now, turned upright by its EXIF
    orientation (a phone photo is seen as its owner sees it, and pixel boxes are in that frame),
    converted to RGB (grayscale, palette, alpha). :class:`DataError` naming the file if it is
    missing, unreadable, truncated or too large to decode safely (PIL's decompression-bomb limit).
    ``path`` may be an open binary file (an upload); ``name`` is then what errors call it."""
    name = str(path) if name is None else name
    image = result = None
    try:
        image = Image.open(path)
        if Image.MAX_IMAGE_PIXELS and image.width * image.height > Image.MAX_IMAGE_PIXELS:
            logger.warning(
                "%s is %.0f megapixels: decoding it takes about %.1f GB of memory",
                name,
                image.width * image.height / 1e6,
                image.width * image.height * 3 / 1e9,
            )
        image.load()  # decode now, so a truncated file fails here rather than in a worker
        result = upright(image)
        if result is image and getattr(image, "n_frames", 1) > 1:
            result = image.copy()  # a multi-frame file keeps its file open: keep the frame, close the file
    except FileNotFoundError:
        raise DataError("image file not found", path=name) from None
    except Image.DecompressionBombError as err:
        raise _too_large(name, err) from None
    except _DECODE_ERRORS as err:
        raise DataError(f"cannot read image ({_decode_message(err, path, name)})", path=name) from None
    finally:
        if image is not None and result is not image:
            image.close()
    # Without a `with` block: an upright RGB image is returned as decoded, not copied (a copy of a
    # 40-megapixel upload is 120 MB more at the server's peak); single-frame files are closed by load().
    return result


def upright(image: Image.Image) -> Image.Image:
    """An in-memory PIL image turned by its EXIF orientation and converted to RGB (see
    :func:`load_image`); ``image`` itself when it is upright RGB already. Transparent pixels are
    shown on white, as a viewer shows them (their stored colour is hidden and often arbitrary), and
    16-bit grayscale is scaled to 8 bits (PIL's own conversion clips it to white)."""
    if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode.startswith("I") or image.mode == "F":
        import numpy as np

        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        gray = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    return image.convert("RGB")
