"""Entity recognition aids (not in the paper): a token-level BIO head and span-proposal queries.

Both read F_t, the projected text-encoder features pooled to words, and both are off unless
:class:`qgn.modeling.configuration_qgn.QGNConfig` switches them on (``bio_loss_weight``,
``span_proposals``).

* :class:`SpanProposer` scores every candidate span of up to L words and turns the k best into
  initial query content, the two-stage scheme of Deformable DETR and DINO with spans in place of
  boxes: a query starts from "this span looks like an entity" instead of from an embedding that
  knows nothing about the post.
* :func:`bio_labels` / :func:`span_labels` build the two heads' targets from the matcher's targets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from qgn.modeling.layers import MLP

IGNORE = -100  # cross_entropy's ignore_index


def bio_tag_count(num_types: int) -> int:
    """O plus B-/I- for each type."""
    return 1 + 2 * num_types


def bio_labels(targets: Sequence[Mapping[str, torch.Tensor]], num_words: int, device: torch.device) -> torch.Tensor:
    """(B, W) long BIO ids: O = 0, B-type c = 1 + 2c, I-type c = 2 + 2c. Targets hold one row per
    gold box, so an entity with two boxes writes its tags twice (the same tags)."""
    labels = torch.zeros(len(targets), num_words, dtype=torch.long, device=device)
    for b, t in enumerate(targets):
        for start, end, kind in zip(t["start"].tolist(), t["end"].tolist(), t["labels"].tolist()):
            labels[b, start] = 1 + 2 * kind
            labels[b, start + 1 : end + 1] = 2 + 2 * kind
    return labels


def span_labels(
    targets: Sequence[Mapping[str, torch.Tensor]], num_words: int, max_words: int, no_entity: int, device: torch.device
) -> torch.Tensor:
    """(B, W * L) long: the type of each candidate span (start s, length l + 1 at index s * L + l)
    that is a gold entity's span, ``no_entity`` for every other candidate."""
    labels = torch.full((len(targets), num_words * max_words), no_entity, dtype=torch.long, device=device)
    for b, t in enumerate(targets):
        for start, end, kind in zip(t["start"].tolist(), t["end"].tolist(), t["labels"].tolist()):
            if end - start < max_words:
                labels[b, start * max_words + end - start] = kind
    return labels


class SpanProposer(nn.Module):
    """Score candidate spans and give the k best as query content.

    A span (s, e) is represented as ``LN(W_s h_s + W_e h_e + E[e - s])`` (its first and last word
    and its length) and scored over the entity types plus "no entity" by an MLP; its entity score
    is ``logsumexp(type logits) - no-entity logit``. The k best valid spans (``topk``, not
    differentiated) give ``W_q r`` as query content; when a post has fewer than k candidates the
    rest are marked invalid and add nothing.

    forward(words (B, W, d), word_mask (B, W) bool) -> dict with
        ``span_logits`` (B, W * L, C + 1), candidate (s, s + l) at index s * L + l;
        ``span_valid`` (B, W * L) bool, the candidate lies inside the post;
        ``content`` (B, k, d), zero for invalid proposals;
        ``start`` / ``end`` (B, k) long word indices of the proposals (inclusive end);
        ``valid`` (B, k) bool.
    """

    def __init__(self, hidden_size: int, num_types: int, max_words: int, num_proposals: int):
        super().__init__()
        self.max_words = max_words
        self.num_proposals = num_proposals
        self.start_proj = nn.Linear(hidden_size, hidden_size)
        self.end_proj = nn.Linear(hidden_size, hidden_size)
        self.length = nn.Embedding(max_words, hidden_size)
        self.norm = nn.LayerNorm(hidden_size)
        self.scorer = MLP(hidden_size, hidden_size, num_types + 1, num_layers=2)
        self.to_query = nn.Linear(hidden_size, hidden_size)

    def forward(self, words: torch.Tensor, word_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        batch, num_words, dim = words.shape
        span_len = self.max_words
        starts = torch.arange(num_words, device=words.device)[:, None].expand(num_words, span_len)
        ends = starts + torch.arange(span_len, device=words.device)[None, :]  # (W, L)
        inside = ends < num_words
        ends = ends.clamp(max=num_words - 1)
        # word_mask is a prefix of each row, so a real last word means a real span
        valid = (word_mask.bool()[:, ends] & inside).flatten(1)  # (B, W * L)
        reps = self.start_proj(words)[:, starts] + self.end_proj(words)[:, ends] + self.length.weight
        reps = self.norm(reps.flatten(1, 2))  # (B, W * L, d)
        logits = self.scorer(reps)
        score = (logits[..., :-1].logsumexp(-1) - logits[..., -1]).float()
        score = score.masked_fill(~valid, float("-inf"))
        # k fillers below every real score, so topk(k) is defined for posts with fewer candidates
        k = self.num_proposals
        filler = score.new_full((batch, k), float("-inf"))
        best = torch.cat([score, filler], dim=1).detach().topk(k, dim=1).indices  # (B, k)
        chosen_valid = best < valid.shape[1]
        best = best.clamp(max=valid.shape[1] - 1)
        chosen_valid = chosen_valid & valid.gather(1, best)
        chosen = reps.gather(1, best[..., None].expand(-1, -1, dim))
        content = self.to_query(chosen) * chosen_valid[..., None].to(reps.dtype)
        start = best // span_len
        end = (start + best % span_len).clamp(max=num_words - 1)
        return {
            "span_logits": logits,
            "span_valid": valid,
            "content": content,
            "start": start,
            "end": end,
            "valid": chosen_valid,
        }
