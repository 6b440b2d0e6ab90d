"""Hungarian matching of entity queries to gold targets (paper Sec. III-C, eq. 4).

The structure (one batched cost matrix, split per post, scipy's ``linear_sum_assignment``)
follows DETR's ``models/matcher.py`` (Apache-2.0); the span and no-box terms are QGN's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from qgn.modeling.box_ops import box_cxcywh_to_xyxy, generalized_box_iou

# Finite fill for masked word positions: softmax then gives them ~0 probability, yet a post
# whose every position is masked still gets a (uniform) distribution instead of NaN.
MASKED_LOGIT = -1e4


def masked_log_softmax(logits: torch.Tensor, word_mask: torch.Tensor | None) -> torch.Tensor:
    """Log-softmax of span logits ``(B, Nq, W)`` over words, padding positions excluded."""
    if word_mask is not None:
        logits = logits.masked_fill(~word_mask[:, None, :].bool(), MASKED_LOGIT)
    return logits.log_softmax(-1)


class HungarianMatcher(nn.Module):
    """One-to-one assignment between the ``Nq`` queries and the ``T`` targets of each post.

    Cost of query k for target j (all fp32, no grad)::

        cost_class * -P_k(label_j) + cost_span * -(P_k^start(start_j) + P_k^end(end_j))
        + cost_l1 * |box_k - box_j|_1 + cost_giou * -GIoU(box_k, box_j)

    For a target without a box the two region terms are replaced by ``cost_no_box``; in text-only
    mode (no ``pred_boxes``) there is no region term at all.
    """

    def __init__(self, config: Any):
        super().__init__()
        self.cost_class = float(config.cost_class)
        self.cost_span = float(config.cost_span)
        self.cost_l1 = float(config.cost_l1)
        self.cost_giou = float(config.cost_giou)
        self.cost_no_box = float(config.cost_no_box)

    @torch.no_grad()
    def forward(
        self, outputs: Mapping[str, torch.Tensor], targets: Sequence[Mapping[str, torch.Tensor]]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Match queries to targets.

        Args:
            outputs: ``type_logits`` (B, Nq, C+1), ``start_logits``/``end_logits`` (B, Nq, W),
                optional ``word_mask`` (B, W) and ``pred_boxes`` (B, Nq, 4) normalised cxcywh.
            targets: B dicts with ``labels``, ``start``, ``end`` (T,), ``boxes`` (T, 4),
                ``has_box`` (T,).
        Returns:
            B pairs ``(query_idx, target_idx)`` of int64 CPU tensors of length ``min(Nq, T)``,
            sorted by query index.
        """
        type_logits = outputs["type_logits"].float()
        batch_size, num_queries = type_logits.shape[:2]
        sizes = [len(t["labels"]) for t in targets]
        if len(sizes) != batch_size:
            raise ValueError(f"{len(sizes)} targets for a batch of {batch_size}")
        empty = torch.empty(0, dtype=torch.long)
        if sum(sizes) == 0:
            return [(empty, empty) for _ in sizes]
        device = type_logits.device
        cat = lambda key: torch.cat([t[key] for t in targets]).to(device)  # noqa: E731
        labels, starts, ends = cat("labels"), cat("start"), cat("end")

        # Flatten the batch: rows are all B*Nq queries, columns all targets of the batch; the
        # blocks that pair a query with another post's target are computed and thrown away,
        # which is cheaper than B small matrix products.
        prob = type_logits.flatten(0, 1).softmax(-1)  # (B*Nq, C+1)
        cost = -self.cost_class * prob[:, labels]
        word_mask = outputs.get("word_mask")
        start_prob = masked_log_softmax(outputs["start_logits"].float(), word_mask).exp().flatten(0, 1)
        end_prob = masked_log_softmax(outputs["end_logits"].float(), word_mask).exp().flatten(0, 1)
        cost = cost - self.cost_span * (start_prob[:, starts] + end_prob[:, ends])

        if "pred_boxes" in outputs:
            has_box = cat("has_box").bool()
            # Box-less targets hold zeros; give them a valid dummy box so GIoU stays finite,
            # then overwrite their region cost with the constant anyway.
            dummy = torch.tensor([0.5, 0.5, 1.0, 1.0], device=device)
            gold = torch.where(has_box[:, None], cat("boxes").float(), dummy)
            pred = outputs["pred_boxes"].float().flatten(0, 1)  # (B*Nq, 4)
            region = self.cost_l1 * torch.cdist(pred, gold, p=1)
            region = region - self.cost_giou * generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(gold))
            cost = cost + torch.where(has_box[None, :], region, torch.full_like(region, self.cost_no_box))

        cost = cost.view(batch_size, num_queries, -1).cpu()
        if not torch.isfinite(cost).all():
            raise FloatingPointError("non-finite matching cost: the model outputs contain NaN or inf")
        indices = []
        for b, block in enumerate(cost.split(sizes, dim=-1)):
            rows, cols = linear_sum_assignment(block[b].numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)))
        return indices
