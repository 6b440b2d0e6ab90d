"""Draw predicted (and optionally gold) entity boxes with labels on an image."""

from __future__ import annotations

from typing import Iterable

from PIL import Image, ImageDraw, ImageFont

PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"]


def draw_entities(
    image: Image.Image,
    entities: Iterable[dict],
    gold: Iterable[dict] = (),
    width: int | None = None,
) -> Image.Image:
    """Return a copy of ``image`` with boxes and ``"text (TYPE score)"`` labels.

    ``entities`` are dicts with ``text``, ``type``, ``box`` ([x1, y1, x2, y2] pixels or None) and
    optionally ``score``. Entities without a box are listed in the top-left corner. ``gold``
    entities (same keys) are drawn as thin white dashed-free outlines for comparison.
    """
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    line = width or max(1, round(max(canvas.size) / 200))
    for g in gold:
        if g.get("box") is not None:
            draw.rectangle(list(g["box"]), outline="white", width=max(1, line // 2))
    unboxed = []
    for i, ent in enumerate(entities):
        colour = PALETTE[i % len(PALETTE)]
        label = f"{ent['text']} ({ent['type']}" + (f" {ent['score']:.2f})" if ent.get("score") is not None else ")")
        if ent.get("box") is None:
            unboxed.append((label + " - no box", colour))
            continue
        x1, y1, x2, y2 = ent["box"]
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=line)
        tx, ty = x1 + 2, max(0, y1 - 12)
        bbox = draw.textbbox((tx, ty), label, font=font)
        draw.rectangle(bbox, fill=colour)
        draw.text((tx, ty), label, fill="white", font=font)
    y = 2
    for label, colour in unboxed:
        bbox = draw.textbbox((2, y), label, font=font)
        draw.rectangle(bbox, fill="black")
        draw.text((2, y), label, fill=colour, font=font)
        y = bbox[3] + 2
    return canvas
