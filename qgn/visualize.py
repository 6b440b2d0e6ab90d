"""Draw predicted (and optionally gold) entity boxes with labels on an image."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from PIL import Image, ImageDraw, ImageFont

PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"]
GOLD_COLOUR = "white"


def _font(size: int) -> Any:
    """PIL's bundled font at ``size`` pixels (FreeType); its fixed bitmap font where PIL has no FreeType."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError):  # Pillow < 10.1, or built without FreeType
        return ImageFont.load_default()


def _label(
    draw: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    text: str,
    font: Any,
    fill: str,
    background: str,
    size: tuple[int, int],
) -> tuple[int, int, int, int]:
    """``text`` on a filled box at ``xy``, moved left / down as needed to stay inside the image."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left + 4, bottom - top + 4
    x = min(max(0, xy[0]), max(0, size[0] - w))
    y = min(max(0, xy[1]), max(0, size[1] - h))
    draw.rectangle([x, y, x + w, y + h], fill=background)
    draw.text((x + 2 - left, y + 2 - top), text, fill=fill, font=font)
    return int(x), int(y), int(x + w), int(y + h)


def draw_entities(
    image: Image.Image,
    entities: Iterable[dict],
    gold: Iterable[dict] = (),
    width: int | None = None,
    min_side: int = 0,
) -> Image.Image:
    """Return a copy of ``image`` with boxes and ``"text (TYPE score)"`` labels.

    ``entities`` are dicts with ``text``, ``type``, ``box`` ([x1, y1, x2, y2] pixels or None) and
    optionally ``score``. Entities without a box are listed in the top-left corner. ``gold``
    entities (same keys) are drawn as thin white outlines, and a legend at the bottom says which
    outline is which. Labels are sized to the image (readable on a 4000-pixel photo) and kept
    inside it; ``min_side`` first enlarges a smaller image (by a whole factor, boxes with it) so
    that labels fit on a thumbnail.
    """
    canvas = image.convert("RGB").copy()
    scale = 1
    if min_side and max(canvas.size) < min_side:
        scale = -(-min_side // max(canvas.size))
        canvas = canvas.resize((canvas.width * scale, canvas.height * scale), Image.Resampling.NEAREST)
    scaled = lambda box: [v * scale for v in box]  # noqa: E731
    draw = ImageDraw.Draw(canvas)
    long_side = max(canvas.size)
    font = _font(max(10, round(long_side / 45)))
    line = width or max(1, round(long_side / 200))
    gold = [g for g in gold if g.get("box") is not None]
    for g in gold:
        draw.rectangle(scaled(g["box"]), outline=GOLD_COLOUR, width=max(1, line // 2))
    unboxed = []
    for i, ent in enumerate(entities):
        colour = PALETTE[i % len(PALETTE)]
        label = f"{ent['text']} ({ent['type']}" + (f" {ent['score']:.2f})" if ent.get("score") is not None else ")")
        if ent.get("box") is None:
            unboxed.append((label + " - no box", colour))
            continue
        x1, y1, x2, y2 = scaled(ent["box"])
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=line)
        height = draw.textbbox((0, 0), label, font=font)[3] + 4
        # above the box where there is room, else just inside its top edge
        _label(draw, (x1, y1 - height if y1 >= height else y1 + line), label, font, "white", colour, canvas.size)
    y = 0
    for label, colour in unboxed:
        y = _label(draw, (0, y), label, font, colour, "black", canvas.size)[3] + 1
    if gold:
        legend = "white outline: gold box; coloured: predicted"
        height = draw.textbbox((0, 0), legend, font=font)[3] + 4
        _label(draw, (0, canvas.height - height), legend, font, "white", "black", canvas.size)
    return canvas
