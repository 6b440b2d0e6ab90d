"""Multimodal Query Decoding (MQD, paper Sec. III-B): VTF -> FDE -> MRE.

* VTF (Vision Text Fusion): ``num_fusion_layers`` transformer encoder layers over
  ``[F~_v; F~_t] + position + modality embeddings`` (text padding masked) -> memory M_vt. Vision
  positions are learned plus fixed 2D sine positions of the patch grid (DETR's).
  Off: M_vt is the plain concatenation ``[F~_v; F~_t]``.
* FDE (Fusion Decoder): ``num_decoder_layers`` decoder layers (query self-attention,
  cross-attention to M_vt, FFN) -> H_q. Off: H_q = Q~.
* MRE (Multimodal Refinement): the *text part of M_vt* is max-pooled into word features F_tok
  (B, W, d); ``num_refinement_layers`` joint encoder layers over ``[F_tok; H_q]`` (word padding
  masked); after each, one synchronized vision layer updates the *vision part of M_vt*
  (self-attention, cross-attention to the current ``[words; queries]``, FFN); finally the queries
  cross-attend to the updated vision and add it residually: ``H~_q = LN(H_q + Drop(Attn(H_q, V, V)))``.
  Off: H~_q = H_q and the word features are the pooled text part of M_vt.

We read the text and vision that MRE refines from M_vt (not from F~_t / F~_v) so that VTF feeds
the predictions even when FDE is off; with VTF off the two are the same tensors.
The word features MRE returns are also what the span heads score against.

Visual tokens that are padding (the border of an image padded to the square,
``image_geometry="pad"``) are masked as keys in every attention over the vision: VTF, FDE's
cross-attention, MRE's synchronized vision layers and its final merge.

Text-only mode: VTF runs over the text alone (no modality embedding) and MRE has no vision
branch. ``use_mqd=False`` replaces the whole module with :class:`PlainQueryDecoder`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from qgn.errors import QGNError
from qgn.modeling.layers import AttentionBlock, DecoderLayer, EncoderLayer, pool_words, sine_position_2d

VISION, TEXT = 0, 1  # modality embedding rows


def _memory(
    vision: torch.Tensor | None,
    text: torch.Tensor,
    text_padding: torch.Tensor,
    vision_padding: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[vision; text]`` (B, Nv + S, d) and its padding mask (``vision_padding`` (B, Nv) bool, or
    no visual token is padding)."""
    if vision is None:
        return text, text_padding
    if vision_padding is None:
        vision_padding = text_padding.new_zeros(vision.shape[:2])
    return torch.cat([vision, text], dim=1), torch.cat([vision_padding.to(text_padding.dtype), text_padding], dim=1)


