"""The one configuration object of a QGN model.

Every hyperparameter of the model, the Hungarian matcher, the loss and the post-processor lives
here with the paper's default, and the whole object is saved as ``config.json`` inside every
checkpoint. Training-loop settings (batch size, learning rate, epochs...) are not model
hyperparameters and live in :class:`qgn.engine.train.TrainConfig`.

Layer indices follow the paper and are **1-based**: BERT layer ``j`` is the output of the j-th
transformer block (``hidden_states[j]`` in transformers, where ``hidden_states[0]`` is the
embedding output); ViT layer ``i`` is the output of the i-th CLIP encoder block. Text-guided
cross-attention is injected *after* each ViT injection layer, and the extracted visual features
of a layer are read after any injection at that layer.

Values the paper leaves open (marked "not in the paper" below) are our choices; they are config
fields so that they can be changed without touching code.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from qgn.modeling.box_ops import IMAGE_GEOMETRIES

# how the pixel branch pools its maps over each patch (qgn.modeling.hvla.PixelPatchBranch)
PIXEL_PATCH_POOLS = ("mean", "max", "mean_max")

QUERY_INITS = ("random", "batch_shared", "mean_pooled_text", "attention_pooled_text")
GMNER_TYPES = ["PER", "LOC", "ORG", "OTHER"]


def layer_schedule(start: int, stride: int, count: int = 4) -> list[int]:
    """1-based layer indices ``start, start+stride, ...`` (Table VI's start layer and stride).

    ``layer_schedule(1, 3)`` gives the paper's BERT extraction layers ``[1, 4, 7, 10]`` and
    ``layer_schedule(2, 3)`` its ViT injection/extraction layers ``[2, 5, 8, 11]``.
    """
    if start < 1 or stride < 1 or count < 1:
        raise ValueError(f"start, stride and count must be >= 1, got {start}, {stride}, {count}")
    return [start + i * stride for i in range(count)]


@dataclass
class QGNConfig:
    """Configuration of a QGN model (paper: arXiv 2603.17314, Section III).

    Encoders (Sec. III-A):
        text_encoder: hub name or local directory of a BERT-like encoder (``bert-base-cased``).
        vision_encoder: hub name or local directory of a CLIP model or CLIP vision model
            (``openai/clip-vit-base-patch32``).
        text_config: a transformers ``BertConfig`` as a dict. When set, the text encoder is
            built from it with random weights instead of being loaded from ``text_encoder``;
            checkpoints always store it, so loading a checkpoint never downloads anything.
        vision_config: the same for the ``CLIPVisionConfig``.
        image_size: side of the square the vision encoder sees (224 for ViT-B/32).
        image_geometry: how an image of any shape becomes that square (never a crop, which would
            cut boxes off). ``pad`` (default): the longer side is resized to ``image_size``, the
            aspect ratio kept, the rest padded on the right and bottom and masked (the ViT,
            every attention over visual tokens and the alignment losses never see padding as
            content). ``stretch``: the whole image squashed to the square, as qgn did before
            (checkpoints saved without this field load as ``stretch``). Not in the paper.
        max_text_length: sub-word limit of the text encoder input; longer posts are truncated
            with a warning.

    Width and queries:
        hidden_size: model width d shared by every QGN module (768, the BERT-base width); encoder
            features of another width are linearly projected to it.
        num_queries: Nq, the number of entity queries (60; Figure 3).
        num_attention_heads: heads of every QGN attention layer (8; not in the paper).
        ffn_dim: feed-forward width of QGN transformer layers (2048; not in the paper).
        dropout: dropout inside QGN modules (0.1; not in the paper).
        entity_types: the label set; the type head has ``len(entity_types) + 1`` outputs, the
            last one being the no-entity class.

    Multi-View Query Attention (MQA, Sec. III-A, eqs. 1-2):
        use_mqa: whole module on/off (Table III). Off: the initial queries and the raw text
            features go on unchanged.
        query_init: how the initial queries Q are made (Table V): ``random`` (Nq learnable
            embeddings, the paper's choice), ``batch_shared`` (one learnable embedding shared
            by all queries, plus a fixed sinusoidal index code so they can differ),
            ``mean_pooled_text`` (the masked mean of the text features plus a learnable
            per-query offset), ``attention_pooled_text`` (per-query learned attention pooling
            over the text).
        use_tqc: text-guided query cross-attention (eq. 1) on/off ("w/o TQC").
        use_jca: joint [text; queries] self-attention (eq. 2) on/off ("w/o JCA").

    Hierarchical Vision-Language Alignment (HVLA, Sec. III-A, eq. 3):
        use_hvla: whole module on/off (Table III). Off: plain ViT, visual features are the last
            layer's tokens projected to d.
        text_extract_layers: BERT layers fused into F_fused ([1, 4, 7, 10]).
        vision_inject_layers: ViT layers after which visual tokens cross-attend to F_fused
            ([2, 5, 8, 11]).
        vision_extract_layers: ViT layers concatenated into the visual features ([2, 5, 8, 11]).

    Multimodal Query Decoding (MQD, Sec. III-B):
        use_mqd: whole module on/off (Table III). Off: the queries reach the heads through one
            plain decoder layer that cross-attends to [vision; text], the least the heads need
            to see the image at all.
        use_vtf: vision-text fusion encoder on/off ("w/o VTF"); off: the memory is the plain
            concatenation [vision; text].
        num_fusion_layers: depth of the vision-text fusion encoder (2; not in the paper).
        use_fde: fusion decoder on/off ("w/o FDE").
        num_decoder_layers: depth of the fusion decoder (3; not in the paper).
        use_mre: multimodal refinement on/off ("w/o MRE").
        num_refinement_layers: depth of the refinement stack and of the synchronized vision
            layers (2; not in the paper).

    Auxiliary decoding losses (not in the paper):
        aux_loss: also supervise the predictions of the heads after every fusion-decoder layer,
            each with its own Hungarian matching (DETR's auxiliary losses). Off by default to stay
            with the paper; on in the tiny preset, where it makes training from scratch converge
            much faster. Only computed in training mode.
        aux_one_to_many: match each target this many times in the auxiliary layers (1 = plain
            one-to-one matching, DETR's; needs ``aux_loss``). With k > 1 every gold entity is
            matched to up to k queries of each earlier layer, which gives those layers k times
            the positive supervision; the final layer stays one-to-one, so inference still has one
            query per entity (H-DETR's hybrid-layer scheme, Jia et al. 2023).

    Query-patch alignment loss (not in the paper; MDETR's contrastive alignment, Kamath et al.
    2021, with image patches in place of text tokens):
        lambda_align: weight of the loss (0 = off, the paper's model; on in the demo config). With
            it on, the model projects the final queries and the final visual tokens to
            ``align_dim`` and scores every (query, patch) pair by cosine / ``align_temperature``.
            A query matched to a grounded target is pulled to the patches inside that target's
            box, one matched to a box-less entity to a learned "no patch" slot; every patch is
            pulled to the queries whose box covers it, or to a learned "no query" slot (the
            background and unmentioned objects). It supervises the binding of a name to its
            look directly, where the box losses reach it only through the box head.
        lambda_align_words: weight of a second alignment loss at the encoders (0 = off): the words
            of each gold entity (text features F_t pooled to words) against the ViT patches
            (F~_v), GLIP's word-region alignment with patches as regions; a patch of no entity
            goes to a learned "no word" slot. It binds a name to its look before any query is
            involved, and does not depend on the matching.
        align_presence: the no-target head also reads the alignment (needs ``lambda_align > 0``):
            its has-target logit gains the log-sum-exp of the query's patch scores, its no-target
            logit the query's "no patch" score, so P(no target) starts as the alignment's own
            answer to "is my look anywhere in the image?" and the MLP corrects it (False).
        align_box_prior: the box head predicts its centre as an offset (in logit space) from the
            query's expected patch centre under the alignment softmax, Deformable DETR's reference
            points taken from the alignment (needs ``lambda_align > 0``; False): once a query
            knows which patches wear its entity's look, the box is nearly given.
        align_dim: width of the alignment projections (64, MDETR's).
        align_temperature: temperature of the alignment softmax (0.07, MDETR's).

    Box refinement (not in the paper; :class:`qgn.modeling.heads.BoxRefinement`):
        box_refine: after the box head, sample the final visual tokens at 3 x 3 points over the
            predicted box (its edges and middle) and let an MLP correct the box from them and the
            query (False). The box head alone is only as precise as the patch grid it reads.
        box_refine_pixels: then sample the input pixels (padding zeroed, pixel mask as a fourth
            channel) at 8 x 8 points over the box enlarged 1.5 times, read them with two small
            convolutions and let an MLP correct the box again (False;
            :class:`qgn.modeling.heads.PixelBoxRefinement`): finer than the patch grid.
        pixel_refine_scale: the input image is this many times ``image_size`` on a side (1); the
            vision encoder sees it average-pooled back to ``image_size``, and ``box_refine_pixels``
            samples it at full resolution, from a pyramid level matched to each box's size (so a
            small object is read at pixels the ViT never gets, a large one without aliasing).
            A second, high-resolution look at each candidate region that costs the ViT nothing.
            Needs ``box_refine_pixels``.
        pixel_patch_branch: a small CNN reads the input image at its full resolution (three
            stride-2 3 x 3 convolutions) and adds its maps, averaged over each patch and projected
            to d from zero, to the visual tokens F~_v (False;
            :class:`qgn.modeling.hvla.PixelPatchBranch`). With ``pixel_refine_scale`` > 1 the
            alignment and the decoder then see details finer than the ViT's pixels.
        pixel_patch_branch_width: the maps of that CNN's first convolution (16); the second and
            third have twice and four times as many. Its cost grows about as the square.
        pixel_patch_branch_pool: how that CNN's maps are pooled over each patch: ``mean``
            (default), ``max`` (an object smaller than the patch is not diluted by the background
            around it) or ``mean_max`` (both, side by side, before the projection).

    Entity recognition aids (not in the paper; they make the span queries learn what a tagger
    learns, from the first step; :mod:`qgn.modeling.span_aids`):
        bio_loss_weight: weight of an auxiliary token-level BIO loss (0 = off): a linear layer
            over the text features F_t pooled to words tags every word O / B-type / I-type, trained
            with cross-entropy against the gold spans. The encoder then gets a dense signal on
            every word, where the set loss reaches it only through the few matched queries.
        span_proposals: k, the number of queries initialised from candidate spans (0 = off;
            two-stage queries, as in Deformable DETR and DINO). Every span of up to
            ``span_proposal_max_words`` words is scored from F_t (its first and last word and its
            length); the k best add their span feature to the first k learned query embeddings,
            and those queries' start / end logits get a learned bias (``span_prior_bias``, 2 at
            the start) on the proposed words. The selection is not differentiated; the span
            feature is. The scorer is trained with ``span_proposal_weight`` times a cross-entropy
            over the entity types plus "no entity" (gold spans against all others).
        span_proposal_max_words: the longest candidate span in words (6).
        span_proposal_weight: weight of the proposal scorer's loss (1.0; used when
            ``span_proposals > 0``).

    Text-only mode:
        text_only: no image branch at all (no vision encoder, no HVLA, MQD without vision); the
            box and no-target heads are off and every entity is predicted without a box.

    Hungarian matcher (Sec. III-C, eq. 4) -- cost weights, named apart from loss weights:
        cost_class, cost_span, cost_l1, cost_giou: lambda_cls, lambda_span, lambda_l1,
            lambda_IoU (1, 1, 5, 2; not in the paper, DETR's box costs).
        cost_no_box: the constant that replaces the region costs of entities without a box.

    Losses (Sec. III-D, eq. 5):
        lambda_pred, lambda_nt, lambda_con: weights of the prediction, no-target and consistency
            losses (1, 1, 1; not in the paper). A weight of 0 switches that loss off (Table IV):
            it is then not computed at all.
        weight_ce, weight_boundary, weight_l1, weight_giou: weights inside the prediction loss
            (1, 1, 5, 2; not in the paper).
        notarget_unmatched_weight: weight of the unmatched queries ("no target") in L_nt, the
            matched ones weighing 1; ``None`` (default) takes ``no_entity_weight``. The paper
            defines L_nt on matched queries; inference never reads an unmatched query's no-target
            head (its type is no-entity), and 0 keeps them from biasing the head towards "no box".
        no_entity_weight: cross-entropy weight of the no-entity class for unmatched queries
            (0.1, DETR's eos_coef; not in the paper).

    Post-processing (inference):
        no_target_threshold: a query's entity gets no box when P(no-target) >= this (0.5).
        score_threshold: entities whose score (type probability x start probability x end
            probability) is below this are dropped (0.3; tune on dev).
        remove_overlaps: drop spans overlapping a higher-scoring span (False).
    """

    # encoders
    text_encoder: str = "bert-base-cased"
    vision_encoder: str = "openai/clip-vit-base-patch32"
    text_config: dict[str, Any] | None = None
    vision_config: dict[str, Any] | None = None
    image_size: int = 224
    image_geometry: str = "pad"
    max_text_length: int = 128
    # width and queries
    hidden_size: int = 768
    num_queries: int = 60
    num_attention_heads: int = 8
    ffn_dim: int = 2048
    dropout: float = 0.1
    entity_types: list[str] = field(default_factory=lambda: list(GMNER_TYPES))
    # MQA
    use_mqa: bool = True
    query_init: str = "random"
    use_tqc: bool = True
    use_jca: bool = True
    # HVLA
    use_hvla: bool = True
    text_extract_layers: list[int] = field(default_factory=lambda: [1, 4, 7, 10])
    vision_inject_layers: list[int] = field(default_factory=lambda: [2, 5, 8, 11])
    vision_extract_layers: list[int] = field(default_factory=lambda: [2, 5, 8, 11])
    # MQD
    use_mqd: bool = True
    use_vtf: bool = True
    num_fusion_layers: int = 2
    use_fde: bool = True
    num_decoder_layers: int = 3
    use_mre: bool = True
    num_refinement_layers: int = 2
    aux_loss: bool = False
    aux_one_to_many: int = 1
    # query-patch alignment (not in the paper)
    lambda_align: float = 0.0
    lambda_align_words: float = 0.0
    align_presence: bool = False
    align_box_prior: bool = False
    align_dim: int = 64
    align_temperature: float = 0.07
    # box refinement (not in the paper)
    box_refine: bool = False
    box_refine_pixels: bool = False
    pixel_refine_scale: int = 1
    pixel_patch_branch: bool = False
    pixel_patch_branch_width: int = 16
    pixel_patch_branch_pool: str = "mean"
    # entity recognition aids (not in the paper)
    bio_loss_weight: float = 0.0
    span_proposals: int = 0
    span_proposal_max_words: int = 6
    span_proposal_weight: float = 1.0
    # text-only mode
    text_only: bool = False
    # matcher
    cost_class: float = 1.0
    cost_span: float = 1.0
    cost_l1: float = 5.0
    cost_giou: float = 2.0
    cost_no_box: float = 100.0
    # losses
    lambda_pred: float = 1.0
    lambda_nt: float = 1.0
    lambda_con: float = 1.0
    weight_ce: float = 1.0
    weight_boundary: float = 1.0
    weight_l1: float = 5.0
    weight_giou: float = 2.0
    no_entity_weight: float = 0.1
    notarget_unmatched_weight: float | None = None
    # post-processing
    no_target_threshold: float = 0.5
    score_threshold: float = 0.3
    remove_overlaps: bool = False

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ``ValueError`` with a readable message on an inconsistent configuration."""
        if self.image_geometry not in IMAGE_GEOMETRIES:
            raise ValueError(f"image_geometry must be one of {IMAGE_GEOMETRIES}, got {self.image_geometry!r}")
        if self.query_init not in QUERY_INITS:
            raise ValueError(f"query_init must be one of {QUERY_INITS}, got {self.query_init!r}")
        if self.num_queries < 1:
            raise ValueError(f"num_queries must be >= 1, got {self.num_queries}")
        if self.aux_one_to_many < 1:
            raise ValueError(f"aux_one_to_many must be >= 1 (1 = one-to-one), got {self.aux_one_to_many}")
        for name in ("image_size", "max_text_length", "hidden_size", "num_attention_heads", "ffn_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1) (a probability), got {self.dropout}")
        for name in ("no_target_threshold", "score_threshold"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1] (a probability), got {getattr(self, name)}")
        weights = (
            "cost_class",
            "cost_span",
            "cost_l1",
            "cost_giou",
            "cost_no_box",
            "lambda_pred",
            "lambda_nt",
            "lambda_con",
            "weight_ce",
            "weight_boundary",
            "weight_l1",
            "weight_giou",
            "no_entity_weight",
            "notarget_unmatched_weight",
            "bio_loss_weight",
            "span_proposal_weight",
        )
        for name in weights:
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (a weight), got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if isinstance(self.entity_types, str) or not all(isinstance(t, str) and t for t in self.entity_types):
            raise ValueError(f"entity_types must be a list of type names (e.g. [PER, LOC]), got {self.entity_types!r}")
        if not self.entity_types or len(set(self.entity_types)) != len(self.entity_types):
            raise ValueError(f"entity_types must be non-empty and unique: {self.entity_types}")
        for name in ("text_extract_layers", "vision_inject_layers", "vision_extract_layers"):
            layers = getattr(self, name)
            if not layers or any(int(i) < 1 for i in layers) or len(set(layers)) != len(layers):
                raise ValueError(f"{name} must be distinct 1-based layer indices, got {layers}")
        if self.lambda_align < 0 or self.lambda_align_words < 0 or self.align_dim < 1 or self.align_temperature <= 0:
            raise ValueError(
                f"need lambda_align >= 0, align_dim >= 1, align_temperature > 0, got "
                f"{self.lambda_align}, {self.lambda_align_words}, {self.align_dim}, {self.align_temperature}"
            )
        for name in ("align_presence", "align_box_prior"):
            if getattr(self, name) and not self.lambda_align:
                raise ValueError(f"{name} reads the alignment head: it needs lambda_align > 0")
        if self.pixel_refine_scale < 1:
            raise ValueError(f"pixel_refine_scale must be >= 1, got {self.pixel_refine_scale}")
        if self.pixel_patch_branch_width < 1:
            raise ValueError(f"pixel_patch_branch_width must be >= 1, got {self.pixel_patch_branch_width}")
        if self.pixel_patch_branch_pool not in PIXEL_PATCH_POOLS:
            raise ValueError(
                f"pixel_patch_branch_pool must be one of {', '.join(PIXEL_PATCH_POOLS)}, "
                f"got {self.pixel_patch_branch_pool!r}"
            )
        if self.pixel_patch_branch and self.text_only:
            raise ValueError("pixel_patch_branch reads the image: it needs text_only=false")
        if self.pixel_refine_scale > 1 and (not self.box_refine_pixels or self.text_only):
            raise ValueError("pixel_refine_scale feeds the pixel refinement: it needs box_refine_pixels (and an image)")
        if not 0 <= self.span_proposals <= self.num_queries:
            raise ValueError(
                f"span_proposals must be in [0, num_queries={self.num_queries}] (queries set from spans), "
                f"got {self.span_proposals}"
            )
        if self.span_proposal_max_words < 1:
            raise ValueError(f"span_proposal_max_words must be >= 1, got {self.span_proposal_max_words}")
        for name in ("num_fusion_layers", "num_decoder_layers", "num_refinement_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def num_labels(self) -> int:
        """Number of type-head outputs: the entity types plus the no-entity class (last)."""
        return len(self.entity_types) + 1

    @property
    def input_image_size(self) -> int:
        """Side of the square input image: ``image_size`` times ``pixel_refine_scale``."""
        return self.image_size * self.pixel_refine_scale

    @property
    def no_entity_index(self) -> int:
        return len(self.entity_types)

    @property
    def uses_image(self) -> bool:
        return not self.text_only

    # ------------------------------------------------------------ (de)serialise
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QGNConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown QGNConfig field(s): {', '.join(unknown)}")
        return cls(**data)

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> QGNConfig:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        # Checkpoints from before the field existed were trained on stretched images.
        if isinstance(data, dict):
            data.setdefault("image_geometry", "stretch")
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> QGNConfig:
        return dataclasses.replace(self, **changes)

    # ----------------------------------------------------------------- presets
    @classmethod
    def tiny(cls, vocab_size: int = 1000, **overrides: Any) -> QGNConfig:
        """A tiny model for tests and the CPU demo: 4-layer width-64 encoders, 64px images.

        Both encoders are built from configs with random weights, so nothing is downloaded.
        ``vocab_size`` must match the tokenizer used with it. ``text_config`` / ``vision_config``
        overrides are merged into the preset's dicts (``vision_config: {patch_size: 16}`` changes
        the patch size alone), and an ``image_size`` override also sizes the ViT.
        """
        width = 64
        text_config = dict(
            model_type="bert",
            vocab_size=vocab_size,
            hidden_size=width,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=4 * width,
            max_position_embeddings=128,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        vision_config = dict(
            model_type="clip_vision_model",
            hidden_size=width,
            intermediate_size=4 * width,
            num_hidden_layers=4,
            num_attention_heads=4,
            image_size=int(overrides.get("image_size", 64)),
            patch_size=8,
            attention_dropout=0.0,
        )
        # A dict override is merged into the preset; an explicit None (load the encoder with
        # from_pretrained) is kept as it is.
        for name, preset in (("text_config", text_config), ("vision_config", vision_config)):
            if overrides.get(name) is not None:
                preset.update(overrides.pop(name))
        values: dict[str, Any] = dict(
            text_encoder="tiny-random-bert",
            vision_encoder="tiny-random-clip-vision",
            text_config=text_config,
            vision_config=vision_config,
            image_size=vision_config["image_size"],
            max_text_length=64,
            hidden_size=width,
            num_queries=16,
            num_attention_heads=4,
            ffn_dim=4 * width,
            dropout=0.0,
            text_extract_layers=[1, 2, 3, 4],
            vision_inject_layers=[1, 2, 3],
            vision_extract_layers=[2, 3, 4],
            num_fusion_layers=1,
            num_decoder_layers=2,
            num_refinement_layers=1,
            aux_loss=True,
        )
        values.update(overrides)
        return cls(**values)
