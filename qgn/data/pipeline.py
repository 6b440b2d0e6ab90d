"""The torch data pipeline: posts -> sub-word ids, images -> pixels, entities -> targets, batches.

The shapes, per post (the model's ``forward`` and the criterion's targets rely on them):
``input_ids`` ``[CLS] sub-words [SEP]``; ``word_index`` the word owning each sub-word (-1 for
specials); ``pixel_values`` ``(3, S, S)`` or ``None`` in text-only mode; ``pixel_mask`` ``(S, S)``
bool, True on the image's own pixels (with ``image_geometry="pad"``, or a zoomed-out training view
of :mod:`qgn.data.augment`; absent otherwise); ``targets`` one row per
(entity, box) pair, spans with an *inclusive* end, boxes normalised cxcywh in the frame of the
model's square input (:func:`qgn.modeling.box_ops.image_frame`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from qgn.data.records import Post
from qgn.errors import DataError, QGNError
from qgn.modeling.box_ops import IMAGE_GEOMETRIES, content_size, image_frame, normalize_boxes

logger = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
FORWARD_KEYS = ("input_ids", "attention_mask", "word_index", "word_mask", "pixel_values", "pixel_mask")
PROCESSOR_FILE = "preprocessor_config.json"


def _processor_class() -> Any:  # a transformers image processor class
    # transformers 5 has a PIL backend that needs no torchvision; 4.x only has the numpy one.
    import transformers

    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor


# ---------------------------------------------------------------------------------- images
class ImageTransform:
    """PIL image -> ``FloatTensor (3, S, S)``: resize (never a crop), /255, CLIP mean/std.

    ``geometry`` (``QGNConfig.image_geometry``): ``stretch`` resizes the whole image to S x S;
    ``pad`` resizes its longer side to S, keeping the aspect ratio, and pads the right and bottom
    with zeros (the mean colour after normalisation); :meth:`with_mask` also returns which pixels
    are the image's. No crop because a crop (CLIP's own preprocessing takes the centre square)
    would cut gold boxes, and the entities in them, off. Wraps a transformers CLIP image
    processor (PIL backend), so the checkpoint folder holds a standard
    ``preprocessor_config.json``; the geometry is the model config's.
    """

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        resample: int = int(Image.Resampling.BILINEAR),
        processor: Any = None,
        geometry: str = "pad",
    ):
        if geometry not in IMAGE_GEOMETRIES:
            raise QGNError(f"image geometry must be one of {IMAGE_GEOMETRIES}, got {geometry!r}")
        self.geometry = geometry
        if processor is None:
            processor = _processor_class()(
                do_resize=True,
                size={"height": int(image_size), "width": int(image_size)},
                resample=int(resample),
                do_center_crop=False,
                do_rescale=True,
                rescale_factor=1 / 255,
                do_normalize=True,
                image_mean=list(mean),
                image_std=list(std),
                do_convert_rgb=True,
            )
        self.processor = processor

    @property
    def image_size(self) -> int:
        return int(self.processor.size["height"])

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """``image`` (any PIL mode) -> ``(3, S, S)`` float32."""
        return self.with_mask(image)[0]

    def with_mask(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        """``image`` (any PIL mode) -> ``(pixels (3, S, S) float32, mask (S, S) bool)``, the mask
        True on the image's own pixels (everywhere for ``stretch``)."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        side = self.image_size
        if self.geometry == "stretch":
            out = self.processor(image, return_tensors="pt", input_data_format="channels_last")
            return out["pixel_values"][0].float(), torch.ones(side, side, dtype=torch.bool)
        width, height = content_size(image.size, side)
        resample = Image.Resampling(int(getattr(self.processor, "resample", Image.Resampling.BILINEAR)))
        resized = image.resize((width, height), resample) if (width, height) != image.size else image
        out = self.processor(resized, do_resize=False, return_tensors="pt", input_data_format="channels_last")
        pixels = torch.zeros(3, side, side)
        pixels[:, :height, :width] = out["pixel_values"][0].float()
        mask = torch.zeros(side, side, dtype=torch.bool)
        mask[:height, :width] = True
        return pixels, mask

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``preprocessor_config.json`` into ``directory`` (a checkpoint folder)."""
        self.processor.save_pretrained(str(directory))

    save_pretrained = save

    @classmethod
    def load(cls, directory: str | os.PathLike, geometry: str = "pad") -> ImageTransform:
        """Read the transform saved by :meth:`save` from ``directory``; ``geometry`` is the
        model config's ``image_geometry``."""
        folder = Path(directory)
        if not (folder / PROCESSOR_FILE).is_file():
            raise QGNError(f"{folder}: no {PROCESSOR_FILE} (not a checkpoint of an image model?)")
        processor = _processor_class().from_pretrained(str(folder))
        size = processor.size
        if getattr(processor, "do_center_crop", False) or size["height"] != size["width"]:
            raise QGNError(f"{folder / PROCESSOR_FILE}: expected a square resize without centre crop")
        return cls(int(size["height"]), processor=processor, geometry=geometry)

    from_pretrained = load


