"""The training objective (paper Sec. III-D, eq. 5) on Hungarian-matched query/target pairs.

``total = lambda_pred * L_pred + lambda_nt * L_nt + lambda_con * L_con`` with
``L_pred = weight_ce * CE + weight_boundary * BCE(start, end) + weight_l1 * L1 + weight_giou * GIoU``,
plus, beyond the paper and off by default, ``lambda_align * L_align + lambda_align_words *
L_align_words`` (contrastive query-patch and word-patch alignment, MDETR / GLIP) and
``bio_loss_weight * L_bio + span_proposal_weight * L_proposals`` (a token-level BIO loss and the
span-proposal scorer's loss, :mod:`qgn.modeling.span_aids`).
One method per loss and a dispatch table, as DETR's ``SetCriterion`` (Apache-2.0). A weight of
0 switches its loss off: it is not computed and not reported (the Table IV ablation).

Normalisation: the cross-entropies over *all* queries (type, no-target) are weighted means; the
boundary term is divided by the number of targets, the box terms by the number of targets with a
box, the consistency term by the number of its group members, all summed over processes under
``torch.distributed`` and clamped to >= 1 so posts without entities are fine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from qgn.modeling.box_ops import box_cxcywh_to_xyxy, generalized_box_iou, patch_centres
from qgn.modeling.layers import MASKED_LOGIT
from qgn.modeling.matcher import HungarianMatcher
from qgn.modeling.postprocess import best_spans
from qgn.modeling.span_aids import bio_labels, span_labels

Indices = Sequence[tuple[torch.Tensor, torch.Tensor]]
HAS_TARGET, NO_TARGET = 0, 1  # classes of notarget_logits


def _global_count(count: int | torch.Tensor, device: torch.device, minimum: float = 1.0) -> torch.Tensor:
    """``count`` summed over processes, clamped to at least ``minimum``, then divided by the number
    of processes (DETR's ``num_boxes``, but clamped *before* the division, so that a global count
    below the number of processes, e.g. one consistency-group member in the whole batch, still
    normalises like one process). Dividing by it makes the data-parallel gradient equal the
    one-process one."""
    total = torch.as_tensor(count, dtype=torch.float32, device=device).detach().clone()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
        return total.clamp(min=minimum) / dist.get_world_size()
    return total.clamp(min=minimum)


def _weighted_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted mean whose denominator is global over processes (see :func:`_global_count`)."""
    return (values * weight).sum() / _global_count(weight.sum(), values.device, minimum=1e-12)


def _target_counts(targets: Sequence[Mapping[str, torch.Tensor]], device: torch.device) -> dict[str, torch.Tensor]:
    """The loss normalisers of a batch: its targets and its targets with a box, global over processes."""
    return {
        "targets": _global_count(sum(len(t["labels"]) for t in targets), device),
        "boxes": _global_count(sum(int(t["has_box"].sum()) for t in targets), device),
    }


