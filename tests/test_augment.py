"""Box-safe training augmentation (qgn.data.augment): the boxes move exactly with the pixels."""

from __future__ import annotations

import pytest
import torch

from qgn.data.augment import BoxSafeAugment
from qgn.modeling.box_ops import box_cxcywh_to_xyxy


def _canvas(side: int, frame: tuple[float, float], box_px: tuple[int, int, int, int]):
    """A square input whose image covers ``frame`` (top-left), with one bright block at ``box_px``
    (x1, y1, x2, y2 in pixels of the square) and its normalised cxcywh box."""
    pixels = torch.full((3, side, side), -1.0)
    width, height = round(frame[0] * side), round(frame[1] * side)
    pixels[:, height:, :] = 0.0  # padding
    pixels[:, :, width:] = 0.0
    x1, y1, x2, y2 = box_px
    pixels[:, y1:y2, x1:x2] = 2.0
    mask = torch.zeros(side, side, dtype=torch.bool)
    mask[:height, :width] = True
    box = torch.tensor([[(x1 + x2) / 2 / side, (y1 + y2) / 2 / side, (x2 - x1) / side, (y2 - y1) / side]])
    return pixels, mask, box


def _block_extent(pixels: torch.Tensor) -> torch.Tensor:
    """xyxy (in pixels) of where the bright block now is (any channel above 1)."""
    ys, xs = torch.nonzero(pixels[0] > 1.0, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


@pytest.mark.parametrize("frame", [(1.0, 1.0), (1.0, 0.5), (0.5, 1.0)])
def test_a_flip_mirrors_the_image_and_its_box_and_keeps_the_padding(frame):
    side = 64
    pixels, mask, box = _canvas(side, frame, (4, 6, 14, 20))
    aug = BoxSafeAugment(flip=1.0)
    out, out_mask, out_box = aug(pixels, mask, box, torch.tensor([True]), frame, epoch=0, index=0)
    assert torch.equal(out_mask, mask), "a flip keeps the padding where it was"
    assert torch.equal(out[:, ~mask], pixels[:, ~mask])
    expected = box_cxcywh_to_xyxy(out_box)[0] * side
    assert torch.allclose(_block_extent(out), expected, atol=1e-4)
    assert torch.equal(pixels, _canvas(side, frame, (4, 6, 14, 20))[0]), "the (cached) input is unchanged"


@pytest.mark.parametrize("frame", [(1.0, 1.0), (1.0, 0.5)])
@pytest.mark.parametrize("index", range(6))
def test_a_zoom_out_moves_the_box_with_the_pixels_and_masks_the_border(frame, index):
    side = 64
    pixels, mask, box = _canvas(side, frame, (20, 8, 40, 24))
    aug = BoxSafeAugment(flip=0.5, zoom=1.0, min_scale=0.5, seed=3)
    out, out_mask, out_box = aug(
        pixels, None if frame == (1.0, 1.0) else mask, box, torch.tensor([True]), frame, 0, index
    )
    expected = box_cxcywh_to_xyxy(out_box)[0] * side
    # bilinear antialiasing blurs the block's edges by up to a pixel
    assert torch.allclose(_block_extent(out), expected, atol=1.01), (_block_extent(out), expected)
    assert out_box[0, 2] < box[0, 2] + 1e-6 and out_box[0, 3] < box[0, 3] + 1e-6
    assert out_mask is not None and out_mask.sum() < mask.sum()
    assert (out[:, ~out_mask] == 0).all(), "outside the shrunk image is the mean colour (0)"
    # the shrunk image stays inside the area the image covered: nothing is cropped
    rows, cols = torch.nonzero(out_mask, as_tuple=True)
    assert cols.max() < round(frame[0] * side) and rows.max() < round(frame[1] * side)


def test_views_are_drawn_per_post_and_epoch_and_box_less_rows_stay_zero():
    pixels, mask, box = _canvas(64, (1.0, 1.0), (20, 8, 40, 24))
    boxes = torch.cat([box, torch.zeros(1, 4)])
    has_box = torch.tensor([True, False])
    aug = BoxSafeAugment(flip=0.5, zoom=0.5, seed=1)
    views = {(e, i): aug(pixels, None, boxes, has_box, (1.0, 1.0), e, i)[2] for e in range(3) for i in range(4)}
    again = aug(pixels, None, boxes, has_box, (1.0, 1.0), 2, 3)[2]
    assert torch.equal(views[(2, 3)], again), "the same epoch and post give the same view (resume-safe)"
    assert len({tuple(v[0].tolist()) for v in views.values()}) > 3, "views differ between posts and epochs"
    assert all(torch.equal(v[1], torch.zeros(4)) for v in views.values())


def test_off_changes_nothing_and_bad_settings_fail():
    pixels, mask, box = _canvas(64, (1.0, 1.0), (20, 8, 40, 24))
    aug = BoxSafeAugment()
    assert not aug.active
    out, out_mask, out_box = aug(pixels, None, box, torch.tensor([True]), (1.0, 1.0), 0, 0)
    assert out is pixels and out_mask is None and out_box is box
    with pytest.raises(ValueError, match="probability"):
        BoxSafeAugment(flip=1.5)
    with pytest.raises(ValueError, match="min_scale"):
        BoxSafeAugment(zoom=0.5, min_scale=0.0)


# Through the trainer (train split only, resume exact): tests/test_engine.py,
# test_augmentation_reaches_the_train_split_only_and_resumes_exactly.
