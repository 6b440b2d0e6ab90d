"""Multi-View Query Attention (MQA, paper Sec. III-A, eqs. 1-2) and the query initialisations
of Table V.

* :class:`QueryInitializer` makes the initial queries Q (B, Nq, d) per ``config.query_init``.
* :class:`MultiViewQueryAttention`: TQC (eq. 1) ``Q_g = LN(Q + Drop(Attn(Q, F_t, F_t)))``, then
  JCA (eq. 2): self-attention over ``[F_t; Q_g]`` (text padding masked) split back into the
  refined text ``F~_t`` and queries ``Q~``. JCA is a full post-LN transformer encoder layer
  (residual + LN around the attention, then an FFN with residual + LN): the paper gives only the
  attention of eq. 2, and the residual keeps BERT's features intact at the start of training
  while the FFN adds the per-token transform every other QGN attention stage has.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from qgn.modeling.layers import AttentionBlock, EncoderLayer, safe_padding_mask


def sinusoidal_codes(count: int, dim: int) -> torch.Tensor:
    """(count, dim) fixed sine/cosine codes of the positions 0..count-1 (Transformer style)."""
    position = torch.arange(count, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    codes = torch.zeros(count, dim)
    codes[:, 0::2] = torch.sin(position * freq)
    codes[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return codes


class QueryInitializer(nn.Module):
    """The initial queries Q (Table V's four settings).

    * ``random``: Nq learnable embeddings (the paper's choice), N(0, 1) like DETR's query embeddings.
    * ``batch_shared``: one learnable embedding shared by all queries plus a fixed sinusoidal
      code of the query index (without it all queries would be identical and stay so).
    * ``mean_pooled_text``: the masked mean of the text features plus a learnable per-query offset.
    * ``attention_pooled_text``: per query, a learned attention pooling over the text
      (a learnable probe vector scored against linearly projected text features).

    forward(text (B, S, d), text_padding (B, S) bool, True = padding) -> (B, Nq, d)
    """

    index_codes: torch.Tensor  # a buffer (register_buffer), which mypy cannot see

    def __init__(self, config: Any):
        super().__init__()
        self.mode = config.query_init
        nq, d = config.num_queries, config.hidden_size
        if self.mode == "random":
            self.embeddings = nn.Parameter(torch.randn(nq, d))
        elif self.mode == "batch_shared":
            self.shared = nn.Parameter(torch.randn(d))
            # Not persistent: a pure function of (Nq, d), rebuilt identically on load.
            self.register_buffer("index_codes", sinusoidal_codes(nq, d), persistent=False)
        elif self.mode == "mean_pooled_text":
            self.offsets = nn.Parameter(torch.randn(nq, d))
        elif self.mode == "attention_pooled_text":
            self.probes = nn.Parameter(torch.randn(nq, d) / math.sqrt(d))
            self.key = nn.Linear(d, d)
        else:  # QGNConfig.validate already refuses this; keep the module honest on its own
            raise ValueError(f"unknown query_init {self.mode!r}")

    def forward(self, text: torch.Tensor, text_padding: torch.Tensor) -> torch.Tensor:
        batch = text.shape[0]
        if self.mode == "random":
            return self.embeddings.unsqueeze(0).expand(batch, -1, -1)
        if self.mode == "batch_shared":
            queries = self.shared + self.index_codes.to(self.shared.dtype)
            return queries.unsqueeze(0).expand(batch, -1, -1)
        valid = (~text_padding).unsqueeze(-1).to(text.dtype)  # (B, S, 1)
        if self.mode == "mean_pooled_text":
            mean = (text * valid).sum(1) / valid.sum(1).clamp(min=1.0)  # (B, d)
            return mean.unsqueeze(1) + self.offsets.unsqueeze(0)
        # attention_pooled_text: scores (B, Nq, S) = probes . W_k F_t / sqrt(d), padding masked
        scores = torch.einsum("qd,bsd->bqs", self.probes, self.key(text)) / math.sqrt(text.shape[-1])
        padding = safe_padding_mask(text_padding)
        scores = scores.masked_fill(padding.unsqueeze(1), torch.finfo(scores.dtype).min)
        return torch.softmax(scores, dim=-1) @ text


class MultiViewQueryAttention(nn.Module):
    """TQC (eq. 1) and JCA (eq. 2); either can be switched off (``use_tqc`` / ``use_jca``), and
    its parameters are then absent (``tqc`` / ``jca`` attributes are ``None``).

    forward(queries (B, Nq, d), text (B, S, d), text_padding (B, S) bool)
        -> (refined queries (B, Nq, d), refined text (B, S, d))
    """

    def __init__(self, config: Any):
        super().__init__()
        d, heads, drop = config.hidden_size, config.num_attention_heads, config.dropout
        self.tqc = AttentionBlock(d, heads, drop) if config.use_tqc else None
        self.jca = EncoderLayer(d, heads, config.ffn_dim, drop) if config.use_jca else None

    def forward(
        self, queries: torch.Tensor, text: torch.Tensor, text_padding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.tqc is not None:
            queries = self.tqc(queries, text, text_padding)  # eq. 1
        if self.jca is not None:
            num_text = text.shape[1]
            joint = torch.cat([text, queries], dim=1)  # F_tq (B, S + Nq, d)
            padding = torch.cat([text_padding, text_padding.new_zeros(queries.shape[:2])], dim=1)
            joint = self.jca(joint, padding)  # eq. 2 (+ residual, LN, FFN)
            text, queries = joint[:, :num_text], joint[:, num_text:]
        return queries, text
