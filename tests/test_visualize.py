"""``--draw`` pictures: labels inside the image and readable at any size, a legend for gold boxes."""

from __future__ import annotations

import numpy as np
from PIL import Image

from qgn.visualize import PALETTE, draw_entities


def coloured(canvas: Image.Image, hex_colour: str) -> np.ndarray:
    rgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
    return np.abs(np.asarray(canvas).astype(int) - rgb).sum(axis=2) < 12


def test_a_label_at_the_right_edge_of_a_small_image_stays_inside_it():
    image = Image.new("RGB", (128, 96), (90, 90, 90))
    entity = {"text": "Blue Comets", "type": "ORG", "score": 0.91, "box": [100, 2, 127, 40]}
    out = draw_entities(image, [entity], min_side=480)
    assert out.size == (512, 384)  # enlarged 4x for the label, boxes with it
    mask = coloured(out, PALETTE[0])
    columns = np.where(mask.any(axis=0))[0]
    # the label's background spans well left of the box (it was cut off at the right edge before)
    assert columns.min() < 100 * 4 - 2 and columns.max() <= 511  # the box outline starts at x = 400


def test_labels_grow_with_the_image():
    heights = []
    for side in (400, 4000):
        image = Image.new("RGB", (side, side * 3 // 4), (90, 90, 90))
        box = [side * 0.3, side * 0.3, side * 0.6, side * 0.6]
        out = draw_entities(image, [{"text": "Anna", "type": "PER", "score": 0.9, "box": box}])
        mask = coloured(out, PALETTE[0])
        # rows of label background above the box
        above = np.where(mask[: int(box[1]) - 1].any(axis=1))[0]
        heights.append(len(above))
    assert heights[1] > 5 * heights[0] > 0


def test_gold_boxes_come_with_a_legend():
    image = Image.new("RGB", (300, 200), (90, 90, 90))
    plain = draw_entities(image, [], gold=[])
    with_gold = draw_entities(image, [], gold=[{"box": [10, 10, 60, 60]}])
    bottom = np.asarray(with_gold)[-12:]
    assert (bottom.sum(axis=2) == 0).any(), "the legend's black band"
    assert (np.asarray(plain)[-12:] == 90).all()
