"""The four prediction heads (paper Sec. III-C, "Multi-Head Prediction").

* type: 2-layer MLP -> C + 1 logits (last = no-entity).
* span start / end: scaled dot product between a projection of each query and a projection of
  each word feature, ``(Q W_q)(F_w W_w)^T / sqrt(d)`` -> (B, Nq, W), filled with -1e4 where
  ``word_mask`` is False (contract: finite, so fp16 and BCE stay finite).
* box: 3-layer MLP + sigmoid -> normalised (cx, cy, w, h) (DETR's box head).
* no-target: 2-layer MLP -> 2 logits (class 1 = the entity has no box).
Box and no-target heads do not exist in text-only mode.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from qgn.modeling.layers import MASKED_LOGIT, MLP


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

    def forward(self, queries: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = {
            "type_logits": self.type_head(queries),
            "start_logits": self.start_head(queries, words, word_mask),
            "end_logits": self.end_head(queries, words, word_mask),
        }
        if self.box_head is not None and self.notarget_head is not None:
            outputs["pred_boxes"] = self.box_head(queries).sigmoid()
            outputs["notarget_logits"] = self.notarget_head(queries)
        return outputs
