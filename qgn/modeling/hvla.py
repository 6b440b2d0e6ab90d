"""Hierarchical Vision-Language Alignment (HVLA, paper Sec. III-A, eq. 3).

1. Multi-layer text fusion (eq. 3): for each BERT layer j of ``text_extract_layers``,
   ``F~_j = F_j + W_j F_j``; ``F_fused = LN(W_g [F~_j1 (+) F~_j2 (+) ...])``. ``W_g`` maps to the
   **ViT width** Dv (not d) because F_fused is only ever attended to by the ViT tokens, inside
   the ViT; the LayerNorm (not in the paper) puts it on the scale the ViT attention expects.
2. Text injection: after each ViT layer of ``vision_inject_layers`` the visual tokens (all of
   them, class token included) cross-attend to F_fused (text padding masked) and the result is
   added back through a plain residual, as the paper has it:
   ``X = X + Drop(Attn(LN(X), F_fused, F_fused))``. The LN on the query side (not in the paper) is
   needed because CLIP's residual stream is not normalised between layers. (An earlier version
   gated the sum with ``tanh(g)``, g = 0 at start; with Adam g moves about one learning rate per
   step, so at fine-tuning rates the text barely reached the ViT for epochs. It was removed.)
3. The extracted visual features (``vision_extract_layers``, read after any injection at that
   layer) are concatenated along the features and projected to d by the model's
   ``vision_projection`` (see :class:`VisualProjection`), giving F~_v (B, Nv, d).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qgn.modeling.configuration_qgn import PIXEL_PATCH_POOLS
from qgn.modeling.layers import attend, safe_padding_mask


class TextInjection(nn.Module):
    """Cross-attention from ViT tokens to F_fused, added by a residual.

    forward(tokens (B, Nv, Dv), fused (B, S, Dv), text_padding (B, S) bool) -> (B, Nv, Dv)
    """

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor, fused: torch.Tensor, text_padding: torch.Tensor) -> torch.Tensor:
        return tokens + self.dropout(attend(self.attn, self.norm(tokens), fused, text_padding))


class HierarchicalAlignment(nn.Module):
    """Eq. 3's text fusion and the text injections into the ViT.

    Args:
        config: QGNConfig (``text_extract_layers``, ``vision_inject_layers``, ``dropout``).
        text_width: Dt, the text encoder's hidden size.
        vision_width: Dv, the ViT's hidden size.
        vision_heads: heads of the injection attention (the ViT's own head count, which
            divides Dv by construction).
    """

    def __init__(self, config: Any, text_width: int, vision_width: int, vision_heads: int):
        super().__init__()
        self.text_layers = [int(j) for j in config.text_extract_layers]
        self.inject_layers = [int(i) for i in config.vision_inject_layers]
        self.layer_adapters = nn.ModuleList(nn.Linear(text_width, text_width) for _ in self.text_layers)  # W_j
        self.merge = nn.Linear(text_width * len(self.text_layers), vision_width)  # W_g
        self.fused_norm = nn.LayerNorm(vision_width)
        self.injections = nn.ModuleDict(
            {str(i): TextInjection(vision_width, vision_heads, config.dropout) for i in self.inject_layers}
        )

    def fuse_text(self, hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
        """F_fused (B, S, Dv) from the text encoder's ``hidden_states`` (index 0 = embeddings,
        index j = output of layer j, as transformers returns them)."""
        adapted = [
            hidden_states[j] + adapter(hidden_states[j]) for j, adapter in zip(self.text_layers, self.layer_adapters)
        ]
        return self.fused_norm(self.merge(torch.cat(adapted, dim=-1)))

    def injector(self, fused: torch.Tensor, text_padding: torch.Tensor):
        """``after_layer(i, tokens) -> tokens`` for :func:`qgn.modeling.encoders.run_vision_tower`."""
        padding = safe_padding_mask(text_padding)

        def after_layer(layer: int, tokens: torch.Tensor) -> torch.Tensor:
            block = self.injections[str(layer)] if str(layer) in self.injections else None
            return tokens if block is None else block(tokens, fused, padding)

        return after_layer


class VisualProjection(nn.Module):
    """Concatenated ViT layer features -> d: ``LN(W [X_i1 (+) X_i2 (+) ...])``.

    With HVLA the inputs are the ``vision_extract_layers`` tokens; without it, the last layer's
    tokens alone. The LayerNorm (not in the paper) is there because raw intermediate CLIP
    tokens have large, layer-dependent scales (CLIP is pre-LN; only the pooled token is
    normalised at the end).

    forward(features: list of (B, Nv, Dv)) -> (B, Nv, d)
    """

    def __init__(self, vision_width: int, num_layers: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Linear(vision_width * num_layers, hidden_size)
        self.norm = nn.LayerNorm(hidden_size)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.norm(self.proj(torch.cat(list(features), dim=-1)))


class PixelPatchBranch(nn.Module):
    """``pixel_patch_branch`` (not in the paper): what each patch holds, read from the input's own
    pixels by a small CNN and added to its visual token.

    Three 3 x 3 convolutions of stride 2 (``width``, 2 x and 4 x ``width`` maps, GELU) read the
    input image with its padding zeroed and the pixel mask as a fourth channel; their maps are
    pooled over each patch of the ViT's grid (``pool``: mean, max, or both side by side) and
    projected to d. The projection starts at zero, so the tokens are
    the ViT's own until training finds a use for the branch. With ``pixel_refine_scale`` > 1 the
    CNN sees pixels the ViT never gets (the outline or stripes of a look a few ViT pixels wide);
    every module that reads visual tokens (the alignment, VTF, FDE, MRE) then sees them too.

    forward(pixels (B, 4, H, H), grid: the ViT's patches per side) -> (B, grid * grid, d)
    """

    def __init__(self, hidden_size: int, width: int = 16, pool: str = "mean"):
        super().__init__()
        if pool not in PIXEL_PATCH_POOLS:
            raise ValueError(f"pool must be one of {', '.join(PIXEL_PATCH_POOLS)}, got {pool!r}")
        self.pool = pool
        layers: list[nn.Module] = []
        maps = 4
        for out in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(maps, out, 3, stride=2, padding=1), nn.GELU()]
            maps = out
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Linear(2 * maps if pool == "mean_max" else maps, hidden_size)
        self.start_as_identity_()

    def start_as_identity_(self) -> None:
        """Zero the projection: the visual tokens are the ViT's until training finds a use."""
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, pixels: torch.Tensor, grid: int) -> torch.Tensor:
        # channels-last: the same sums, about a third less CPU for these few-map convolutions
        maps = self.convs(pixels.contiguous(memory_format=torch.channels_last))
        # the mean dilutes an object smaller than its patch with the background; the max keeps it
        if self.pool == "mean":
            maps = F.adaptive_avg_pool2d(maps, grid)  # (B, C, grid, grid)
        elif self.pool == "max":
            maps = F.adaptive_max_pool2d(maps, grid)
        else:
            maps = torch.cat([F.adaptive_avg_pool2d(maps, grid), F.adaptive_max_pool2d(maps, grid)], dim=1)
        return self.proj(maps.flatten(2).transpose(1, 2))
