"""Model outputs -> per-post entity predictions (span, type, pixel box or ``None``, score)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from qgn.data.records import Post, Prediction
from qgn.modeling.box_ops import denormalize_boxes, image_frame
from qgn.modeling.matcher import masked_log_softmax

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """One query's entity before thresholds: word span (exclusive end), type, score, its pixel box
    (``None`` in text-only mode or without an image size) and its P(no target)."""

    start: int
    end: int
    type: str
    score: float
    box: tuple[float, float, float, float] | None
    no_target_probability: float


class PostProcessor:
    """Turn a batch of model outputs into lists of :class:`Prediction`, one list per post.

    Per query: keep it if its most likely class is not no-entity; its type is the best entity
    type and its span the best ``(start, end)`` pair with ``end >= start`` (at most
    ``max_span_words`` long) under ``P_start(start) * P_end(end)``; ``score = P(type) * P_start *
    P_end``. Queries under ``score_threshold`` are dropped and, per word span, only the best query
    is kept. The box is ``None`` in text-only mode, when ``P(no target) >= no_target_threshold``
    or when the post's image size is unknown; else pixel xyxy clamped to the image. With
    ``remove_overlaps`` spans overlapping a better-scoring span are dropped (greedy by score).
    Predictions come sorted by start word.

    Arguments left ``None`` take the config's values.
    """

    def __init__(
        self,
        config: Any,
        score_threshold: float | None = None,
        no_target_threshold: float | None = None,
        remove_overlaps: bool | None = None,
        max_span_words: int | None = None,
    ):
        self.entity_types = list(config.entity_types)
        self.score_threshold = float(config.score_threshold if score_threshold is None else score_threshold)
        self.no_target_threshold = float(
            config.no_target_threshold if no_target_threshold is None else no_target_threshold
        )
        self.remove_overlaps = bool(config.remove_overlaps if remove_overlaps is None else remove_overlaps)
        if max_span_words is not None and max_span_words < 1:
            raise ValueError(f"max_span_words must be >= 1, got {max_span_words}")
        self.max_span_words = max_span_words
        # boxes are normalised in the frame of the model's square input (config.image_geometry)
        self.image_side = int(getattr(config, "image_size", 1))
        self.geometry = str(getattr(config, "image_geometry", "stretch"))
        self._warned_no_size = False

    def best_spans(
        self, start_logits: torch.Tensor, end_logits: torch.Tensor, word_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:func:`best_spans` with this post-processor's ``max_span_words``."""
        return best_spans(start_logits, end_logits, word_mask, self.max_span_words)

    @torch.no_grad()
    def __call__(self, outputs: Mapping[str, torch.Tensor], posts: Sequence[Post]) -> list[list[Prediction]]:
        """Predictions of each post; ``outputs`` as in the model contract, ``posts`` the batch's."""
        return [self.select(c) for c in self.candidates(outputs, posts, self.score_threshold)]

    @torch.no_grad()
    def candidates(
        self, outputs: Mapping[str, torch.Tensor], posts: Sequence[Post], min_score: float
    ) -> list[list[Candidate]]:
        """Per post, every query that predicts an entity with ``score >= min_score``, in query
        order, with its pixel box whatever its no-target probability: the thresholds are applied
        by :meth:`select`, so one pass of the model serves any thresholds (dev tuning)."""
        type_prob = outputs["type_logits"].float().softmax(-1)  # (B, Nq, C+1)
        is_entity = type_prob.argmax(-1) != len(self.entity_types)
        type_score, type_id = type_prob[..., :-1].max(-1)
        word_mask = outputs.get("word_mask")
        starts, ends, span_score = self.best_spans(outputs["start_logits"], outputs["end_logits"], word_mask)
        score = type_score * span_score
        keep = is_entity & (span_score >= 0) & (score >= min_score)
        boxes = outputs.get("pred_boxes")
        no_target = None
        if boxes is not None and "notarget_logits" in outputs:
            no_target = outputs["notarget_logits"].float().softmax(-1)[..., 1]
        results = []
        for b, post in enumerate(posts):
            found = []
            for q in keep[b].nonzero().flatten().tolist():
                box = None if boxes is None else self._pixel_box(boxes[b, q], post)
                found.append(
                    Candidate(
                        int(starts[b, q]),
                        int(ends[b, q]) + 1,
                        self.entity_types[int(type_id[b, q])],
                        float(score[b, q]),
                        box,
                        0.0 if no_target is None else float(no_target[b, q]),
                    )
                )
            results.append(found)
        return results

    def select(
        self,
        candidates: Sequence[Candidate],
        score_threshold: float | None = None,
        no_target_threshold: float | None = None,
        remove_overlaps: bool | None = None,
    ) -> list[Prediction]:
        """One post's predictions from its candidates; thresholds left ``None`` are this
        post-processor's."""
        score_threshold = self.score_threshold if score_threshold is None else score_threshold
        no_target_threshold = self.no_target_threshold if no_target_threshold is None else no_target_threshold
        remove_overlaps = self.remove_overlaps if remove_overlaps is None else remove_overlaps
        best: dict[tuple[int, int], Prediction] = {}
        for c in candidates:
            if c.score < score_threshold or ((c.start, c.end) in best and best[(c.start, c.end)].score >= c.score):  # type: ignore[operator]  # kept predictions have a score
                continue
            box = c.box if c.no_target_probability < no_target_threshold else None
            best[(c.start, c.end)] = Prediction(c.start, c.end, c.type, box, c.score)
        predictions = list(best.values())
        if remove_overlaps:
            predictions = greedy_non_overlapping(predictions)
        return sorted(predictions, key=lambda p: (p.start, p.end))

    def _pixel_box(self, box: torch.Tensor, post: Post) -> tuple[float, float, float, float] | None:
        if post.image_size is None:
            if not self._warned_no_size:
                logger.warning(
                    "post %s has no image size: its entities get no box (further posts not reported)", post.id
                )
                self._warned_no_size = True
            return None
        frame = image_frame(post.image_size, self.image_side, self.geometry)
        x1, y1, x2, y2 = denormalize_boxes(box.float().cpu(), post.image_size, frame).tolist()
        return (x1, y1, x2, y2)


