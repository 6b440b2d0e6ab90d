"""Training-time augmentation of the model's input that keeps every gold box right (not in the paper).

Why: a tiny model trained from scratch sees each look of the demo's benchmarks in a few dozen
posts, and on the harder variants it placed 83 % of the training entities right against 72 %
of the dev ones. A mirrored or smaller view of a post is a new example of the same binding for
free: the look of a name does not change when the picture is mirrored or drawn smaller.
Measured on the ``mixed`` variant's dev split, 12 epochs: no gain (flip 0.5: 71.5, flip and
zoom 0.5: 70.0, none: 72.2; docs/benchmarks.md, "Transfer"), so every shipped config leaves it
off. Within 12 epochs the model is still short of fitting its training posts; more views of them
do not help it there.

Both operations work on the input as the model sees it (pixels already resized and normalised,
so a cached post is augmented without decoding its image again) and move the boxes with it:

* ``flip``: the image's own pixels mirrored left to right (the padding of ``pad`` stays where it
  is), and every box with them.
* ``zoom``: the image's pixels shrunk by a factor drawn from ``[min_scale, 1]`` (antialiased) and
  put at a random place of the area they covered; what is left around them is the mean colour (0
  after normalisation) and, where the input has a pixel mask, masked. Nothing is ever cropped,
  so no gold box is cut.

Each post's draws come from its own generator seeded by ``(seed, epoch, index)``: an epoch's
views are the same whatever the order, the number of processes, or a resume in the middle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class BoxSafeAugment:
    """Random flips and zoom-outs of a post's input pixels and boxes (module docstring).

    Attributes:
        flip: probability of a left-right mirror (0 = never).
        zoom: probability of a zoom-out (0 = never).
        min_scale: the smallest zoom-out factor (the image's pixels drawn this much smaller).
        seed: base seed of the per-post generators.
    """

    flip: float = 0.0
    zoom: float = 0.0
    min_scale: float = 0.6
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("flip", "zoom"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"augmentation probability {name} must be in [0, 1], got {value}")
        if not 0.0 < self.min_scale <= 1.0:
            raise ValueError(f"augmentation min_scale must be in (0, 1], got {self.min_scale}")

    @property
    def active(self) -> bool:
        return self.flip > 0 or (self.zoom > 0 and self.min_scale < 1)

    def __call__(
        self,
        pixels: torch.Tensor,
        mask: torch.Tensor | None,
        boxes: torch.Tensor,
        has_box: torch.Tensor,
        frame: tuple[float, float],
        epoch: int,
        index: int,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """One post's view.

        Args:
            pixels: (3, S, S) the model's input; mask: (S, S) bool, True on the image's pixels,
                or ``None`` when the image fills the square.
            boxes: (n, 4) normalised cxcywh in the square's frame; rows where ``has_box`` is
                False are left as they are.
            frame: the fraction (fx, fy) of the square that the image covers (top-left).
        Returns new tensors (the inputs, possibly cached, are never changed in place):
        ``(pixels, mask, boxes)``; ``mask`` stays ``None`` unless a zoom-out made a border.
        """
        rng = np.random.default_rng([self.seed, epoch, index])
        do_flip = rng.random() < self.flip
        do_zoom = rng.random() < self.zoom and self.min_scale < 1
        scale = float(rng.uniform(self.min_scale, 1.0)) if do_zoom else 1.0
        offset = rng.random(2)
        if not (do_flip or do_zoom):
            return pixels, mask, boxes
        side = pixels.shape[-1]
        fx, fy = float(frame[0]), float(frame[1])
        width, height = max(1, round(fx * side)), max(1, round(fy * side))
        content = pixels[:, :height, :width]
        boxes = boxes.clone()
        real = has_box.bool()
        if do_flip:
            content = content.flip(-1)
            boxes[real, 0] = fx - boxes[real, 0]
        if do_zoom:
            new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
            small = F.interpolate(content[None], size=(new_h, new_w), mode="bilinear", antialias=True)[0]
            left, top = int(offset[0] * (width - new_w + 1)), int(offset[1] * (height - new_h + 1))
            left, top = min(left, width - new_w), min(top, height - new_h)
            out = torch.zeros_like(pixels)
            out[:, top : top + new_h, left : left + new_w] = small
            new_mask = torch.zeros(side, side, dtype=torch.bool, device=pixels.device)
            if mask is not None:
                shrunk = F.interpolate(mask[None, None, :height, :width].float(), size=(new_h, new_w), mode="nearest")
                new_mask[top : top + new_h, left : left + new_w] = shrunk[0, 0] > 0
            else:
                new_mask[top : top + new_h, left : left + new_w] = True
            # the box maps as the pixels did: x -> left + x * new_w / width (in pixels of the square)
            sx, sy = new_w / width, new_h / height
            boxes[real, 0] = left / side + boxes[real, 0] * sx
            boxes[real, 1] = top / side + boxes[real, 1] * sy
            boxes[real, 2] = boxes[real, 2] * sx
            boxes[real, 3] = boxes[real, 3] * sy
            return out, new_mask, boxes
        out = pixels.clone()
        out[:, :height, :width] = content
        return out, mask, boxes
