"""The Python API: ``qgn.load(checkpoint_dir).predict(image, text)``.

>>> predictor = qgn.load("runs/demo/best")                       # doctest: +SKIP
>>> predictor.predict("photo.jpg", "Anna met the Blue Comets in Paris")  # doctest: +SKIP
[{'start': 0, 'end': 1, 'char_start': 0, 'char_end': 4, 'text': 'Anna', 'type': 'PER',
  'score': 0.97, 'box': [12.0, 30.5, 80.2, 141.0]}, ...]
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from qgn.data.records import Post, Prediction
from qgn.data.text import split_words
from qgn.errors import QGNError

logger = logging.getLogger(__name__)

ImageLike = str | os.PathLike | Image.Image | None


def _open_image(image: ImageLike) -> tuple[Image.Image | None, str | None]:
    from qgn.data.images import load_image, upright

    if image is None or isinstance(image, Image.Image):
        return (upright(image) if image is not None else None), None
    path = str(image)
    if os.path.isdir(path):
        raise QGNError(f"{path} is a folder, not an image file: give one image")
    if not os.path.isfile(path):
        raise QGNError(f"image not found: {path}")
    return load_image(path), path


def entity_dict(post: Post, pred: Prediction) -> dict[str, Any]:
    """A prediction in the user's terms: word span, character offsets, surface text, type, score, box."""
    out: dict[str, Any] = {"start": pred.start, "end": pred.end}
    if post.char_offsets is not None and post.text is not None:
        cs, ce = post.char_offsets[pred.start][0], post.char_offsets[pred.end - 1][1]
        out.update(char_start=cs, char_end=ce, text=post.text[cs:ce])
    else:
        out["text"] = " ".join(post.tokens[pred.start : pred.end])
    out.update(
        type=pred.type,
        score=None if pred.score is None else round(float(pred.score), 4),
        box=None if pred.box is None else [round(float(v), 1) for v in pred.box],
    )
    return out


class Predictor:
    """A loaded QGN checkpoint ready for inference on (image, text) pairs."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        image_transform: Any,
        postprocessor: Any,
        device: torch.device,
        precision: str = "no",
    ):
        from qgn.engine.precision import autocast_dtype

        self.model, self.tokenizer, self.image_transform = model.eval(), tokenizer, image_transform
        self.postprocessor, self.device = postprocessor, device
        self.config = model.config
        self.precision = precision  # resolved: "no" (fp32), "bf16" or "fp16"
        self.autocast = autocast_dtype(precision)

    @classmethod
    def from_pretrained(
        cls, checkpoint_dir: str | os.PathLike, device: str | None = None, precision: str = "fp32", **thresholds: Any
    ) -> Predictor:
        """Load ``checkpoint_dir`` (a ``best/`` folder of a run, or a hub repo id ``owner/name[@rev]``
        resolved through the hub cache); ``thresholds`` override the post-processor's
        (``score_threshold``, ``no_target_threshold``, ``remove_overlaps``). ``precision``: ``fp32``,
        ``bf16`` (autocast, on GPUs and on CPUs with bf16 units) or ``auto`` (bf16 where supported)."""
        from transformers import AutoTokenizer

        from qgn.data.pipeline import ImageTransform
        from qgn.modeling import QGNModel
        from qgn.modeling.postprocess import PostProcessor

        folder = checkpoint_folder(checkpoint_dir)
        dev = resolve_device(device)
        model = QGNModel.from_pretrained(folder).to(dev)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        transform = None if model.config.text_only else ImageTransform.load(folder, model.config.image_geometry)
        from qgn.engine.precision import resolve_precision

        chosen = resolve_precision(precision, dev.type, "predicting")
        return cls(model, tokenizer, transform, PostProcessor(model.config, **thresholds), dev, chosen)

    # ------------------------------------------------------------------ inputs
    def make_post(
        self, text: str | None, image: ImageLike = None, post_id: str = "0", tokens: Sequence[str] | None = None
    ) -> tuple[Post, Image.Image | None]:
        """A post from raw ``text`` (split into words like the benchmark) or from ``tokens`` (the
        words as given, e.g. a benchmark's: predicted word indices then refer to them, so the output
        scores with ``qgn evaluate``), and its image opened upright."""
        if tokens is not None:
            if (
                not isinstance(tokens, (list, tuple))
                or not tokens
                or not all(isinstance(t, str) and t.strip() and not any(c.isspace() for c in t) for t in tokens)
            ):
                raise QGNError("tokens must be a non-empty list of words without spaces")
            text, offsets, at = " ".join(tokens), [], 0
            for token in tokens:
                offsets.append((at, at + len(token)))
                at += len(token) + 1
            tokens = list(tokens)
        else:
            if not isinstance(text, str) or not text.strip():
                raise QGNError("empty text: give the post's text")
            tokens, offsets = split_words(text)
        img, path = _open_image(image)
        if img is None and not self.config.text_only:
            # A blank image silently finds nothing to ground: refused, as POST /api/predict refuses it.
            raise QGNError(NO_IMAGE)
        size = img.size if img is not None else None
        return Post(post_id, tokens, [], path, size, text, offsets), img

    # ----------------------------------------------------------------- predict
    def predict_posts(
        self, posts: Sequence[Post], images: Sequence[Image.Image | None], batch_size: int = 16
    ) -> list[list[Prediction]]:
        from torch.utils.data import DataLoader

        from qgn.data.pipeline import Collator, GMNERDataset
        from qgn.engine.inference import predict_loader

        if len({post.id for post in posts}) != len(posts):
            raise QGNError("predict_posts needs distinct post ids")
        with _without_training_warnings():  # its truncation warning speaks of training targets
            dataset = GMNERDataset(
                list(posts),
                self.tokenizer,
                self.config,
                image_transform=self.image_transform,
                text_only=self.config.text_only,
                placeholder_on_error=True,
                images=list(images),
            )
        cut = [(post, enc.num_words) for post, enc in zip(posts, dataset.encoded) if enc.truncated]
        if cut:
            post, read = cut[0]
            logger.warning(
                "%d of %d posts are longer than max_text_length=%d sub-words and were truncated at "
                "inference: no entity is found past the cut (post %s: the first %d of %d words read)",
                len(cut),
                len(posts),
                self.config.max_text_length,
                post.id,
                read,
                len(post.tokens),
            )
        loader = DataLoader(dataset, batch_size=batch_size, collate_fn=Collator(self.tokenizer.pad_token_id))
        by_id = predict_loader(
            self.model, self.postprocessor, loader, device=self.device, progress=False, autocast=self.autocast
        )
        return [by_id[post.id] for post in posts]

    def words_read(self, post: Post) -> int:
        """How many of ``post``'s words the model reads (the rest is past ``max_text_length``)."""
        from qgn.data.pipeline import encode_words

        return encode_words(self.tokenizer, [post.tokens], self.config.max_text_length)[0].num_words

    def predict(self, image: ImageLike, text: str) -> list[dict[str, Any]]:
        """Entities of one post: word span, character offsets, surface text, type, score, pixel box or None."""
        return self.predict_many([(image, text)])[0]

    def predict_many(self, pairs: Iterable[tuple[ImageLike, str]], batch_size: int = 16) -> list[list[dict[str, Any]]]:
        posts, images = [], []
        for i, (image, text) in enumerate(pairs):
            post, img = self.make_post(text, image, post_id=str(i))
            posts.append(post)
            images.append(img)
        predictions = self.predict_posts(posts, images, batch_size=batch_size)
        return [[entity_dict(p, e) for e in preds] for p, preds in zip(posts, predictions)]


