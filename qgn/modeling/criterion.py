"""The training objective (paper Sec. III-D, eq. 5) on Hungarian-matched query/target pairs.

``total = lambda_pred * L_pred + lambda_nt * L_nt + lambda_con * L_con`` with
``L_pred = weight_ce * CE + weight_boundary * BCE(start, end) + weight_l1 * L1 + weight_giou * GIoU``.
One method per loss and a dispatch table, as DETR's ``SetCriterion`` (Apache-2.0). A weight of
0 switches its loss off: it is not computed and not reported (the Table IV ablation).

Normalisation: the cross-entropies over *all* queries (type, no-target) are weighted means; the
terms over *matched* queries (boundary, consistency) are divided by the number of targets and the
box terms by the number of targets with a box, both summed over processes under
``torch.distributed`` and clamped to >= 1 so posts without entities are fine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from qgn.modeling.box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from qgn.modeling.matcher import HungarianMatcher

Indices = Sequence[tuple[torch.Tensor, torch.Tensor]]
HAS_TARGET, NO_TARGET = 0, 1  # classes of notarget_logits


def _global_count(count: int | torch.Tensor, device: torch.device, minimum: float = 1.0) -> torch.Tensor:
    """``count`` summed over processes, averaged per process, at least ``minimum`` (DETR's
    ``num_boxes``). Dividing by it makes the data-parallel gradient equal the one-process one."""
    total = torch.as_tensor(count, dtype=torch.float32, device=device).detach().clone()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
        total = total / dist.get_world_size()
    return total.clamp(min=minimum)


def _weighted_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted mean whose denominator is global over processes (see :func:`_global_count`)."""
    return (values * weight).sum() / _global_count(weight.sum(), values.device, minimum=1e-12)