def read_image(path: str) -> Image.Image:
    """Open ``path`` upright and as RGB (:func:`qgn.data.images.load_image`)."""
    from qgn.data.images import load_image

    return load_image(path)


# ------------------------------------------------------------------------------------ text
@dataclass
class EncodedText:
    """One post's sub-words. ``num_words`` counts the words that survived truncation."""

    input_ids: list[int]
    word_index: list[int]
    num_words: int
    truncated: bool


def encode_words(tokenizer: Any, batch_words: Sequence[Sequence[str]], max_length: int) -> list[EncodedText]:
    """Tokenise pre-split posts with a fast tokenizer, keeping every word addressable.

    A word that yields no sub-word (e.g. a zero-width space removed by BERT's normaliser) gets
    ``[UNK]`` so word indices always line up with ``post.tokens``. Truncation cuts the sub-words
    to ``max_length`` including the special tokens; a word cut in the middle keeps its leading
    sub-words.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise QGNError("the data pipeline needs a fast (Rust) tokenizer for word alignment")
    if tokenizer.unk_token_id is None:
        raise QGNError("the tokenizer has no unknown token to stand for words without sub-words")
    results: list[EncodedText | None] = [None] * len(batch_words)
    non_empty = [i for i, words in enumerate(batch_words) if len(words) > 0]
    encoding: Any = None  # a BatchEncoding, for the non-empty posts
    if non_empty:
        encoding = tokenizer(
            [list(batch_words[i]) for i in non_empty], is_split_into_words=True, add_special_tokens=True
        )
    empty_specials = tokenizer([""], add_special_tokens=True)["input_ids"][0]
    for position, i in enumerate(non_empty):
        ids = encoding["input_ids"][position]
        results[i] = _align(ids, encoding.word_ids(position), len(batch_words[i]), tokenizer.unk_token_id, max_length)
    for i in range(len(batch_words)):
        if results[i] is None:  # a post without words: just the special tokens
            results[i] = _align(empty_specials, [None] * len(empty_specials), 0, tokenizer.unk_token_id, max_length)
    return results  # type: ignore[return-value]


def _align(ids: list[int], word_ids: list[int | None], num_words: int, unk_id: int, max_length: int) -> EncodedText:
    first = next((k for k, w in enumerate(word_ids) if w is not None), len(ids))
    last = max((k for k, w in enumerate(word_ids) if w is not None), default=first - 1)
    prefix, suffix = ids[:first], ids[last + 1 :]
    per_word: list[list[int]] = [[] for _ in range(num_words)]
    for token_id, word in zip(ids[first : last + 1], word_ids[first : last + 1]):
        if word is not None:
            per_word[word].append(token_id)
    content_ids, content_words = [], []
    for word, pieces in enumerate(per_word):
        for token_id in pieces or [unk_id]:
            content_ids.append(token_id)
            content_words.append(word)
    budget = max_length - len(prefix) - len(suffix)
    if budget < 1:
        raise QGNError(f"max_text_length={max_length} leaves no room for words beside the special tokens")
    truncated = len(content_ids) > budget
    content_ids, content_words = content_ids[:budget], content_words[:budget]
    return EncodedText(
        input_ids=prefix + content_ids + suffix,
        word_index=[-1] * len(prefix) + content_words + [-1] * len(suffix),
        num_words=content_words[-1] + 1 if content_words else 0,
        truncated=truncated,
    )


# --------------------------------------------------------------------------------- targets
def check_entities(post: Post, label_index: Mapping[str, int]) -> None:
    """Raise :class:`DataError` on an entity with an unknown type, a bad span or an inverted box."""
    for entity in post.entities:
        if entity.type not in label_index:
            raise DataError(
                f"post {post.id}: entity type {entity.type!r} is not one of config.entity_types {list(label_index)}"
            )
        if not 0 <= entity.start < entity.end <= len(post.tokens):
            raise DataError(
                f"post {post.id}: entity span [{entity.start}, {entity.end}) is outside its {len(post.tokens)} words"
            )
        for box in entity.boxes:
            if len(box) != 4 or box[2] < box[0] or box[3] < box[1]:
                raise DataError(f"post {post.id}: entity box {box} is not (x1, y1, x2, y2) with x2 >= x1, y2 >= y1")


def build_targets(
    post: Post,
    num_words: int,
    label_index: Mapping[str, int],
    image_size: tuple[int, int] | None,
    need_boxes: bool = True,
    frame: Sequence[float] = (1.0, 1.0),
) -> tuple[dict[str, torch.Tensor], int]:
    """Targets of one post (contract "Targets") and the number of entities cut by truncation.

    An entity with k boxes gives k rows sharing its span; one without a box gives one row with
    ``has_box`` False. ``image_size`` ``(W, H)`` normalises boxes, into the fraction ``frame`` of
    the model's input the image covers (:func:`qgn.modeling.box_ops.image_frame`); when the size
    is unknown, boxes are zeros if ``need_boxes`` is False (text-only mode) and an error otherwise.
    """
    labels, starts, ends, boxes, has_box, entity_index = [], [], [], [], [], []
    dropped = 0
    for index, entity in enumerate(post.entities):
        if entity.end > num_words:
            dropped += 1
            continue
        rows: list[tuple[float, float, float, float] | None] = list(entity.boxes) or [None]
        if entity.boxes and image_size is None and need_boxes:
            raise DataError(
                f"post {post.id}: entity boxes cannot be normalised: the image size is unknown "
                "(no image_size and no readable image)"
            )
        for box in rows:
            labels.append(label_index[entity.type])
            starts.append(entity.start)
            ends.append(entity.end - 1)  # inclusive end
            has_box.append(box is not None)
            entity_index.append(index)
            if box is None or image_size is None:
                boxes.append(torch.zeros(4))
            else:
                boxes.append(normalize_boxes(torch.tensor(box, dtype=torch.float32), image_size, frame))
    targets = {
        "labels": torch.tensor(labels, dtype=torch.long),
        "start": torch.tensor(starts, dtype=torch.long),
        "end": torch.tensor(ends, dtype=torch.long),
        "boxes": torch.stack(boxes) if boxes else torch.zeros(0, 4),
        "has_box": torch.tensor(has_box, dtype=torch.bool),
        "entity_index": torch.tensor(entity_index, dtype=torch.long),
    }
    return targets, dropped


# ---------------------------------------------------------------------------- pixel cache
def available_memory() -> int | None:
    """Bytes of memory a process can still take (Linux: ``MemAvailable``, which counts the page
    cache as free, within a cgroup v2 limit if there is one), or None where the system does not say."""
    free = None
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    try:  # a container's own limit, when it is below the machine's
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if free is not None and limit != "max":
            free = min(free, int(limit) - used)
    except (OSError, ValueError):
        pass
    return free if free is not None and free > 0 else None


def pixel_cache_fits(posts: int, side: int) -> bool:
    """Whether ``data.cache_images`` for ``posts`` posts of ``side`` px squares (float32 pixels and
    a bool mask) would take at most half of the memory free now; warns when it would not. Each
    split is checked when its dataset is made, and caches fill as they are read, so this guards
    against the one large split, not the sum of all three."""
    need = posts * (3 * 4 + 1) * side * side
    free = available_memory()
    if free is None or need <= free // 2:
        return True
    logger.warning(
        "data.cache_images: the pixels of %d posts at %d px would take %.1f GB of the %.1f GB free; "
        "this split is not cached (set data.cache_images=false to silence this)",
        posts,
        side,
        need / 1e9,
        free / 1e9,
    )
    return False


# --------------------------------------------------------------------------------- dataset
class GMNERDataset(Dataset):
    """Posts as model items: ``dict(post, input_ids, word_index, num_words, pixel_values,
    image_missing, targets)``.

    Args:
        posts: the posts (never dropped: a post without image gets a black placeholder).
        tokenizer: a fast Hugging Face tokenizer.
        config: the :class:`QGNConfig` (``entity_types``, ``max_text_length``, ``image_size``).
        image_transform: PIL -> pixels; built from ``config.input_image_size`` when ``None``.
        text_only: no images at all (also implied by ``config.text_only``).
        placeholder_on_error: an unreadable image becomes a black placeholder with a warning
            instead of a :class:`DataError`.
        images: optional already-opened images aligned with ``posts`` (``None`` entries fall
            back to ``post.image_path``), for in-memory prediction.
        cache_pixels: keep each post's pixels in memory once computed, so later epochs skip the
            decode and resize (3 x S x S floats and an S x S mask a post: 479 KB at 192 px,
            652 KB at 224 px); left off, with a warning, when :func:`pixel_cache_fits` says no.
        augment: a :class:`qgn.data.augment.BoxSafeAugment` for training views (flips and
            zoom-outs that move the boxes with the pixels), drawn per post and per epoch
            (:meth:`set_epoch`); ``None``: every post as it is.
    """

    def __init__(
        self,
        posts: Sequence[Post],
        tokenizer: Any,
        config: Any,
        image_transform: ImageTransform | None = None,
        text_only: bool = False,
        placeholder_on_error: bool = False,
        images: Sequence[Image.Image | None] | None = None,
        cache_pixels: bool = False,
        augment: Any = None,
    ):
        self.posts = list(posts)
        self.augment = augment if augment is not None and augment.active else None
        self.epoch = 0
        self.config = config
        self.text_only = bool(text_only or config.text_only)
        if images is not None and len(images) != len(self.posts):
            raise QGNError(f"got {len(images)} images for {len(self.posts)} posts")
        self.images = images
        geometry = getattr(config, "image_geometry", "stretch")
        self.image_transform = (
            None if self.text_only else (image_transform or ImageTransform(config.input_image_size, geometry=geometry))
        )
        if self.image_transform is not None and self.image_transform.geometry != geometry:
            raise QGNError(
                f"the image transform pads or stretches ({self.image_transform.geometry}) unlike the "
                f"model config's image_geometry={geometry!r}"
            )
        self.geometry = geometry
        cache_pixels = (
            cache_pixels
            and self.image_transform is not None
            and pixel_cache_fits(len(self.posts), self.image_transform.image_size)
        )
        self._pixels: dict[int, tuple[torch.Tensor, torch.Tensor, bool]] | None = {} if cache_pixels else None
        self.placeholder_on_error = placeholder_on_error
        self.label_index = {name: i for i, name in enumerate(config.entity_types)}
        for post in self.posts:
            check_entities(post, self.label_index)
        self.encoded = encode_words(tokenizer, [p.tokens for p in self.posts], config.max_text_length)
        truncated = sum(e.truncated for e in self.encoded)
        if truncated:
            cut = sum(ent.end > enc.num_words for p, enc in zip(self.posts, self.encoded) for ent in p.entities)
            logger.warning(
                "%d of %d posts are longer than max_text_length=%d sub-words and were truncated; "
                "%d entities past the cut are dropped from the targets",
                truncated,
                len(self.posts),
                config.max_text_length,
                cut,
            )

    def __len__(self) -> int:
        return len(self.posts)

    def set_epoch(self, epoch: int) -> None:
        """Which epoch's augmented views :meth:`__getitem__` gives (as ``DistributedSampler.set_epoch``)."""
        self.epoch = int(epoch)

    def __getitem__(self, i: int) -> dict[str, Any]:
        post, encoded = self.posts[i], self.encoded[i]
        pixel_values = pixel_mask = None
        missing = False
        if not self.text_only:
            if self._pixels is not None and i in self._pixels:
                pixel_values, pixel_mask, missing = self._pixels[i]
            else:
                image, missing = self._image(i)
                if post.image_size is None and not missing:
                    post.image_size = image.size
                pixel_values, pixel_mask = self.image_transform.with_mask(image)  # type: ignore[union-attr]  # set unless text_only
                if self._pixels is not None:
                    self._pixels[i] = (pixel_values, pixel_mask, missing)
            if self.geometry == "stretch":
                pixel_mask = None  # the whole square is the image: nothing to mask
        frame = (1.0, 1.0)
        if self.image_transform is not None and post.image_size is not None:
            frame = image_frame(post.image_size, self.image_transform.image_size, self.geometry)
        targets, _ = build_targets(
            post, encoded.num_words, self.label_index, post.image_size, need_boxes=not self.text_only, frame=frame
        )
        if self.augment is not None and pixel_values is not None and not missing:
            pixel_values, pixel_mask, targets["boxes"] = self.augment(
                pixel_values, pixel_mask, targets["boxes"], targets["has_box"], frame, self.epoch, i
            )
        return {
            "post": post,
            "input_ids": encoded.input_ids,
            "word_index": encoded.word_index,
            "num_words": encoded.num_words,
            "pixel_values": pixel_values,
            "pixel_mask": pixel_mask,
            "image_missing": missing,
            "targets": targets,
        }

    def _image(self, i: int) -> tuple[Image.Image, bool]:
        """The post's RGB image and whether it is a placeholder."""
        given = self.images[i] if self.images is not None else None
        if given is not None:
            return given.convert("RGB") if given.mode != "RGB" else given, False
        path = self.posts[i].image_path
        if path is None:
            return self._placeholder(), True
        try:
            return read_image(path), False
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            if not self.placeholder_on_error:
                if isinstance(err, DataError):
                    raise
                raise DataError(f"cannot read image: {err}", path=path) from err
            logger.warning("%s: cannot read image (%s); using a blank placeholder", path, err)
            return self._placeholder(), True

    def _placeholder(self) -> Image.Image:
        side = self.image_transform.image_size  # type: ignore[union-attr]  # set unless text_only
        return Image.new("RGB", (side, side))