def repeat_targets(target: Mapping[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """``target`` with every per-target row repeated ``k`` times (``[t0..tn, t0..tn, ...]``), so
    a Hungarian matching against it gives each gold target up to ``k`` queries. Per-post entries
    (whatever does not have one row per target) are kept as they are."""
    rows = len(target["labels"])
    return {
        key: value.repeat(k, *([1] * (value.dim() - 1)))
        if torch.is_tensor(value) and value.dim() > 0 and len(value) == rows
        else value
        for key, value in target.items()
    }


class SetCriterion(nn.Module):
    """Losses of QGN. ``forward(outputs, targets, indices=None) -> (total, parts)``.

    ``outputs`` follow the model contract (fp32 is enforced inside); ``targets`` are the
    pipeline's per-post dicts. ``parts`` holds detached, unweighted scalars for logging.
    """

    class_weight: torch.Tensor  # a buffer (register_buffer), which mypy cannot see

    def __init__(self, config: Any, matcher: HungarianMatcher | None = None):
        super().__init__()
        self.config = config
        self.matcher = matcher if matcher is not None else HungarianMatcher(config)
        self.num_classes = len(config.entity_types)
        class_weight = torch.ones(self.num_classes + 1)
        class_weight[-1] = config.no_entity_weight
        self.register_buffer("class_weight", class_weight, persistent=False)
        self._patch_cache: dict[tuple[int, int], torch.Tensor] = {}  # see _patches_of
        self.loss_map: dict[str, Callable[..., dict[str, torch.Tensor]]] = {
            "labels": self.loss_labels,
            "boundaries": self.loss_boundaries,
            "boxes": self.loss_boxes,
            "notarget": self.loss_notarget,
            "consistency": self.loss_consistency,
            "align": self.loss_align,
            "align_words": self.loss_align_words,
            "bio": self.loss_bio,
            "proposals": self.loss_proposals,
        }

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _matched(indices: Indices, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat (batch index, query index) of all matched pairs, on ``device``."""
        batch_idx = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(indices)])
        query_idx = torch.cat([q for q, _ in indices])
        return batch_idx.to(device), query_idx.to(device)

    @staticmethod
    def _gather(
        targets: Sequence[Mapping[str, torch.Tensor]], indices: Indices, key: str, device: torch.device
    ) -> torch.Tensor:
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
        no-target. Unmatched queries get weight ``notarget_unmatched_weight`` (``None``: the
        ``no_entity_weight`` of the type CE), so the few matched decisions (the ones inference
        uses) are not drowned by background queries."""
        logits = outputs["notarget_logits"]  # (B, Nq, 2)
        labels, _ = self._notarget_labels(outputs, targets, indices)
        unmatched = self.config.notarget_unmatched_weight
        unmatched = self.config.no_entity_weight if unmatched is None else unmatched
        weight = torch.full(labels.shape, float(unmatched), device=logits.device)
        b, q = self._matched(indices, logits.device)
        weight[b, q] = 1.0
        ce = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
        return {"loss_nt": _weighted_mean(ce, weight)}

    def loss_consistency(self, outputs, targets, indices, counts) -> dict[str, torch.Tensor]:
        """Every query whose *decoded* span (the post-processor's best start/end pair) is a gold
        entity's span joins that entity's group, matched or not; the group's label is has-target
        iff the entity has a box; CE of every member's no-target logits to it, averaged over the
        members (docs/architecture.md, "Consistency loss").

        Unlike ``L_nt`` this reaches the unmatched duplicates of an entity: ``L_nt`` calls them
        no-target, but inference keeps the best query per span whichever it is, so a duplicate of
        a grounded entity must say has-target too. (The paper groups per span and gold region
        index; all targets of one entity share ``has_box``, so the region index never changes a
        label and one group per span is the same loss.)"""
        logits = outputs["notarget_logits"]  # (B, Nq, 2)
        starts, ends, _ = best_spans(outputs["start_logits"], outputs["end_logits"], outputs.get("word_mask"))
        labels = torch.full(logits.shape[:2], -1, dtype=torch.long, device=logits.device)  # -1: no group
        for b, t in enumerate(targets):
            grounded: dict[tuple[int, int], bool] = {}  # span -> has-target if any of its targets has a box
            for start, end, has_box in zip(t["start"].tolist(), t["end"].tolist(), t["has_box"].tolist()):
                grounded[(start, end)] = grounded.get((start, end), False) or bool(has_box)
            for (start, end), has_box in grounded.items():
                members = (starts[b] == start) & (ends[b] == end)
                labels[b][members] = HAS_TARGET if has_box else NO_TARGET
        member = labels >= 0
        ce = F.cross_entropy(logits[member], labels[member], reduction="sum")
        return {"loss_con": ce / _global_count(member.sum(), logits.device)}

    def _patches_of(self, target: Mapping[str, torch.Tensor], grid: int, device: torch.device) -> torch.Tensor:
        """:meth:`box_patches` of a target, computed once per target and grid in a :meth:`forward`
        call (the final and every auxiliary layer, and both alignment losses, share it)."""
        key = (id(target), grid)
        if key not in self._patch_cache:
            self._patch_cache[key] = self.box_patches(target, grid, device)
        return self._patch_cache[key]

    @staticmethod
    def box_patches(target: Mapping[str, torch.Tensor], grid: int, device: torch.device) -> torch.Tensor:
        """(T, G) bool: the grid patches inside each target's own box (none for a box-less
        target). A patch is inside a box if its cell centre lies in the box or it holds the box
        centre (so even a box smaller than a cell has one)."""
        boxes = target["boxes"].to(device).float()
        has_box = target["has_box"].to(device).bool()
        cx, cy = patch_centres(grid, device).unbind(-1)  # (G,) each
        x1, y1 = boxes[:, 0] - boxes[:, 2] / 2, boxes[:, 1] - boxes[:, 3] / 2
        x2, y2 = boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3] / 2
        inside = (
            (cx[None] >= x1[:, None])
            & (cx[None] <= x2[:, None])
            & (cy[None] >= y1[:, None])
            & (cy[None] <= y2[:, None])
        )  # (T, G)
        centre_cell = (boxes[:, 1] * grid).long().clamp(0, grid - 1) * grid + (boxes[:, 0] * grid).long().clamp(
            0, grid - 1
        )
        inside[torch.arange(len(boxes), device=device), centre_cell] = True
        return inside & has_box[:, None]

    @staticmethod
    def _contrastive(
        logits: torch.Tensor,
        positive: torch.Tensor,
        row_used: torch.Tensor,
        num_rows: torch.Tensor,
        patch_padding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Symmetric multi-positive InfoNCE over ``logits`` (B, R + 1, G + 1) whose last row and
        column are the "nothing" slots. Rows ``row_used`` go to their positive columns (the last
        one for an entity without a box); every patch column goes to the rows whose entity covers
        it, or to the last row. -log(softmax mass on the positives); the row part is summed and
        divided by ``num_rows``, the column part averaged over patches; the halves averaged.
        Patches of ``patch_padding`` (B, G) (a padded image's border) are no place: they are no
        row's candidates (the model gave them ``MASKED_LOGIT``) and have no column loss."""
        grid_cells = logits.shape[2] - 1
        if patch_padding is not None:
            padded = torch.cat(
                [
                    patch_padding.to(logits.device).bool(),
                    patch_padding.new_zeros(logits.shape[0], 1).bool().to(logits.device),
                ],
                dim=1,
            )
            # finite, not -inf: a padded column's own softmax must stay defined (its loss is weighed 0)
            logits = logits.masked_fill(padded[:, None, :], MASKED_LOGIT)
        positive = positive.clone()
        covered = positive[:, :-1, :grid_cells].any(1)  # (B, G) patches of some entity
        positive[:, -1, :grid_cells] = ~covered
        masked = logits.masked_fill(~positive, float("-inf"))
        row_loss = torch.logsumexp(logits, -1) - torch.logsumexp(masked, -1)
        col_loss = (torch.logsumexp(logits, 1) - torch.logsumexp(masked, 1))[:, :grid_cells]
        rows = row_loss[row_used].sum() / num_rows
        col_weight = torch.ones_like(col_loss)
        if patch_padding is not None:
            col_weight = (~patch_padding.to(logits.device).bool()).to(col_loss.dtype)
        cols = _weighted_mean(col_loss, col_weight)
        return (rows + cols) / 2

    def loss_align(self, outputs, targets, indices, counts) -> dict[str, torch.Tensor]:
        """Query-patch contrastive alignment (MDETR's, with image patches as the tokens): a matched
        query's positives are the patches of its target's box, or "no patch" for a box-less
        entity; a patch's are the matched queries whose box covers it, or "no query". Its own box
        only, not every box of its entity: the box head starts from the softmax-expected patch
        centre (``align_box_prior``), which would fall between the two copies of a team."""
        logits = outputs["align_logits"].float()  # (B, Nq + 1, G + 1)
        batch, num_rows, num_cols = logits.shape
        grid = math.isqrt(num_cols - 1)
        positive = torch.zeros(batch, num_rows, num_cols, dtype=torch.bool, device=logits.device)
        row_used = torch.zeros(batch, num_rows, dtype=torch.bool, device=logits.device)
        for b, (t, (query_idx, target_idx)) in enumerate(zip(targets, indices)):
            q, j = query_idx.to(logits.device), target_idx.to(logits.device)
            positive[b, q, :-1] = self._patches_of(t, grid, logits.device)[j]
            positive[b, q, -1] = ~t["has_box"].to(logits.device).bool()[j]
            row_used[b, q] = True
        return {
            "loss_align": self._contrastive(logits, positive, row_used, counts["targets"], outputs.get("patch_padding"))
        }

    def loss_align_words(self, outputs, targets, indices, counts) -> dict[str, torch.Tensor]:
        """Word-patch contrastive alignment at the encoders (GLIP's word-region alignment, with
        patches as the regions): every word of a gold entity goes to the patches of the entity's
        boxes, or to "no patch" for a box-less entity; a patch to the words of the entities
        covering it, or to "no word". Independent of the matching."""
        logits = outputs["align_word_logits"].float()  # (B, W + 1, G + 1)
        batch, num_rows, num_cols = logits.shape
        word_mask = outputs.get("word_mask")
        if word_mask is not None:  # padding words are no candidates of a patch
            real = torch.cat([word_mask.to(logits.device).bool(), word_mask.new_ones(batch, 1).bool()], dim=1)
            logits = logits.masked_fill(~real[:, :, None], float("-inf"))
        grid = math.isqrt(num_cols - 1)
        positive = torch.zeros(batch, num_rows, num_cols, dtype=torch.bool, device=logits.device)
        row_used = torch.zeros(batch, num_rows, dtype=torch.bool, device=logits.device)
        for b, t in enumerate(targets):
            boxes = self._patches_of(t, grid, logits.device)
            entity = t["entity_index"].to(logits.device)
            patches = ((entity[:, None] == entity[None, :]).float() @ boxes.float()) > 0  # its entity's boxes
            has_box = t["has_box"].to(logits.device).bool()
            for k, (start, end) in enumerate(zip(t["start"].tolist(), t["end"].tolist())):
                positive[b, start : end + 1, :-1] |= patches[k]
                positive[b, start : end + 1, -1] |= ~has_box[k]
                row_used[b, start : end + 1] = True
        num_words = _global_count(row_used.sum(), logits.device)
        return {
            "loss_align_words": self._contrastive(logits, positive, row_used, num_words, outputs.get("patch_padding"))
        }

    def loss_bio(self, outputs, targets, indices, counts) -> dict[str, torch.Tensor]:
        """Token-level BIO cross-entropy of ``bio_logits`` (B, W, 1 + 2C), mean over real words.
        Independent of the matching: every word of every post is supervised."""
        logits = outputs["bio_logits"].float()
        labels = bio_labels(targets, logits.shape[1], logits.device)
        real = outputs["word_mask"].to(logits.device).bool()
        ce = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
        return {"loss_bio": _weighted_mean(ce, real.float())}

    def loss_proposals(self, outputs, targets, indices, counts) -> dict[str, torch.Tensor]:
        """Cross-entropy of the span-proposal scorer over the types plus "no entity": gold spans
        (up to ``span_proposal_max_words`` words) to their type, every other candidate inside the
        post to "no entity", weighted like the type loss (``no_entity_weight``)."""
        logits = outputs["span_logits"].float()  # (B, W * L, C + 1)
        max_words = self.config.span_proposal_max_words
        labels = span_labels(targets, logits.shape[1] // max_words, max_words, self.num_classes, logits.device)
        weight = self.class_weight.to(logits.device)[labels] * outputs["span_valid"].to(logits.device).float()
        ce = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
        return {"loss_proposals": _weighted_mean(ce, weight)}

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
        losses += ["align"] if "align_logits" in outputs and c.lambda_align else []
        losses += ["align_words"] if "align_word_logits" in outputs and c.lambda_align_words else []
        losses += ["bio"] if "bio_logits" in outputs and c.bio_loss_weight else []
        losses += ["proposals"] if "span_logits" in outputs and c.span_proposal_weight else []
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
        self._patch_cache = {}
        counts = _target_counts(targets, device)
        total, parts = self._single(outputs, targets, indices, counts)
        aux_targets, aux_counts = targets, counts
        k = self.config.aux_one_to_many
        if k > 1 and outputs.get("aux_outputs"):  # one-to-many in the auxiliary layers (H-DETR)
            aux_targets = [repeat_targets(t, k) for t in targets]
            aux_counts = _target_counts(aux_targets, device)
        for aux in outputs.get("aux_outputs", ()):
            total = total + self._single(aux, aux_targets, None, aux_counts)[0]
        self._patch_cache = {}
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
        weights = {
            "loss_ce": c.weight_ce,
            "loss_boundary": c.weight_boundary,
            "loss_l1": c.weight_l1,
            "loss_giou": c.weight_giou,
        }
        pred_terms = [weights[k] * v for k, v in terms.items() if k in weights]
        weighted = []
        if pred_terms:
            terms["loss_pred"] = torch.stack(pred_terms).sum()
            weighted.append(c.lambda_pred * terms["loss_pred"])
        weighted += [
            lam * terms[k]
            for k, lam in (
                ("loss_nt", c.lambda_nt),
                ("loss_con", c.lambda_con),
                ("loss_align", c.lambda_align),
                ("loss_align_words", c.lambda_align_words),
                ("loss_bio", c.bio_loss_weight),
                ("loss_proposals", c.span_proposal_weight),
            )
            if k in terms
        ]
        # With every loss switched off, a zero that still belongs to the graph keeps backward legal.
        total = torch.stack(weighted).sum() if weighted else outputs["type_logits"].sum() * 0
        parts = {k: v.detach() for k, v in terms.items()}
        return total, parts