NO_IMAGE = (
    "no image: this model finds entities in an image and grounds them there; give the post's image "
    '(qgn predict --image FILE; an "image" field in --input lines)'
)

# Files that hold a tokenizer's vocabulary (fast tokenizer, WordPiece, BPE, SentencePiece): without
# one, AutoTokenizer builds a tokenizer of special tokens only and every word becomes [UNK].
_VOCAB_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model")


def checkpoint_folder(checkpoint: str | os.PathLike) -> Path:
    """The folder of ``checkpoint`` (a hub repo id is fetched), checked to hold a model and its
    tokenizer before anything heavy loads; :class:`QGNError` naming what is missing otherwise."""
    from qgn.hub import resolve_checkpoint

    folder = resolve_checkpoint(checkpoint)
    if not folder.exists():
        raise QGNError(f"checkpoint not found: {folder} (give a run's best/ folder, or a hub repo id owner/name)")
    if not folder.is_dir():
        raise QGNError(f"{folder} is a file: a checkpoint is a folder (a run's best/)")
    if not (folder / "config.json").is_file():
        hint = " (a run directory's model is in its best/ folder)" if (folder / "best").is_dir() else ""
        raise QGNError(f"{folder} is not a QGN checkpoint: no config.json{hint}")
    if not any((folder / name).is_file() for name in _VOCAB_FILES):
        raise QGNError(
            f"{folder} has no tokenizer (no {' or '.join(_VOCAB_FILES[:2])}): copy it from the folder "
            "the checkpoint came from (a run's best/ holds it)"
        )
    return folder


class _without_training_warnings:
    """Drops the data pipeline's "entities past the cut are dropped from the targets" warning
    (at inference there are no targets; :meth:`Predictor.predict_posts` says what was cut)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "from the targets" not in str(record.msg)

    def __enter__(self) -> None:
        logging.getLogger("qgn.data.pipeline").addFilter(self)

    def __exit__(self, *exc: Any) -> None:
        logging.getLogger("qgn.data.pipeline").removeFilter(self)


def resolve_device(device: str | None) -> torch.device:
    """``device`` as a torch device (default: cuda when available, else cpu); a clear error for a
    device this machine does not have, instead of a CUDA traceback at the first tensor."""
    try:
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as err:
        raise QGNError(f"unknown device {device!r} ({err}); use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise QGNError(f"device {device!r} asked for, but this machine has no usable CUDA GPU; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise QGNError(f"device {device!r} asked for, but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise QGNError(f"device {device!r} asked for, but MPS is not available here; use --device cpu")
    return dev


def load(
    checkpoint_dir: str | os.PathLike, device: str | None = None, precision: str = "fp32", **thresholds: Any
) -> Predictor:
    """Load a trained QGN checkpoint for inference (see :meth:`Predictor.from_pretrained`)."""
    return Predictor.from_pretrained(checkpoint_dir, device=device, precision=precision, **thresholds)