class SetCriterion(nn.Module):
    """Losses of QGN. ``forward(outputs, targets, indices=None) -> (total, parts)``.

    ``outputs`` follow the model contract (fp32 is enforced inside); ``targets`` are the
    pipeline's per-post dicts. ``parts`` holds detached, unweighted scalars for logging.
    """

    def __init__(self, config: Any, matcher: HungarianMatcher | None = None):
        super().__init__()
        self.config = config
        self.matcher = matcher if matcher is not None else HungarianMatcher(config)
        self.num_classes = len(config.entity_types)
        class_weight = torch.ones(self.num_classes + 1)
        class_weight[-1] = config.no_entity_weight
        self.register_buffer("class_weight", class_weight, persistent=False)
        self.loss_map: dict[str, Callable[..., dict[str, torch.Tensor]]] = {
            "labels": self.loss_labels,
            "boundaries": self.loss_boundaries,
            "boxes": self.loss_boxes,
            "notarget": self.loss_notarget,
            "consistency": self.loss_consistency,
        }

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _matched(indices: Indices, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat (batch index, query index) of all matched pairs, on ``device``."""
        batch_idx = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(indices)])
        query_idx = torch.cat([q for q, _ in indices])
        return batch_idx.to(device), query_idx.to(device)

    @staticmethod
    def _gather(targets: Sequence[Mapping[str, torch.Tensor]], indices: Indices, key: str,
                device: torch.device) -> torch.Tensor:
        """``targets[b][key][target_idx]`` for every matched pair, concatenated."""
        return torch.cat([t[key][j.to(t[key].device)] for t, (_, j) in zip(targets, indices)]).to(device)

    def _notarget_labels(self, outputs, targets, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Nq) no-target labels (unmatched -> NO_TARGET) and the matched-pair positions."""
        logits = outputs["notarget_logits"]
        labels = torch.full(logits.shape[:2], NO_TARGET, dtype=torch.long, device=logits.device)
        b, q = self._matched(indices, logits.device)
        has_box = self._gather(targets, indices, "has_box", logits.device).bool()
        labels[b, q] = torch.where(has_box, HAS_TARGET, NO_TARGET)
        return labels, has_box

    # ------------------------------------------------------------------- losses
    def loss_labels(self, outputs, targets, indices, counts) -> dict[str, torch.Tensor]:
        """Type CE over C+1 classes; unmatched queries -> no-entity, down-weighted (DETR eos_coef)."""
        logits = outputs["type_logits"]  # (B, Nq, C+1)
        classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.long, device=logits.device)
        b, q = self._matched(indices, logits.device)
        classes[b, q] = self._gather(targets, indices, "labels", logits.device)
        weight = self.class_weight.to(logits.device)
        ce = F.cross_entropy(logits.transpose(1, 2), classes, reduction="none")
        return {"loss_ce": _weighted_mean(ce, weight[classes])}

    def loss_boundaries(self, outputs, targets, indices, counts) -> dict[str, torch.Tensor]:
        """BCE of start/end logits of matched queries against one-hot gold words, mean over real words."""
        start_logits, end_logits = outputs["start_logits"], outputs["end_logits"]
        b, q = self._matched(indices, start_logits.device)
        word_mask = outputs.get("word_mask")
        if word_mask is None:
            word_mask = torch.ones(start_logits.shape[0], start_logits.shape[-1], dtype=torch.bool)
        word_mask = word_mask.to(start_logits.device).bool()[b]  # (M, W)
        valid = word_mask.float()
        loss = start_logits.new_zeros(())
        for key, logits in (("start", start_logits), ("end", end_logits)):
            gold = self._gather(targets, indices, key, logits.device)
            onehot = F.one_hot(gold, logits.shape[-1]).float()
            bce = F.binary_cross_entropy_with_logits(logits[b, q], onehot, reduction="none")
            loss = loss + ((bce * valid).sum(-1) / valid.sum(-1).clamp(min=1)).sum()
        return {"loss_boundary": loss / counts["targets"]}

    def loss_boxes(self, outputs, targets, indices, counts) -> dict[str, torch.Tensor]:
        """L1 and 1 - GIoU of matched queries whose target has a box."""
        pred_boxes = outputs["pred_boxes"]
        b, q = self._matched(indices, pred_boxes.device)
        has_box = self._gather(targets, indices, "has_box", pred_boxes.device).bool()
        pred = pred_boxes[b, q][has_box]
        gold = self._gather(targets, indices, "boxes", pred_boxes.device).float()[has_box]
        l1 = F.l1_loss(pred, gold, reduction="none").sum()
        giou = torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(gold)))
        return {"loss_l1": l1 / counts["boxes"], "loss_giou": (1 - giou).sum() / counts["boxes"]}

    def loss_notarget(self, outputs, targets, indices, counts) -> dict[str, torch.Tensor]:
        """CE of the no-target head: matched -> has-target iff the target has a box, unmatched ->
        no-target. Unmatched queries get weight ``no_entity_weight`` like in the type CE, so the
        few matched decisions (the ones inference uses) are not drowned by background queries."""
        logits = outputs["notarget_logits"]  # (B, Nq, 2)
        labels, _ = self._notarget_labels(outputs, targets, indices)
        weight = torch.full(labels.shape, float(self.config.no_entity_weight), device=logits.device)
        b, q = self._matched(indices, logits.device)
        weight[b, q] = 1.0
        ce = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
        return {"loss_nt": _weighted_mean(ce, weight)}

    def loss_consistency(self, outputs, targets, indices, counts) -> dict[str, torch.Tensor]:
        """Matched queries grouped by (post, span), i.e. the targets of one entity, share one
        no-target label: has-target if any member's target has a box. CE of each member to it."""
        logits = outputs["notarget_logits"]
        b, q = self._matched(indices, logits.device)
        if len(b) == 0:
            return {"loss_con": logits.sum() * 0}
        has_box = self._gather(targets, indices, "has_box", logits.device).bool()
        starts = self._gather(targets, indices, "start", logits.device)
        ends = self._gather(targets, indices, "end", logits.device)
        keys = torch.stack([b, starts, ends], dim=1)
        _, group = torch.unique(keys, dim=0, return_inverse=True)  # (M,) group id per pair
        group_has_box = torch.zeros(int(group.max()) + 1, dtype=torch.long, device=logits.device)
        group_has_box = group_has_box.scatter_reduce(0, group, has_box.long(), reduce="amax")
        labels = torch.where(group_has_box[group] > 0, HAS_TARGET, NO_TARGET)
        ce = F.cross_entropy(logits[b, q], labels, reduction="sum")
        return {"loss_con": ce / counts["targets"]}

    # ----------------------------------------------------------------- dispatch
    def active_losses(self, outputs: Mapping[str, torch.Tensor]) -> list[str]:
        """The losses this configuration and these outputs call for (weight 0 -> not computed)."""
        c = self.config
        region = "pred_boxes" in outputs and not c.text_only
        notarget = "notarget_logits" in outputs and not c.text_only
        losses = []
        if c.lambda_pred:
            losses += ["labels"] if c.weight_ce else []
            losses += ["boundaries"] if c.weight_boundary else []
            losses += ["boxes"] if region and (c.weight_l1 or c.weight_giou) else []
        losses += ["notarget"] if notarget and c.lambda_nt else []
        losses += ["consistency"] if notarget and c.lambda_con else []
        return losses

    def get_loss(self, name: str, outputs, targets, indices, counts) -> dict[str, torch.Tensor]:
        return self.loss_map[name](outputs, targets, indices, counts)

    def forward(
        self,
        outputs: Mapping[str, torch.Tensor],
        targets: Sequence[Mapping[str, torch.Tensor]],
        indices: Indices | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return ``(total_loss, parts)``; never calls backward.

        ``outputs["aux_outputs"]`` (earlier decoder layers), when present, are matched and scored
        the same way and added to the total; ``parts`` log the final layer only.
        """
        device = outputs["type_logits"].device
        counts = {
            "targets": _global_count(sum(len(t["labels"]) for t in targets), device),
            "boxes": _global_count(sum(int(t["has_box"].sum()) for t in targets), device),
        }
        total, parts = self._single(outputs, targets, indices, counts)
        for aux in outputs.get("aux_outputs", ()):
            total = total + self._single(aux, targets, None, counts)[0]
        return total, parts

    def _single(self, outputs, targets, indices, counts) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of one set of predictions (the final layer or one auxiliary layer)."""
        outputs = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in outputs.items()}
        if indices is None:
            indices = self.matcher(outputs, targets)
        terms: dict[str, torch.Tensor] = {}
        for name in self.active_losses(outputs):
            terms.update(self.get_loss(name, outputs, targets, indices, counts))

        c = self.config
        weights = {"loss_ce": c.weight_ce, "loss_boundary": c.weight_boundary, "loss_l1": c.weight_l1,
                   "loss_giou": c.weight_giou}
        pred_terms = [weights[k] * v for k, v in terms.items() if k in weights]
        weighted = []
        if pred_terms:
            terms["loss_pred"] = torch.stack(pred_terms).sum()
            weighted.append(c.lambda_pred * terms["loss_pred"])
        weighted += [lam * terms[k] for k, lam in (("loss_nt", c.lambda_nt), ("loss_con", c.lambda_con)) if k in terms]
        # With every loss switched off, a zero that still belongs to the graph keeps backward legal.
        total = torch.stack(weighted).sum() if weighted else outputs["type_logits"].sum() * 0
        parts = {k: v.detach() for k, v in terms.items()}
        return total, parts
