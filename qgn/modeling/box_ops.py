"""Box utilities in pure torch (torchvision is not usable here).

Conventions: ``xyxy`` is ``(x1, y1, x2, y2)``, ``cxcywh`` is ``(cx, cy, w, h)``. Areas are
``w * h`` without the ``+1`` of old Pascal-VOC code, the convention of the Twitter-GMNER scorer.
Pairwise functions take ``(N, 4)`` and ``(M, 4)`` and return ``(N, M)``. The IoU / GIoU formulas
follow DETR's ``util/box_ops.py`` (Apache-2.0), rewritten here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Degenerate boxes (a zero-area prediction against a zero-area target) would give 0/0 = NaN,
# which makes scipy's assignment fail; a tiny floor turns that into IoU 0 and changes nothing else.
_EPS = 1e-12


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """``(..., 4)`` (cx, cy, w, h) -> ``(..., 4)`` (x1, y1, x2, y2)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """``(..., 4)`` (x1, y1, x2, y2) -> ``(..., 4)`` (cx, cy, w, h)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """``(..., 4)`` xyxy -> ``(...)`` areas ``(x2 - x1) * (y2 - y1)``."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise IoU of xyxy boxes.

    Args:
        boxes1: ``(N, 4)``; boxes2: ``(M, 4)``.
    Returns:
        ``(iou, union)``, both ``(N, M)``.
    """
    area1, area2 = box_area(boxes1), box_area(boxes2)
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return inter / union.clamp(min=_EPS), union


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise generalised IoU (Rezatofighi et al. 2019) of xyxy boxes, in ``[-1, 1]``.

    Args:
        boxes1: ``(N, 4)``; boxes2: ``(M, 4)``; every box must have ``x2 >= x1`` and ``y2 >= y1``
            (an inverted box makes the enclosing-area term meaningless, so it is refused).
    Returns:
        ``(N, M)``.
    """
    if not bool((boxes1[:, 2:] >= boxes1[:, :2]).all()):
        raise ValueError("generalized_box_iou: boxes1 has boxes with x2 < x1 or y2 < y1")
    if not bool((boxes2[:, 2:] >= boxes2[:, :2]).all()):
        raise ValueError("generalized_box_iou: boxes2 has boxes with x2 < x1 or y2 < y1")
    iou, union = box_iou(boxes1, boxes2)
    top_left = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union) / enclosing.clamp(min=_EPS)


IMAGE_GEOMETRIES = ("stretch", "pad")


def content_size(image_size: Sequence[float], side: int) -> tuple[int, int]:
    """``(w, h)`` in pixels of an image of ``(W, H)`` once its longer side is resized to ``side``
    with its aspect ratio kept (``image_geometry="pad"``); each at least one pixel."""
    width, height = float(image_size[0]), float(image_size[1])
    longer = max(width, height)
    if longer <= 0:
        raise ValueError(f"image size must be positive, got {tuple(image_size)}")
    return max(1, int(round(width * side / longer))), max(1, int(round(height * side / longer)))


def image_frame(image_size: Sequence[float], side: int | None = None, geometry: str = "stretch") -> tuple[float, float]:
    """The fraction ``(fx, fy)`` of the model's square input that the image's pixels cover.

    ``stretch`` squashes the whole image onto the square, so it covers all of it: ``(1, 1)``.
    ``pad`` resizes the longer side to ``side`` and pads the right and bottom (as SAM's processor
    does), so the image covers the top-left ``content_size / side``. Normalised boxes are in the
    square's frame: a pixel ``x`` of the image is ``x / W * fx`` there, and this is also how a
    predicted box maps back, exactly, to the original image's pixels.
    """
    if geometry == "stretch":
        return 1.0, 1.0
    if geometry != "pad":
        raise ValueError(f"image_geometry must be one of {IMAGE_GEOMETRIES}, got {geometry!r}")
    if side is None:
        raise ValueError("image_geometry='pad' needs the model's input side")
    w, h = content_size(image_size, int(side))
    return w / int(side), h / int(side)


def normalize_boxes(
    boxes_xyxy: torch.Tensor, image_size: Sequence[float], frame: Sequence[float] = (1.0, 1.0)
) -> torch.Tensor:
    """Pixel xyxy ``(..., 4)`` -> normalised cxcywh in ``[0, 1]`` for an image of ``(W, H)``
    that covers the fraction ``frame`` of the model's input (:func:`image_frame`).

    Boxes are clamped to the image first, so a box drawn a pixel past the border stays valid.
    """
    width, height = float(image_size[0]), float(image_size[1])
    scale = boxes_xyxy.new_tensor([width, height, width, height])
    clamped = torch.min(boxes_xyxy.clamp(min=0), scale)
    fx, fy = float(frame[0]), float(frame[1])
    return box_xyxy_to_cxcywh(clamped / scale * boxes_xyxy.new_tensor([fx, fy, fx, fy]))


def denormalize_boxes(
    boxes_cxcywh: torch.Tensor, image_size: Sequence[float], frame: Sequence[float] = (1.0, 1.0)
) -> torch.Tensor:
    """Normalised cxcywh ``(..., 4)`` -> pixel xyxy clamped to an image of ``(W, H)``; the
    inverse of :func:`normalize_boxes` (a box reaching into the padding is cut at the image)."""
    width, height = float(image_size[0]), float(image_size[1])
    fx, fy = float(frame[0]), float(frame[1])
    scale = boxes_cxcywh.new_tensor([width / fx, height / fy, width / fx, height / fy])
    xyxy = box_cxcywh_to_xyxy(boxes_cxcywh) * scale
    return torch.min(xyxy.clamp(min=0), boxes_cxcywh.new_tensor([width, height, width, height]))


def patch_centres(grid: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(grid * grid, 2): the normalised (cx, cy) of each cell of a ViT patch grid, row-major like
    the patch tokens."""
    centres = (torch.arange(grid, device=device, dtype=dtype) + 0.5) / grid
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([cx.flatten(), cy.flatten()], dim=-1)
