"""What a training run is built from: its tokenizer, its data splits and loaders, and its optimizer
(parameter groups). Used by :mod:`qgn.engine.train`."""

from __future__ import annotations

import logging
from typing import Any

import torch

from qgn.engine.settings import RunSettings
from qgn.errors import QGNError

logger = logging.getLogger("qgn.engine.train")


def build_tokenizer(settings: RunSettings, train_posts: list) -> Any:
    config = settings.model
    if settings.data.tokenizer == "words":
        from qgn.modeling.tokenizer import build_word_tokenizer

        words = sorted({token for post in train_posts for token in post.tokens})
        tokenizer = build_word_tokenizer(words)
        if config.text_config is None:
            raise QGNError("data.tokenizer=words needs a text encoder built from config (model.preset: tiny)")
        config.text_config["vocab_size"] = len(tokenizer)
        return tokenizer
    if settings.data.tokenizer not in (None, "encoder"):
        raise QGNError(f"data.tokenizer must be null or 'words', got {settings.data.tokenizer!r}")
    from qgn.modeling.encoders import load_tokenizer

    return load_tokenizer(config.text_encoder)


def read_split(
    settings: RunSettings,
    split: str,
    missing_images: str | None = None,
    skipped: dict[str, dict[str, int]] | None = None,
) -> list:
    """One split of the run's data; posts dropped by the ``skip`` image policy are counted in
    ``skipped[split]`` (posts and their gold entities), so the results can say so."""
    from qgn.data import ReadReport, read_dataset

    data = settings.data
    if not data.path:
        raise QGNError("no data: set data.path in the config or with --set data.path=DIR")
    policy = missing_images or data.missing_images
    if settings.model.text_only:
        policy = "text_only"
    report = ReadReport()
    posts = read_dataset(
        data.path,
        split=split,
        image_dir=data.image_dir,
        missing_images=policy,
        fmnerg_xml_dir=data.fmnerg_xml_dir,
        entity_types=settings.model.entity_types,
        report=report,
    )
    without = [p for p in posts if p.image_path is None]
    if without and policy != "text_only":
        if policy == "skip":
            logger.warning("%s: skipping %d of %d posts that have no image", split, len(without), len(posts))
            report.skipped_posts += len(without)
            report.skipped_entities += sum(len(p.entities) for p in without)
            posts = [p for p in posts if p.image_path is not None]
        else:
            hint = "set data.image_dir" if data.image_dir is None else f"looked in {data.image_dir}"
            raise QGNError(
                f"{split}: {len(without)} of {len(posts)} posts have no image ({hint}); or choose "
                "data.missing_images=skip / text_only, or model.text_only=true"
            )
    if skipped is not None:
        skipped[split] = {"posts": report.skipped_posts, "entities": report.skipped_entities}
    return posts


def make_loader(
    posts: list,
    tokenizer: Any,
    settings: RunSettings,
    image_transform: Any,
    batch_size: int,
    shuffle: bool,
    augment: bool = False,
):
    """A DataLoader over ``posts``; ``augment``: the training views of ``settings.train``
    (``augment_flip`` / ``augment_zoom``), for the training split only."""
    from torch.utils.data import DataLoader

    from qgn.data.augment import BoxSafeAugment
    from qgn.data.pipeline import Collator, GMNERDataset

    t = settings.train
    views = BoxSafeAugment(t.augment_flip, t.augment_zoom, t.augment_min_scale, t.seed) if augment else None
    dataset = GMNERDataset(
        posts,
        tokenizer,
        settings.model,
        image_transform=image_transform,
        text_only=settings.model.text_only,
        placeholder_on_error=settings.data.missing_images == "text_only",
        cache_pixels=settings.data.cache_images,
        augment=views,
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        collate_fn=Collator(tokenizer.pad_token_id),
        num_workers=settings.train.num_workers,
    )


def layer_depths(encoder: torch.nn.Module) -> dict[str, int]:
    """Depth of each parameter of a transformers encoder, by name: 0 for the embeddings (and
    whatever sits below the first layer), l for ``...layer.{l-1}...`` / ``...layers.{l-1}...``,
    L + 1 for what sits above the last of its L layers (pooler, final norm)."""
    import re

    layer_of = {}
    for name, _ in encoder.named_parameters():
        found = re.search(r"(?:^|\.)layers?\.(\d+)\.", name)
        layer_of[name] = int(found.group(1)) + 1 if found else None
    depth = max((v for v in layer_of.values() if v is not None), default=0)
    return {
        name: layer if layer is not None else (0 if "embed" in name else depth + 1) for name, layer in layer_of.items()
    }


def parameter_groups(model: torch.nn.Module, settings: RunSettings) -> list[dict[str, Any]]:
    """Pretrained encoders at ``lr`` (scaled per layer by ``train.layer_decay``), QGN's own
    (randomly initialised) modules at ``head_lr``."""
    from transformers import PreTrainedModel

    train = settings.train
    scale_of: dict[int, float] = {}  # id(parameter) -> lr scale, for encoder parameters
    for module in model.modules():  # outer modules first: a nested PreTrainedModel keeps the outer depths
        if isinstance(module, PreTrainedModel):
            depths = layer_depths(module)
            top = max(depths.values(), default=0)
            for name, p in module.named_parameters():
                scale_of.setdefault(id(p), train.layer_decay ** (top - depths[name]))
    by_scale: dict[float, list[torch.nn.Parameter]] = {}
    head: list[torch.nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            if id(p) in scale_of:
                by_scale.setdefault(scale_of[id(p)], []).append(p)
            else:
                head.append(p)
    groups = [{"params": params, "lr": train.lr * scale} for scale, params in sorted(by_scale.items(), reverse=True)]
    groups.append({"params": head, "lr": train.head_lr or train.lr})
    return [g for g in groups if g["params"]]


def make_scheduler(optimizer: torch.optim.Optimizer, settings: RunSettings, total_steps: int) -> Any:
    """Warm-up over ``warmup_ratio`` of the steps, then ``lr_schedule``."""
    from transformers import get_scheduler

    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[settings.train.lr_schedule]
    return get_scheduler(
        name,
        optimizer,
        num_warmup_steps=int(settings.train.warmup_ratio * total_steps),
        num_training_steps=max(total_steps, 1),
    )


def make_optimizer(groups: list[dict[str, Any]], weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, fused where this torch has the fused kernel for the parameters' device (CPU since
    torch 2.4: about 6x faster steps for the tiny model, where the optimizer is a tenth of a step)."""
    try:
        return torch.optim.AdamW(groups, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, weight_decay=weight_decay)
