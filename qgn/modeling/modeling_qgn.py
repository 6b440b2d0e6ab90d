"""QGN: the Query-Guided Network (paper arXiv 2603.17314, Sec. III, Fig. 2).

Data flow (d = ``config.hidden_size``; see docs/architecture.md for shapes of the default model)::

    input_ids ─ text_encoder (BERT) ─ text_projection ─ F_t ─ queries (Q) ─ mqa (TQC, JCA) ─ Q~, F~_t
                  └ hidden states of text_extract_layers ─ hvla.fuse_text (eq. 3) ─ F_fused
    pixel_values ─ vision_encoder (CLIP ViT, run layer by layer; hvla injects F_fused after
                   vision_inject_layers) ─ tokens of vision_extract_layers ─ vision_projection ─ F~_v
    (Q~, F~_v, F~_t) ─ mqd (VTF, FDE, MRE) or plain_decoder ─ H~_q, word features ─ heads

Every ablation switch of :class:`QGNConfig` removes its module: the attribute is ``None`` and
its parameters are not in the model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qgn.errors import QGNError
from qgn.modeling.configuration_qgn import QGNConfig
from qgn.modeling.encoders import (
    build_text_encoder,
    build_vision_encoder,
    check_layers,
    prune_vision_tower,
    run_vision_tower,
)
from qgn.modeling.heads import AlignmentHead, PredictionHeads
from qgn.modeling.hvla import HierarchicalAlignment, PixelPatchBranch, VisualProjection
from qgn.modeling.layers import pool_words, xavier_init_
from qgn.modeling.mqa import MultiViewQueryAttention, QueryInitializer
from qgn.modeling.mqd import MultimodalQueryDecoding, PlainQueryDecoder
from qgn.modeling.span_aids import SpanProposer, bio_tag_count

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ENCODER_NAMES = ("text_encoder", "vision_encoder")


class QGNModel(nn.Module):
    """The QGN network.

    Args:
        config: the :class:`QGNConfig`. Its ``text_config`` / ``vision_config`` are filled in with
            the encoders' configs (in place), so saving it rebuilds the model offline.
        load_pretrained_encoders: load the encoders' weights with ``from_pretrained`` from
            ``config.text_encoder`` / ``vision_encoder`` (hub name or local directory). They are
            also loaded when the corresponding ``*_config`` is ``None``; otherwise the encoders
            are built from the config dicts with random weights.
    Raises:
        QGNError: an encoder cannot be loaded, or a configured layer index does not exist.
    """

    # transformers models: the fields of their configs depend on the model type, so they are not typed
    text_encoder: Any
    vision_encoder: Any
    hvla: HierarchicalAlignment | None
    vision_projection: VisualProjection | None
    pixel_branch: PixelPatchBranch | None

    def __init__(self, config: QGNConfig, load_pretrained_encoders: bool = False):
        super().__init__()
        config.validate()
        self.config = config
        d = config.hidden_size
        self.text_encoder = build_text_encoder(config, load_pretrained_encoders)
        text_width = self.text_encoder.config.hidden_size
        text_depth = self.text_encoder.config.num_hidden_layers
        self.text_projection = nn.Linear(text_width, d) if text_width != d else nn.Identity()

        # ---- vision side (Sec. III-A, HVLA); absent in text-only mode
        self.vision_encoder = self.hvla = self.vision_projection = self.pixel_branch = None
        self.vision_extract_layers: list[int] = []
        num_vision_tokens = None
        if not config.text_only:
            self.vision_encoder = build_vision_encoder(config, load_pretrained_encoders)
            vcfg = self.vision_encoder.config
            if vcfg.image_size != config.image_size:
                raise QGNError(
                    f"image_size={config.image_size} but the vision encoder expects "
                    f"{vcfg.image_size}px images; set image_size={vcfg.image_size}"
                )
            num_vision_tokens = (vcfg.image_size // vcfg.patch_size) ** 2 + 1
            if config.use_hvla:
                check_layers("text_extract_layers", config.text_extract_layers, text_depth, "the text encoder")
                check_layers(
                    "vision_inject_layers", config.vision_inject_layers, vcfg.num_hidden_layers, "the vision encoder"
                )
                check_layers(
                    "vision_extract_layers", config.vision_extract_layers, vcfg.num_hidden_layers, "the vision encoder"
                )
                self.hvla = HierarchicalAlignment(config, text_width, vcfg.hidden_size, vcfg.num_attention_heads)
                self.vision_extract_layers = [int(i) for i in config.vision_extract_layers]
                deepest = max(self.vision_extract_layers + [int(i) for i in config.vision_inject_layers])
            else:
                self.vision_extract_layers = [vcfg.num_hidden_layers]
                deepest = vcfg.num_hidden_layers
            prune_vision_tower(self.vision_encoder, deepest)
            self.vision_projection = VisualProjection(vcfg.hidden_size, len(self.vision_extract_layers), d)
            self.pixel_branch = (
                PixelPatchBranch(d, width=config.pixel_patch_branch_width, pool=config.pixel_patch_branch_pool)
                if config.pixel_patch_branch
                else None
            )
            if config.use_mqd and not (config.use_fde or config.use_mre):
                raise QGNError(
                    "use_fde and use_mre are both off: the queries would never see the image "
                    "(set use_mqd=false for the plain decoder, or text_only=true)"
                )

        # ---- queries and MQA (Sec. III-A, eqs. 1-2)
        self.queries = QueryInitializer(config)
        use_mqa = config.use_mqa and (config.use_tqc or config.use_jca)
        self.mqa = MultiViewQueryAttention(config) if use_mqa else None

        # ---- MQD (Sec. III-B) and heads (Sec. III-C)
        self.mqd = MultimodalQueryDecoding(config, num_vision_tokens) if config.use_mqd else None
        self.plain_decoder = None if config.use_mqd else PlainQueryDecoder(config)
        self.heads = PredictionHeads(config)
        self.alignment = self.word_alignment = None  # not in the paper (alignment losses)
        if config.lambda_align > 0 and not config.text_only:
            self.alignment = AlignmentHead(d, config.align_dim, config.align_temperature)
        if config.lambda_align_words > 0 and not config.text_only:
            self.word_alignment = AlignmentHead(d, config.align_dim, config.align_temperature)
        # entity recognition aids (not in the paper): a BIO head on the words, span-proposal queries
        num_types = len(config.entity_types)
        self.bio_head = nn.Linear(d, bio_tag_count(num_types)) if config.bio_loss_weight > 0 else None
        self.span_proposer = self.span_prior_bias = None
        if config.span_proposals:
            self.span_proposer = SpanProposer(d, num_types, config.span_proposal_max_words, config.span_proposals)
            # how much a proposal query's own span is preferred by its start / end heads at the start
            self.span_prior_bias = nn.Parameter(torch.tensor(2.0))

        for name, module in self.named_children():
            if name not in ENCODER_NAMES:
                xavier_init_(module)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        word_index: torch.Tensor,
        word_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Predict entities for a batch (inputs and outputs: docs/architecture.md).

        Args:
            input_ids: (B, S) sub-word ids, ``[CLS] ... [SEP]`` then padding.
            attention_mask: (B, S) 1 for real sub-words, 0 for padding.
            word_index: (B, S) the word owning each sub-word, -1 for specials and padding.
            word_mask: (B, W) True for real words.
            pixel_values: (B, 3, H, H) CLIP-normalised images, H = ``config.input_image_size``
                (``image_size`` times ``pixel_refine_scale``);
                required unless text-only (ignored in text-only mode).
            pixel_mask: (B, H, H), nonzero on the image's own pixels and 0 on the padding of an
                image padded to the square (``image_geometry="pad"``); ``None``: no padding. A
                patch with no pixel of the image is padding: the ViT, every attention over
                visual tokens and the alignment never use it.
        Returns:
            ``type_logits`` (B, Nq, C+1); ``start_logits`` and ``end_logits`` (B, Nq, W), -1e4
            where ``word_mask`` is False; ``word_mask`` (B, W) bool (echoed); unless text-only
            ``pred_boxes`` (B, Nq, 4) normalised cxcywh in [0, 1] and ``notarget_logits`` (B, Nq, 2);
            in training with ``config.lambda_align > 0``, ``align_logits`` (B, Nq + 1, G + 1), and
            with ``lambda_align_words > 0``, ``align_word_logits`` (B, W + 1, G + 1) (see
            :class:`qgn.modeling.heads.AlignmentHead`); in training with ``config.aux_loss``,
            ``aux_outputs``: a list of such dicts, one per earlier fusion-decoder layer.
        """
        word_mask = word_mask.bool()
        text_padding = attention_mask == 0
        text_out = self.text_encoder(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=self.hvla is not None
        )
        text = self.text_projection(text_out.last_hidden_state)  # F_t (B, S, d)

        vision = vision_padding = pixels = None
        if self.vision_encoder is not None:
            if pixel_values is None:
                raise QGNError("this QGN model needs pixel_values (it is not text-only)")
            if self.heads.pixel_refine is not None or self.pixel_branch is not None:
                pixels = self._masked_pixels(pixel_values, pixel_mask)
            vit_pixels, vit_mask = self._vision_input(pixel_values, pixel_mask, pixels)
            injector = None
            if self.hvla is not None:
                fused = self.hvla.fuse_text(text_out.hidden_states)  # F_fused (B, S, Dv), eq. 3
                injector = self.hvla.injector(fused, text_padding)
            vision_padding = self._vision_padding(vit_mask, vit_pixels)
            layers = run_vision_tower(
                self.vision_encoder, vit_pixels, self.vision_extract_layers, injector, token_padding=vision_padding
            )
            vision = self.vision_projection(layers)  # type: ignore[misc]  # F~_v (B, Nv, d); built with the vision encoder
            if self.pixel_branch is not None:
                grid = self.config.image_size // self.vision_encoder.config.patch_size
                vision = torch.cat([vision[:, :1], vision[:, 1:] + self.pixel_branch(pixels, grid)], dim=1)

        word_align = bio = proposals = None
        text_words = None  # F_t pooled to words, for the heads that read words before MQA
        if self.word_alignment is not None or self.bio_head is not None or self.span_proposer is not None:
            text_words = pool_words(text, word_index, word_mask.shape[1])
        if self.word_alignment is not None and self.training:
            word_align = self.word_alignment(text_words, vision, self._patch_padding(vision_padding))
        if self.bio_head is not None and self.training:
            bio = self.bio_head(text_words)  # (B, W, 1 + 2C)
        queries = self.queries(text, text_padding)  # Q (B, Nq, d)
        if self.span_proposer is not None:
            proposals = self.span_proposer(text_words, word_mask)
            k = proposals["content"].shape[1]
            queries = torch.cat([queries[:, :k] + proposals["content"].to(queries.dtype), queries[:, k:]], dim=1)
        if self.mqa is not None:
            queries, text = self.mqa(queries, text, text_padding)  # Q~, F~_t
        decoder: nn.Module = self.mqd if self.mqd is not None else self.plain_decoder  # type: ignore[assignment]  # one is built
        queries, words, intermediate, vision = decoder(
            queries, vision, text, text_padding, word_index, word_mask, vision_padding
        )
        if vision_padding is not None:
            # Padding tokens hold whatever the border's pixels gave; the heads that read visual tokens
            # directly (box refinement samples them) see zeros there, never content.
            vision = self._zero_padding(vision, vision_padding)
            intermediate = [(q, w, self._zero_padding(v, vision_padding)) for q, w, v in intermediate]
        patch_padding = self._patch_padding(vision_padding)
        pixel_levels: list[torch.Tensor] | None = None
        if pixels is not None and self.heads.pixel_refine is not None:
            pixel_levels = self.heads.pixel_refine.pyramid(pixels)  # once, not once per decoder layer
        outputs: dict[str, Any] = self._predict(
            queries, words, word_mask, vision, patch_padding, proposals, pixel_levels
        )
        if patch_padding is not None and self.training:
            outputs["patch_padding"] = patch_padding
        if word_align is not None:
            outputs["align_word_logits"] = word_align
        if bio is not None:
            outputs["bio_logits"] = bio
        if proposals is not None and self.training:
            outputs["span_logits"], outputs["span_valid"] = proposals["span_logits"], proposals["span_valid"]
        if self.config.aux_loss and self.training and intermediate:
            # the same heads on every earlier decoder layer (DETR's auxiliary decoding losses)
            outputs["aux_outputs"] = [
                self._predict(q, w, word_mask, v, patch_padding, proposals, pixel_levels) for q, w, v in intermediate
            ]
            if patch_padding is not None:
                for aux in outputs["aux_outputs"]:
                    aux["patch_padding"] = patch_padding
        return outputs

    @staticmethod
    def _masked_pixels(pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, 4, H, H) for the modules that read the input's pixels (``box_refine_pixels``,
        ``pixel_patch_branch``): the padding zeroed and the mask as a fourth channel, so a padded
        border reads as "no image" whatever its pixels hold."""
        mask = (pixel_mask if pixel_mask is not None else pixel_values.new_ones(pixel_values[:, 0].shape))[:, None]
        mask = (mask > 0).to(pixel_values.dtype)
        return torch.cat([pixel_values * mask, mask], dim=1)

    def _vision_input(
        self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None, pixels: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the ViT sees: the input as it is, or with ``pixel_refine_scale`` > 1 the
        ``scale`` x ``scale`` averages of ``pixels`` (:meth:`_masked_pixels`, always there then,
        since the scale needs ``box_refine_pixels``): padding counts as zero (the mean colour),
        whatever it holds, and a pooled pixel is the image's if any of its pixels is."""
        side, scale = self.config.input_image_size, self.config.pixel_refine_scale
        if tuple(pixel_values.shape[-2:]) != (side, side):
            raise QGNError(
                f"pixel_values are {tuple(pixel_values.shape[-2:])} px; this model takes {side} x {side} "
                f"(image_size {self.config.image_size} x pixel_refine_scale {scale}): use its own image processor"
            )
        if scale == 1 or pixels is None:
            return pixel_values, pixel_mask
        pooled = torch.nn.functional.avg_pool2d(pixels, scale)  # image channels and mask alike
        return pooled[:, :3], None if pixel_mask is None else pooled[:, 3] > 0

    def _vision_padding(self, pixel_mask: torch.Tensor | None, pixel_values: torch.Tensor) -> torch.Tensor | None:
        """(B, Nv) bool, True for the visual tokens whose patch holds no pixel of the image (the
        class token never is), or ``None`` when nothing is padded."""
        if pixel_mask is None:
            return None
        patch = self.vision_encoder.config.patch_size
        if tuple(pixel_mask.shape[-2:]) != tuple(pixel_values.shape[-2:]):
            raise QGNError(
                f"pixel_mask {tuple(pixel_mask.shape)} does not match pixel_values {tuple(pixel_values.shape)}"
            )
        content = torch.nn.functional.max_pool2d(pixel_mask[:, None].to(pixel_values.dtype), patch, patch)
        padding = content.flatten(1) <= 0  # (B, G)
        return torch.cat([padding.new_zeros(padding.shape[0], 1), padding], dim=1)

    def _span_prior(self, logits: torch.Tensor, index: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``logits`` (B, Nq, W) with ``span_prior_bias`` added at word ``index`` (B, k) of the
        first k queries where ``valid`` (B, k); a comparison, not one_hot, so ONNX keeps W dynamic."""
        k = index.shape[1]
        words = torch.arange(logits.shape[-1], device=logits.device)
        hit = (words[None, None, :] == index[..., None]) & valid[..., None]  # (B, k, W)
        bonus = hit.to(logits.dtype) * self.span_prior_bias.to(logits.dtype)  # type: ignore[union-attr]  # built with the proposer
        return torch.cat([logits[:, :k] + bonus, logits[:, k:]], dim=1)

    @staticmethod
    def _zero_padding(vision: torch.Tensor | None, vision_padding: torch.Tensor) -> torch.Tensor | None:
        return None if vision is None else vision.masked_fill(vision_padding[..., None], 0.0)

    @staticmethod
    def _patch_padding(vision_padding: torch.Tensor | None) -> torch.Tensor | None:
        """The grid part of ``vision_padding`` (B, G), class token left out."""
        return None if vision_padding is None else vision_padding[:, 1:]

    def _predict(
        self,
        queries: torch.Tensor,
        words: torch.Tensor,
        word_mask: torch.Tensor,
        vision: torch.Tensor | None,
        patch_padding: torch.Tensor | None = None,
        proposals: dict[str, torch.Tensor] | None = None,
        pixels: list[torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The heads on one set of queries, plus what the query-patch alignment adds to them
        (``align_presence``, ``align_box_prior``; ``align_logits`` in training) and the span
        prior of proposal queries (``span_proposals``)."""
        c = self.config
        align = reference = None
        if self.alignment is not None and (self.training or c.align_presence or c.align_box_prior):
            align = self.alignment(queries, vision, patch_padding)  # (B, Nq + 1, G + 1)
            if c.align_box_prior:
                reference = self.alignment.reference_points(align)
        outputs = self.heads(queries, words, word_mask, box_reference=reference, vision=vision, pixels=pixels)
        outputs["word_mask"] = word_mask
        if proposals is not None:
            for key in ("start", "end"):
                outputs[f"{key}_logits"] = self._span_prior(
                    outputs[f"{key}_logits"], proposals[key], proposals["valid"]
                )
        if align is not None and c.align_presence:
            evidence = torch.stack([align[:, :-1, :-1].logsumexp(-1), align[:, :-1, -1]], dim=-1)
            outputs["notarget_logits"] = outputs["notarget_logits"] + evidence.to(outputs["notarget_logits"].dtype)
        if align is not None and self.training:
            outputs["align_logits"] = align
        return outputs

    # ------------------------------------------------------------------ checkpoints
    def save_pretrained(
        self,
        directory: str | os.PathLike,
        tokenizer: Any = None,
        image_processor: Any = None,
        data_path: str | None = None,
    ) -> None:
        """Write ``config.json`` (the QGNConfig, encoder configs included) and ``model.safetensors``
        into ``directory`` (created), plus the tokenizer / image processor through their own
        ``save_pretrained`` when given, and a model card ``README.md`` (``data_path``: the training
        data, described in the card; training rewrites the card with the final figures)."""
        from safetensors.torch import save_model

        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.save(folder / CONFIG_FILE)
        save_model(self, str(folder / WEIGHTS_FILE))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(folder))
        if image_processor is not None:
            image_processor.save_pretrained(str(folder))
        from qgn.model_card import write_model_card

        write_model_card(folder, self.config, data_path=data_path)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> QGNModel:
        """Rebuild a model saved by :meth:`save_pretrained` (never downloads: the encoders are
        built from the stored configs, then every weight is loaded strictly). Returned in eval mode."""
        from safetensors.torch import load_model

        folder = Path(directory)
        config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        for path in (config_path, weights_path):
            if not path.is_file():
                raise QGNError(f"{folder} is not a QGN checkpoint: {path.name} is missing")
        try:
            config = QGNConfig.load(config_path)
        except (ValueError, TypeError, UnicodeDecodeError) as exc:  # json.JSONDecodeError is a ValueError
            raise QGNError(f"{config_path}: {exc}") from exc
        if config.text_config is None or (not config.text_only and config.vision_config is None):
            raise QGNError(f"{config_path}: text_config/vision_config missing, cannot rebuild the encoders offline")
        model = cls(config, load_pretrained_encoders=False)
        from safetensors import SafetensorError

        try:
            load_model(model, str(weights_path), strict=True)
        except SafetensorError as exc:  # truncated or overwritten file
            raise QGNError(f"{weights_path} is corrupt or truncated ({exc}); restore it or retrain") from None
        except RuntimeError as exc:
            raise QGNError(f"{weights_path} does not match {config_path}: {str(exc)[:500]}") from exc
        return model.eval()


def count_parameters(model: nn.Module) -> dict[str, Any]:
    """``{"total": n, "trainable": n, "per_module": {top-level child name: n}}`` (numbers of scalars)."""
    per_module = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    return {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "per_module": per_module,
    }