@torch.no_grad()
def best_spans(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    word_mask: torch.Tensor | None,
    max_span_words: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best ``(start, end)`` with ``end >= start`` (at most ``max_span_words`` long) for every query.

    Args:
        start_logits, end_logits: ``(B, Nq, W)``; word_mask: ``(B, W)`` or ``None``.
    Returns:
        ``start``, ``end`` (inclusive) and ``P_start * P_end``, each ``(B, Nq)``.
    """
    start_prob = masked_log_softmax(start_logits.float(), word_mask).exp()
    end_prob = masked_log_softmax(end_logits.float(), word_mask).exp()
    num_words = start_prob.shape[-1]
    pair = start_prob[..., :, None] * end_prob[..., None, :]  # (B, Nq, W_start, W_end)
    positions = torch.arange(num_words, device=pair.device)
    length = positions[None, :] - positions[:, None]  # end - start
    allowed = length >= 0
    if max_span_words is not None:
        allowed &= length < max_span_words
    allowed = allowed[None, None]
    if word_mask is not None:
        real = word_mask.bool()
        allowed = allowed & real[:, None, :, None] & real[:, None, None, :]
    pair = pair.masked_fill(~allowed, -1.0)  # below any probability product
    best, flat = pair.flatten(-2).max(-1)
    return flat // num_words, flat % num_words, best


def greedy_non_overlapping(predictions: list[Prediction]) -> list[Prediction]:
    """Keep predictions by decreasing score, skipping any that overlaps a kept one."""
    kept: list[Prediction] = []
    for p in sorted(predictions, key=lambda p: -(p.score or 0.0)):
        if all(p.end <= k.start or k.end <= p.start for k in kept):
            kept.append(p)
    return kept
