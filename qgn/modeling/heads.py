"""The four prediction heads (paper Sec. III-C, "Multi-Head Prediction").

* type: 2-layer MLP -> C + 1 logits (last = no-entity).
* span start / end: scaled dot product between a projection of each query and a projection of
  each word feature, ``(Q W_q)(F_w W_w)^T / sqrt(d)`` -> (B, Nq, W), filled with -1e4 where
  ``word_mask`` is False (contract: finite, so fp16 and BCE stay finite).
* box: 3-layer MLP + sigmoid -> normalised (cx, cy, w, h) (DETR's box head).
* no-target: 2-layer MLP -> 2 logits (class 1 = the entity has no box).
Box and no-target heads do not exist in text-only mode.

:class:`BoxRefinement` (not in the paper, only with ``box_refine``) takes a second look at the
image inside each predicted box and corrects it.

:class:`AlignmentHead` (not in the paper, only with ``lambda_align > 0``) scores queries against
visual patches for the alignment loss (see :class:`qgn.modeling.configuration_qgn.QGNConfig`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qgn.modeling.box_ops import patch_centres
from qgn.modeling.layers import MASKED_LOGIT, MLP


def box_sampling_grid(box_logits: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """(B, Nq, k, k, 2) sampling positions (x, y) for ``grid_sample`` over each box: the box
    centre plus ``offsets`` (k values, in box widths / heights) along each axis, detached (the
    refinements read the image where the box is, they do not move it through the sampling).
    grid_sample's coordinates: -1 and 1 are the outer edges of the image (align_corners=False)."""
    cx, cy, w, h = box_logits.detach().float().sigmoid().unbind(-1)  # (B, Nq) each
    offsets = offsets.to(cx.dtype)
    xs = cx[..., None] + offsets * w[..., None]  # (B, Nq, k)
    ys = cy[..., None] + offsets * h[..., None]
    points = torch.stack(torch.broadcast_tensors(xs[..., None, :], ys[..., :, None]), dim=-1)
    return points * 2 - 1


def zero_last_layer_(mlp: MLP) -> None:
    """Zero an MLP's last layer, so the correction it adds starts at nothing."""
    nn.init.zeros_(mlp.layers[-1].weight)  # type: ignore[arg-type]  # a Linear's; ModuleList items are typed Module
    nn.init.zeros_(mlp.layers[-1].bias)  # type: ignore[arg-type]  # a Linear's; ModuleList items are typed Module


