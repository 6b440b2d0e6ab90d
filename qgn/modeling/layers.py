"""Small building blocks shared by the QGN modules (post-LN attention, FFN, MLP, masks, pooling).

Every block is *post*-LayerNorm, like the paper's eq. 1 (``LN(x + Drop(Attn(...)))``), and every
padding mask follows ``nn.MultiheadAttention``'s convention: ``True`` = padding, ignored as a key.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# Filled into span logits outside the words (model contract): finite so fp16/bf16 and BCE stay finite.
MASKED_LOGIT = -1e4


def safe_padding_mask(padding: torch.Tensor) -> torch.Tensor:
    """``padding`` (B, L) bool with every all-padding row's first position un-masked.

    A query whose keys are all masked gets a softmax over nothing, i.e. NaN, which then spreads
    through every later layer and the loss; attending to one (meaningless) key is harmless
    because such a row carries no real token anyway.
    """
    all_masked = padding.all(dim=1, keepdim=True)
    first = torch.zeros_like(padding)
    first[:, 0] = True
    return padding & ~(all_masked & first)


def attend(
    attn: nn.MultiheadAttention,
    query: torch.Tensor,
    key_value: torch.Tensor | None = None,
    key_padding: torch.Tensor | None = None,
) -> torch.Tensor:
    """``attn(query, kv, kv, key_padding_mask=key_padding)[0]`` of a batch-first
    ``nn.MultiheadAttention``, computed batch-first from the module's own weights with
    ``scaled_dot_product_attention`` (the same parameters, so checkpoints are unchanged).

    Why not call the module: its functional path transposes the inputs to (L, B, E) before the
    input projections, and under CPU bf16 autocast a linear layer on such a non-contiguous input
    runs as a bmm against the weight copied once per position. Measured on the full-size model at
    batch 16: those copies were half of the forward pass, and bf16 ran only 1.14 x faster than
    fp32 where the encoders alone ran 3.1 x faster.

    query (B, Lq, D), key_value (B, Lk, D) | None (self-attention), key_padding (B, Lk) bool
    (``True`` = padding) | None -> (B, Lq, D)
    """
    batch, length, dim = query.shape
    heads = attn.num_heads
    weight, bias = attn.in_proj_weight, attn.in_proj_bias
    if key_value is None:
        q, k, v = nn.functional.linear(query, weight, bias).chunk(3, dim=-1)
    else:
        q = nn.functional.linear(query, weight[:dim], None if bias is None else bias[:dim])
        k, v = nn.functional.linear(key_value, weight[dim:], None if bias is None else bias[dim:]).chunk(2, dim=-1)

    def split(t: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, heads, L, D / heads)
        return t.unflatten(-1, (heads, dim // heads)).transpose(1, 2)

    mask = None if key_padding is None else ~key_padding[:, None, None, :]  # SDPA: True = attend
    out = nn.functional.scaled_dot_product_attention(
        split(q), split(k), split(v), attn_mask=mask, dropout_p=attn.dropout if attn.training else 0.0
    )
    return attn.out_proj(out.transpose(1, 2).reshape(batch, length, dim))


class AttentionBlock(nn.Module):
    """``x = LN(x + Drop(MHA(x, kv, kv)))`` -- self-attention when ``kv`` is ``None`` (eq. 1's form).

    forward(x (B, Lq, D), kv (B, Lk, D) | None, kv_padding (B, Lk) bool | None) -> (B, Lq, D)
    """

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(
        self, x: torch.Tensor, kv: torch.Tensor | None = None, kv_padding: torch.Tensor | None = None
    ) -> torch.Tensor:
        if kv_padding is not None:
            kv_padding = safe_padding_mask(kv_padding)
        return self.norm(x + self.dropout(attend(self.attn, x, kv, kv_padding)))


class FeedForwardBlock(nn.Module):
    """``x = LN(x + Drop(W2 Drop(GELU(W1 x))))``. forward(x (..., D)) -> (..., D)"""

    def __init__(self, dim: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim), nn.Dropout(dropout)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.net(x))


class EncoderLayer(nn.Module):
    """Transformer encoder layer: self-attention then FFN (both post-LN).

    forward(x (B, L, D), padding (B, L) bool | None) -> (B, L, D)
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.self_attn = AttentionBlock(dim, heads, dropout)
        self.ffn = FeedForwardBlock(dim, ffn_dim, dropout)

    def forward(self, x: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        return self.ffn(self.self_attn(x, kv_padding=padding))


class DecoderLayer(nn.Module):
    """Transformer decoder layer: self-attention, cross-attention to ``memory``, FFN (post-LN).

    forward(x (B, Lq, D), memory (B, Lm, D), memory_padding (B, Lm) bool | None,
            padding (B, Lq) bool | None: positions of ``x`` that are padding, ignored as keys of
            the self-attention (the padded border of visual tokens)) -> (B, Lq, D)
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.self_attn = AttentionBlock(dim, heads, dropout)
        self.cross_attn = AttentionBlock(dim, heads, dropout)
        self.ffn = FeedForwardBlock(dim, ffn_dim, dropout)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        memory_padding: torch.Tensor | None = None,
        padding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.self_attn(x, kv_padding=padding)
        x = self.cross_attn(x, memory, memory_padding)
        return self.ffn(x)


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them. forward(x (..., in)) -> (..., out)"""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def pool_words(subwords: torch.Tensor, word_index: torch.Tensor, num_words: int) -> torch.Tensor:
    """Max-pool sub-word features into word features (paper Sec. III-B, MRE's F_tok).

    Args:
        subwords: (B, S, D) sub-word features.
        word_index: (B, S) long, the word owning each sub-word, -1 for specials and padding.
        num_words: W, the word axis length (``word_mask.shape[1]``).
    Returns:
        (B, W, D): the element-wise max over each word's sub-words; 0 for words without any
        sub-word (padding words), so they stay finite.
    """
    batch, _, dim = subwords.shape
    # Specials and padding (-1) and any index past W go to a dump slot W that is cut off after.
    index = torch.where((word_index >= 0) & (word_index < num_words), word_index, num_words)
    lowest = torch.finfo(subwords.dtype).min
    pooled = subwords.new_full((batch, num_words + 1, dim), lowest)
    pooled = pooled.scatter_reduce(
        1, index.unsqueeze(-1).expand(-1, -1, dim), subwords, reduce="amax", include_self=True
    )[:, :num_words]
    counts = torch.zeros(batch, num_words + 1, device=subwords.device, dtype=torch.long)
    counts.scatter_add_(1, index, torch.ones_like(index))
    has_subword = counts[:, :num_words, None] > 0
    return torch.where(has_subword, pooled, torch.zeros_like(pooled))


def xavier_init_(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every ``nn.Linear`` / attention projection in
    ``module`` (QGN's own layers; never called on the pretrained encoders). Submodules that must
    start as the identity (a correction added to another head's output) say so with a
    ``start_as_identity_()`` method, called afterwards so Xavier does not undo it."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.xavier_uniform_(sub.weight)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.MultiheadAttention):
            if sub.in_proj_weight is not None:
                nn.init.xavier_uniform_(sub.in_proj_weight)
            if sub.in_proj_bias is not None:
                nn.init.zeros_(sub.in_proj_bias)
    for sub in module.modules():
        if callable(getattr(sub, "start_as_identity_", None)):
            sub.start_as_identity_()  # type: ignore[operator]  # checked callable above


def sine_position_2d(num_tokens: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2D sine/cosine positions (DETR's) for ``[CLS] + g x g`` ViT tokens -> (num_tokens, dim).

    Row and column each get ``dim // 2`` channels; the class token gets zeros. Fixed positions
    give the box head a coordinate frame from the first step, which learned position
    embeddings of a from-scratch encoder only provide after long training.
    """
    grid = math.isqrt(num_tokens - 1)
    if grid * grid != num_tokens - 1 or dim % 4:
        raise ValueError(f"need [CLS] + a square grid of tokens and dim divisible by 4, got {num_tokens}, {dim}")
    quarter = dim // 4
    freq = temperature ** (-torch.arange(quarter, dtype=torch.float32) / quarter)
    coords = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid * 2 * math.pi
    angles = coords[:, None] * freq[None, :]  # (g, dim/4)
    axis = torch.cat([angles.sin(), angles.cos()], dim=1)  # (g, dim/2)
    rows = axis[:, None, :].expand(grid, grid, dim // 2)
    cols = axis[None, :, :].expand(grid, grid, dim // 2)
    table = torch.cat([rows, cols], dim=-1).reshape(grid * grid, dim)
    return torch.cat([torch.zeros(1, dim), table], dim=0)