class VisionTextFusion(nn.Module):
    """VTF. forward(vision (B, Nv, d) | None, text (B, S, d), text_padding (B, S),
    vision_padding (B, Nv) | None) -> M_vt (B, Nv + S, d)"""

    vision_grid: torch.Tensor  # a buffer (register_buffer), which mypy cannot see
    vision_position: nn.Parameter | None
    modality: nn.Parameter | None

    def __init__(self, config: Any, num_vision_tokens: int | None):
        super().__init__()
        d = config.hidden_size
        self.text_position = nn.Parameter(torch.randn(config.max_text_length, d) * 0.02)
        if num_vision_tokens is not None:
            self.vision_position = nn.Parameter(torch.randn(num_vision_tokens, d) * 0.02)
            # plus fixed 2D sine positions of the patch grid (DETR), so boxes have a frame early
            self.register_buffer("vision_grid", sine_position_2d(num_vision_tokens, d), persistent=False)
            self.modality = nn.Parameter(torch.randn(2, d) * 0.02)
        else:  # text only: one modality, a type embedding would be a constant bias
            self.vision_position = self.modality = None
        self.layers = nn.ModuleList(
            EncoderLayer(d, config.num_attention_heads, config.ffn_dim, config.dropout)
            for _ in range(config.num_fusion_layers)
        )

    def forward(
        self,
        vision: torch.Tensor | None,
        text: torch.Tensor,
        text_padding: torch.Tensor,
        vision_padding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        length = text.shape[1]
        if length > self.text_position.shape[0]:
            raise QGNError(f"{length} sub-words exceed max_text_length={self.text_position.shape[0]}")
        text = text + self.text_position[:length]
        if vision is not None:
            if self.vision_position is None or vision.shape[1] != self.vision_position.shape[0]:
                raise QGNError(
                    f"got {vision.shape[1]} visual tokens, the fusion encoder was built for "
                    f"{None if self.vision_position is None else self.vision_position.shape[0]}"
                )
            vision = vision + self.vision_position + self.vision_grid + self.modality[VISION]  # type: ignore[index]  # set with vision
            text = text + self.modality[TEXT]  # type: ignore[index]  # set with vision
        memory, padding = _memory(vision, text, text_padding, vision_padding)
        for layer in self.layers:
            memory = layer(memory, padding)
        return memory


class MultimodalRefinement(nn.Module):
    """MRE.

    forward(queries (B, Nq, d), words (B, W, d), word_mask (B, W) bool, vision (B, Nv, d) | None,
            vision_padding (B, Nv) bool | None)
        -> (H~_q (B, Nq, d), refined words (B, W, d), updated vision (B, Nv, d) | None)
    """

    vision_layers: nn.ModuleList | None
    vision_merge: AttentionBlock | None

    def __init__(self, config: Any, with_vision: bool):
        super().__init__()
        d, heads, ffn, drop = config.hidden_size, config.num_attention_heads, config.ffn_dim, config.dropout
        depth = config.num_refinement_layers
        self.joint_layers = nn.ModuleList(EncoderLayer(d, heads, ffn, drop) for _ in range(depth))
        if with_vision:
            self.vision_layers = nn.ModuleList(DecoderLayer(d, heads, ffn, drop) for _ in range(depth))
            self.vision_merge = AttentionBlock(d, heads, drop)
        else:
            self.vision_layers = self.vision_merge = None

    def forward(
        self,
        queries: torch.Tensor,
        words: torch.Tensor,
        word_mask: torch.Tensor,
        vision: torch.Tensor | None,
        vision_padding: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        num_words = words.shape[1]
        # queries are never padding, so no row of the joint attention is fully masked
        padding = torch.cat([~word_mask, word_mask.new_zeros(queries.shape[:2])], dim=1)
        for k, joint_layer in enumerate(self.joint_layers):
            joint = joint_layer(torch.cat([words, queries], dim=1), padding)
            words, queries = joint[:, :num_words], joint[:, num_words:]
            if vision is not None and self.vision_layers is not None:
                vision = self.vision_layers[k](vision, joint, padding, vision_padding)
        if vision is not None and self.vision_merge is not None:
            queries = self.vision_merge(queries, vision, vision_padding)  # residual fusion of the updated vision
        return queries, words, vision


class MultimodalQueryDecoding(nn.Module):
    """VTF, FDE and MRE, each removable (``use_vtf`` / ``use_fde`` / ``use_mre``; the attribute
    is then ``None`` and holds no parameters).

    forward(queries (B, Nq, d), vision (B, Nv, d) | None, text (B, S, d), text_padding (B, S) bool,
            word_index (B, S) long, word_mask (B, W) bool, vision_padding (B, Nv) bool | None)
        -> (queries (B, Nq, d), words (B, W, d), intermediate: list of (queries, words, vision)
            after each fusion-decoder layer, for the auxiliary losses, final vision tokens
            (B, Nv, d) | None: the updated vision of MRE, else the vision part of M_vt)
    """

    def __init__(self, config: Any, num_vision_tokens: int | None):
        super().__init__()
        d, heads, ffn, drop = config.hidden_size, config.num_attention_heads, config.ffn_dim, config.dropout
        with_vision = num_vision_tokens is not None
        self.vtf = VisionTextFusion(config, num_vision_tokens) if config.use_vtf else None
        self.fde = (
            nn.ModuleList(DecoderLayer(d, heads, ffn, drop) for _ in range(config.num_decoder_layers))
            if config.use_fde
            else None
        )
        self.mre = MultimodalRefinement(config, with_vision) if config.use_mre else None

    def forward(
        self,
        queries: torch.Tensor,
        vision: torch.Tensor | None,
        text: torch.Tensor,
        text_padding: torch.Tensor,
        word_index: torch.Tensor,
        word_mask: torch.Tensor,
        vision_padding: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list, torch.Tensor | None]:
        if self.vtf is not None:
            memory = self.vtf(vision, text, text_padding, vision_padding)
            padding = _memory(vision, text, text_padding, vision_padding)[1]
        else:
            memory, padding = _memory(vision, text, text_padding, vision_padding)
        num_vision = 0 if vision is None else vision.shape[1]
        words = pool_words(memory[:, num_vision:], word_index, word_mask.shape[1])
        vision = memory[:, :num_vision] if num_vision else None
        intermediate = []
        if self.fde is not None:
            for layer in self.fde:
                queries = layer(queries, memory, padding)
                intermediate.append((queries, words, vision))
        if self.mre is not None:
            queries, words, vision = self.mre(queries, words, word_mask, vision, vision_padding)
        elif intermediate:
            intermediate.pop()  # the last decoder layer's output is the final prediction
        return queries, words, intermediate, vision


class PlainQueryDecoder(nn.Module):
    """``use_mqd=False``: one plain decoder layer whose queries cross-attend to ``[vision; text]``
    (text alone in text-only mode); word features are the max-pooled text features.

    Same forward as :class:`MultimodalQueryDecoding`.
    """

    def __init__(self, config: Any):
        super().__init__()
        self.layer = DecoderLayer(config.hidden_size, config.num_attention_heads, config.ffn_dim, config.dropout)

    def forward(
        self,
        queries: torch.Tensor,
        vision: torch.Tensor | None,
        text: torch.Tensor,
        text_padding: torch.Tensor,
        word_index: torch.Tensor,
        word_mask: torch.Tensor,
        vision_padding: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list, torch.Tensor | None]:
        memory, padding = _memory(vision, text, text_padding, vision_padding)
        queries = self.layer(queries, memory, padding)
        return queries, pool_words(text, word_index, word_mask.shape[1]), [], vision