class SpanHead(nn.Module):
    """Boundary scores of every word for every query.

    forward(queries (B, Nq, d), words (B, W, d), word_mask (B, W) bool) -> (B, Nq, W)
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.query_proj = nn.Linear(hidden_size, hidden_size)
        self.word_proj = nn.Linear(hidden_size, hidden_size)
        self.scale = 1.0 / math.sqrt(hidden_size)

    def forward(self, queries: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        scores = self.query_proj(queries) @ self.word_proj(words).transpose(1, 2) * self.scale
        return scores.masked_fill(~word_mask.unsqueeze(1), MASKED_LOGIT)


class PredictionHeads(nn.Module):
    """forward(queries (B, Nq, d), words (B, W, d), word_mask (B, W) bool) -> dict with
    ``type_logits`` (B, Nq, C+1), ``start_logits`` / ``end_logits`` (B, Nq, W) and, unless
    text-only, ``pred_boxes`` (B, Nq, 4) in [0, 1] and ``notarget_logits`` (B, Nq, 2)."""

    def __init__(self, config: Any):
        super().__init__()
        d = config.hidden_size
        self.type_head = MLP(d, d, config.num_labels, num_layers=2)
        self.start_head = SpanHead(d)
        self.end_head = SpanHead(d)
        if config.text_only:
            self.box_head = self.notarget_head = None
        else:
            self.box_head = MLP(d, d, 4, num_layers=3)
            self.notarget_head = MLP(d, d, 2, num_layers=2)
        self.box_refine = BoxRefinement(d) if config.box_refine and not config.text_only else None
        self.pixel_refine = None
        if config.box_refine_pixels and not config.text_only:
            self.pixel_refine = PixelBoxRefinement(d, levels=pyramid_levels(config.pixel_refine_scale))

    def forward(
        self,
        queries: torch.Tensor,
        words: torch.Tensor,
        word_mask: torch.Tensor,
        box_reference: torch.Tensor | None = None,
        vision: torch.Tensor | None = None,
        pixels: torch.Tensor | Sequence[torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """``box_reference`` (B, Nq, 2), optional: a centre (cx, cy) in [0, 1] per query that the
        box head predicts an offset from, in logit space (Deformable DETR's reference points).
        ``vision`` (B, Nv, d), class token first: the tokens :class:`BoxRefinement` samples.
        ``pixels`` (B, 4, H, H): the input image (padding zeroed) and its pixel mask, which
        :class:`PixelBoxRefinement` samples (or that module's ``pyramid`` of it)."""
        outputs = {
            "type_logits": self.type_head(queries),
            "start_logits": self.start_head(queries, words, word_mask),
            "end_logits": self.end_head(queries, words, word_mask),
        }
        if self.box_head is not None and self.notarget_head is not None:
            box = self.box_head(queries)
            if box_reference is not None:
                centre = torch.logit(box_reference.to(box.dtype).clamp(1e-3, 1 - 1e-3))
                box = box + torch.cat([centre, torch.zeros_like(centre)], dim=-1)
            if self.box_refine is not None:
                if vision is None:
                    raise ValueError("box_refine needs the vision tokens")
                box = self.box_refine(queries, box, vision)
            if self.pixel_refine is not None:
                if pixels is None:
                    raise ValueError("box_refine_pixels needs the pixels")
                box = self.pixel_refine(queries, box, pixels)
            outputs["pred_boxes"] = box.sigmoid()
            outputs["notarget_logits"] = self.notarget_head(queries)
        return outputs


class BoxRefinement(nn.Module):
    """A second look inside each predicted box (RoIAlign-style, as in two-stage detectors and
    Sparse R-CNN): the patch grid is sampled bilinearly at ``points`` x ``points`` positions
    spread over the box, edges included, and an MLP reads them with the query and adds a
    correction to the box logits.

    The box from the query alone is only as precise as the alignment's patch grid (an 8 px cell
    of a 64 px image in the demo); what the image looks like at the box's edges tells which way
    to move them. The sampling positions are detached (Deformable DETR does the same between its
    refinement stages), and the last layer starts at zero, so training starts from the box
    head's own boxes.

    forward(queries (B, Nq, d), box_logits (B, Nq, 4) before the sigmoid, vision (B, Nv, d) with
    the class token first) -> corrected box logits (B, Nq, 4).
    """

    offsets: torch.Tensor  # a buffer (register_buffer), which mypy cannot see

    def __init__(self, hidden_size: int, points: int = 3):
        super().__init__()
        self.points = points
        self.sample_proj = nn.Linear(hidden_size, hidden_size // 4)
        self.mlp = MLP(hidden_size + points * points * (hidden_size // 4), hidden_size, 4, num_layers=2)
        self.start_as_identity_()
        # offsets from the centre in box widths/heights: -1/2 .. 1/2 (the edges and the middle)
        self.register_buffer("offsets", torch.linspace(-0.5, 0.5, points), persistent=False)

    def start_as_identity_(self) -> None:
        """Zero the last layer: no correction until training finds one."""
        zero_last_layer_(self.mlp)

    def forward(self, queries: torch.Tensor, box_logits: torch.Tensor, vision: torch.Tensor) -> torch.Tensor:
        batch, num_queries, _ = queries.shape
        grid = math.isqrt(vision.shape[1] - 1)
        patches = self.sample_proj(vision[:, 1:])  # (B, G, d/4)
        patches = patches.transpose(1, 2).reshape(batch, -1, grid, grid)
        points = box_sampling_grid(box_logits, self.offsets)  # (B, Nq, k, k, 2)
        points = points.reshape(batch, num_queries * self.points**2, 1, 2).to(patches.dtype)
        sampled = F.grid_sample(patches, points, mode="bilinear", padding_mode="border", align_corners=False)
        sampled = sampled.reshape(batch, -1, num_queries, self.points**2).permute(0, 2, 3, 1).flatten(2)
        return box_logits + self.mlp(torch.cat([queries, sampled.to(queries.dtype)], dim=-1))


def pyramid_levels(scale: int) -> int:
    """How many pyramid levels :class:`PixelBoxRefinement` samples for an input ``scale`` times
    the ViT's side: one at scale 1 (the input as it is), else down to between half the ViT's
    side and the ViT's side (a 192 px input for a 64 px ViT: 192, 96 and 48)."""
    return 1 if scale <= 1 else int(math.floor(math.log2(scale))) + 2


class PixelBoxRefinement(nn.Module):
    """A look at the input pixels in and around each box, finer than the patch grid.

    The box is sampled bilinearly at ``points`` x ``points`` positions spread over the box
    enlarged ``context`` times (so its edges and what lies just outside them are seen), from the
    input image with its padding zeroed and the pixel mask as a fourth channel (so a padded
    border reads as "no image", whatever its pixels hold). Two small convolutions read the
    samples; an MLP reads them with the query and adds a correction to the box logits. Sampling
    positions are detached and the last layer starts at zero, as in :class:`BoxRefinement`.

    With ``levels > 1`` (an input larger than the ViT's, ``pixel_refine_scale``) the image is a
    pyramid of ``levels`` resolutions, each half the last (2 x 2 averages), and each box is read
    from the level whose pixels are as far apart as its sample points, blending the two nearest
    (a mip-map's trilinear lookup): a small box at the input's own pixels, a large one from
    averages, never from a few isolated pixels of a sharp image.

    Why: a box from the visual tokens is only as precise as the patch grid, and on small objects
    (a few pixels in an 8 px patch) most wrong boxes sat on the right object with IoU 0.2-0.5.

    forward(queries (B, Nq, d), box_logits (B, Nq, 4), pixels (B, 4, H, H) or its ``pyramid``)
        -> box logits (B, Nq, 4).
    """

    offsets: torch.Tensor  # a buffer (register_buffer), which mypy cannot see

    def __init__(self, hidden_size: int, points: int = 8, context: float = 1.5, channels: int = 16, levels: int = 1):
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        self.points = points
        self.context = float(context)
        self.levels = int(levels)
        self.conv = nn.Sequential(
            nn.Conv2d(4, channels, 3, padding=1), nn.GELU(), nn.Conv2d(channels, channels, 3, padding=1), nn.GELU()
        )
        self.mlp = MLP(hidden_size + channels * points * points, hidden_size, 4, num_layers=2)
        self.start_as_identity_()
        self.register_buffer("offsets", torch.linspace(-context / 2, context / 2, points), persistent=False)

    def start_as_identity_(self) -> None:
        """Zero the last layer: no correction until training finds one."""
        zero_last_layer_(self.mlp)

    def level_weights(self, box_logits: torch.Tensor, side: int) -> torch.Tensor:
        """(levels, B, Nq): each box's weight on each pyramid level, the two levels nearest
        log2(sample spacing in input pixels) sharing it linearly (the spacing along the box's
        longer side, so no level is sharper than the samples can hold)."""
        w, h = box_logits.detach().float().sigmoid()[..., 2:].unbind(-1)
        spacing = torch.maximum(w, h) * self.context * side / max(self.points - 1, 1)
        level = torch.log2(spacing.clamp_min(1.0)).clamp(max=self.levels - 1)  # (B, Nq)
        steps = torch.arange(self.levels, device=level.device, dtype=level.dtype)
        return (1 - (level[None] - steps[:, None, None]).abs()).clamp_min(0)

    def pyramid(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """The ``levels`` resolutions of ``pixels`` (B, 4, H, H), each the 2 x 2 averages of the
        last. The model builds it once per forward: the refinement runs on every decoder layer."""
        levels = [pixels]
        for _ in range(1, self.levels):
            levels.append(F.avg_pool2d(levels[-1], 2))
        return levels

    def forward(
        self, queries: torch.Tensor, box_logits: torch.Tensor, pixels: torch.Tensor | Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """``pixels``: the input (B, 4, H, H), or its :meth:`pyramid`."""
        levels = self.pyramid(pixels) if isinstance(pixels, torch.Tensor) else list(pixels)
        if len(levels) != self.levels:
            raise ValueError(f"expected a pyramid of {self.levels} levels, got {len(levels)}")
        pixels = levels[0]
        batch, num_queries, _ = queries.shape
        k = self.points
        grid = box_sampling_grid(box_logits, self.offsets).reshape(batch, num_queries * k, k, 2).to(pixels.dtype)
        sampled = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.levels > 1:
            # (L, B, Nq) -> (L, B, 1, Nq * k, 1), the layout of the samples
            weights = self.level_weights(box_logits, pixels.shape[-1]).to(pixels.dtype)
            weights = weights.repeat_interleave(k, dim=2)[:, :, None, :, None]
            sampled = sampled * weights[0]
            for i in range(1, self.levels):
                sample = F.grid_sample(levels[i], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
                sampled = sampled + sample * weights[i]
        # (B, 4, Nq * k, k) -> (B * Nq, 4, k, k)
        crops = sampled.reshape(batch, pixels.shape[1], num_queries, k, k).transpose(1, 2).flatten(0, 1)
        # channels-last: the same sums, about a third less CPU for these few-map convolutions
        crops = crops.contiguous(memory_format=torch.channels_last)
        features = self.conv(crops).reshape(batch, num_queries, -1).to(queries.dtype)
        return box_logits + self.mlp(torch.cat([queries, features], dim=-1))


class AlignmentHead(nn.Module):
    """MDETR-style contrastive alignment of rows (queries, or words) with visual patches.

    Rows and patches are projected to ``align_dim`` and L2-normalised; a learned "nothing" slot
    is appended to the patches and another to the rows, so a row of an entity that is not in the
    image, and a patch that belongs to no mentioned entity, each have a positive to go to.

    forward(rows (B, R, d), vision (B, Nv, d) with the class token first, patch_padding (B, G)
            bool | None: grid patches that are padding)
        -> logits (B, R + 1, G + 1): cosine / temperature of [rows; no row] x [patches; no patch],
        G = Nv - 1 grid patches (the class token is not a place); padding patches get
        ``MASKED_LOGIT``, so no softmax over the patches gives them weight.
    """

    def __init__(self, hidden_size: int, align_dim: int, temperature: float):
        super().__init__()
        self.row_proj = nn.Linear(hidden_size, align_dim)
        self.patch_proj = nn.Linear(hidden_size, align_dim)
        self.no_patch = nn.Parameter(torch.randn(align_dim) * 0.02)
        self.no_row = nn.Parameter(torch.randn(align_dim) * 0.02)
        self.temperature = float(temperature)

    @staticmethod
    def reference_points(logits: torch.Tensor) -> torch.Tensor:
        """(B, R, 2): each row's expected patch centre (cx, cy) in [0, 1] under its softmax over
        the patches (the "nothing" slot left out), for ``align_box_prior``."""
        weights = logits[:, :-1, :-1].softmax(-1)  # (B, R, G)
        return weights @ patch_centres(math.isqrt(weights.shape[-1]), logits.device, weights.dtype)

    def forward(
        self, rows: torch.Tensor, vision: torch.Tensor, patch_padding: torch.Tensor | None = None
    ) -> torch.Tensor:
        batch = rows.shape[0]
        r = torch.cat([self.row_proj(rows), self.no_row.expand(batch, 1, -1)], dim=1)
        v = torch.cat([self.patch_proj(vision[:, 1:]), self.no_patch.expand(batch, 1, -1)], dim=1)
        logits = F.normalize(r, dim=-1) @ F.normalize(v, dim=-1).transpose(1, 2) / self.temperature
        if patch_padding is not None:
            column = torch.cat([patch_padding, patch_padding.new_zeros(batch, 1)], dim=1).bool()
            logits = logits.masked_fill(column[:, None, :], MASKED_LOGIT)
        return logits