# --------------------------------------------------------------------------------- batches
class Collator:
    """Items of :class:`GMNERDataset` -> the batch dict of the contract.

    Returns ``input_ids``/``attention_mask``/``word_index`` ``(B, S)``, ``word_mask`` ``(B, W)``
    with ``W = max(1, max words)``, ``pixel_values`` ``(B, 3, S, S)`` (absent in text-only mode),
    ``pixel_mask`` ``(B, S, S)`` bool (only when some item has one: padded images, zoomed-out views),
    ``targets`` (list), ``posts`` (list) and ``image_missing`` (list of bool).
    """

    def __init__(self, pad_token_id: int = 0):
        self.pad_token_id = int(pad_token_id)

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not items:
            raise ValueError("cannot collate an empty batch")
        batch_size = len(items)
        seq_len = max(len(item["input_ids"]) for item in items)
        num_words = max(1, max(item["num_words"] for item in items))
        input_ids = torch.full((batch_size, seq_len), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch_size, seq_len), dtype=torch.long)
        word_index = torch.full((batch_size, seq_len), -1, dtype=torch.long)
        word_mask = torch.zeros((batch_size, num_words), dtype=torch.bool)
        for b, item in enumerate(items):
            n = len(item["input_ids"])
            input_ids[b, :n] = torch.tensor(item["input_ids"], dtype=torch.long)
            attention_mask[b, :n] = 1
            word_index[b, :n] = torch.tensor(item["word_index"], dtype=torch.long)
            word_mask[b, : item["num_words"]] = True
        batch: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "word_index": word_index,
            "word_mask": word_mask,
        }
        with_pixels = [item["pixel_values"] is not None for item in items]
        if any(with_pixels):
            if not all(with_pixels):
                raise ValueError("cannot collate posts with and without pixel_values")
            batch["pixel_values"] = torch.stack([item["pixel_values"] for item in items])
            masks = [item.get("pixel_mask") for item in items]
            if any(m is not None for m in masks):
                side = batch["pixel_values"].shape[-1]
                full = torch.ones(side, side, dtype=torch.bool)
                batch["pixel_mask"] = torch.stack([full if m is None else m for m in masks])
        batch["targets"] = [item["targets"] for item in items]
        batch["posts"] = [item["post"] for item in items]
        batch["image_missing"] = [bool(item.get("image_missing", False)) for item in items]
        return batch


def make_collate(pad_token_id: int = 0) -> Collator:
    """A ``collate_fn`` for ``torch.utils.data.DataLoader``."""
    return Collator(pad_token_id)


def model_inputs(batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The keyword arguments of ``QGNModel.forward`` present in ``batch``."""
    return {key: batch[key] for key in FORWARD_KEYS if key in batch}


def move_to_device(batch: Mapping[str, Any], device: torch.device | str) -> dict[str, Any]:
    """A copy of ``batch`` with its tensors (targets included) on ``device``; other values as is."""

    def move(value: Any) -> Any:
        if torch.is_tensor(value):
            return value.to(device, non_blocking=True)
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        if isinstance(value, list) and value and isinstance(value[0], dict):
            return [move(v) for v in value]
        return value

    return {key: move(value) for key, value in batch.items()}
