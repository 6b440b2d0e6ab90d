"""Word tokenizer, image transform, dataset, collate and helpers on hand-built posts."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer

from qgn.data.pipeline import (
    CLIP_MEAN,
    CLIP_STD,
    Collator,
    GMNERDataset,
    ImageTransform,
    make_collate,
    model_inputs,
    move_to_device,
)
from qgn.data.records import Entity, Post
from qgn.errors import DataError
from qgn.modeling.configuration_qgn import QGNConfig
from qgn.modeling.tokenizer import build_word_tokenizer

WORDS = ["Angelina", "Jolie", "visits", "Paris", "with", "Brad"]


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer(WORDS)


@pytest.fixture
def config() -> QGNConfig:
    return QGNConfig.tiny()


def write_png(path, size=(40, 30), color=(255, 0, 0)) -> str:
    Image.new("RGB", size, color).save(path)
    return str(path)


# ----------------------------------------------------------------------------- tokenizer
def test_word_tokenizer_vocabulary_and_round_trip(tokenizer, tmp_path):
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert tokenizer.pad_token_id == 0 and tokenizer.is_fast
    again = build_word_tokenizer(WORDS + ["Paris"])  # duplicates ignored, same ids
    assert again.get_vocab() == tokenizer.get_vocab()
    ids = tokenizer(WORDS, is_split_into_words=True)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["[CLS]"] + WORDS + ["[SEP]"]  # known words stay whole, cased
    unseen = tokenizer(["Zebra-crossing", "#42!", "paris"], is_split_into_words=True)["input_ids"]
    assert tokenizer.unk_token_id not in unseen  # ASCII always falls back to characters
    assert tokenizer.decode(unseen, skip_special_tokens=True).replace(" ", "") == "Zebra-crossing#42!paris"
    saved = build_word_tokenizer(WORDS, out_dir=tmp_path / "tok")
    assert (tmp_path / "tok" / "vocab.txt").is_file()
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert (
        reloaded(["Paris", "PARIS"], is_split_into_words=True)["input_ids"]
        == saved(["Paris", "PARIS"], is_split_into_words=True)["input_ids"]
    )
    lower = build_word_tokenizer(WORDS, lowercase=True)
    assert lower.convert_ids_to_tokens(lower(["PARIS"], is_split_into_words=True)["input_ids"])[1] == "paris"


# ------------------------------------------------------------------------- image transform
def test_image_transform_matches_reference_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8))
    transform = ImageTransform(16, geometry="stretch")
    pixels = transform(image)
    assert pixels.shape == (3, 16, 16) and pixels.dtype == torch.float32
    reference = np.asarray(image.resize((16, 16), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    reference = (reference - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    assert np.abs(pixels.numpy() - reference.transpose(2, 0, 1)).max() < 1e-4
    transform.save(tmp_path)
    loaded = ImageTransform.load(tmp_path, geometry="stretch")
    assert loaded.image_size == 16 and torch.equal(loaded(image), pixels)
    assert transform(image.convert("L")).shape == (3, 16, 16)  # grayscale is converted
    # pad (the default): the 50 x 30 image resized to 16 x 10 (not squashed), the rest zero
    padded, mask = ImageTransform(16).with_mask(image)
    reference = np.asarray(image.resize((16, 10), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    reference = (reference - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    assert np.abs(padded[:, :10].numpy() - reference.transpose(2, 0, 1)).max() < 1e-4
    assert (padded[:, 10:] == 0).all() and mask[:10].all() and not mask[10:].any()
    assert torch.equal(ImageTransform.load(tmp_path)(image), padded)  # the geometry is the model config's


# ---------------------------------------------------------------------------------- dataset
def make_posts(tmp_path):
    image = write_png(tmp_path / "a.png", size=(40, 30))
    first = Post(
        "a",
        ["Angelina", "Jolie", "visits", "Paris", "\u200b", "!"],
        [Entity(0, 2, "PER", [(0, 0, 20, 30), (20, 0, 40, 15)]), Entity(3, 4, "LOC")],
        image_path=image,
        image_size=None,
    )
    second = Post(
        "b", ["with", "Brad"], [Entity(1, 2, "PER", [(10, 10, 30, 20)])], image_path=None, image_size=(100, 50)
    )
    return [first, second]


def test_items_align_words_and_build_targets(tokenizer, config, tmp_path):
    posts = make_posts(tmp_path)
    dataset = GMNERDataset(posts, tokenizer, config)
    item = dataset[0]
    ids, word_index = item["input_ids"], item["word_index"]
    assert word_index[0] == -1 and word_index[-1] == -1 and len(ids) == len(word_index)
    for w, word in enumerate(posts[0].tokens):
        pieces = [i for i, k in zip(ids, word_index) if k == w]
        assert pieces, f"word {w} has no sub-word"
        expected = word if word != "\u200b" else "[UNK]"  # removed by BERT's normaliser -> [UNK]
        assert tokenizer.decode(pieces).replace(" ", "").replace("##", "") == expected
    assert item["num_words"] == 6 and posts[0].image_size == (40, 30)  # size read from the image
    assert item["pixel_values"].shape == (3, 64, 64) and not item["image_missing"]
    t = item["targets"]
    assert t["labels"].tolist() == [0, 0, 1] and t["start"].tolist() == [0, 0, 3] and t["end"].tolist() == [1, 1, 3]
    assert t["has_box"].tolist() == [True, True, False] and t["entity_index"].tolist() == [0, 0, 1]
    # image_geometry "pad" (the default): the 40 x 30 image fills the top 64 x 48 of the square input,
    # so heights are 3/4 of the stretched ones, and only those pixels are the image's
    assert config.image_geometry == "pad"
    assert torch.allclose(
        t["boxes"], torch.tensor([[0.25, 0.375, 0.5, 0.75], [0.75, 0.1875, 0.5, 0.375], [0, 0, 0, 0]])
    )
    assert item["pixel_mask"].shape == (64, 64) and item["pixel_mask"][:48].all() and not item["pixel_mask"][48:].any()
    assert (item["pixel_values"][:, 48:] == 0).all()
    stretched = GMNERDataset(posts, tokenizer, config.replace(image_geometry="stretch"))[0]
    assert stretched["pixel_mask"] is None
    assert torch.allclose(
        stretched["targets"]["boxes"], torch.tensor([[0.25, 0.5, 0.5, 1.0], [0.75, 0.25, 0.5, 0.5], [0, 0, 0, 0]])
    )


def test_missing_image_gets_placeholder_and_boxes_use_known_size(tokenizer, config, tmp_path):
    dataset = GMNERDataset(make_posts(tmp_path), tokenizer, config)
    item = dataset[1]
    assert item["image_missing"]
    assert torch.allclose(item["pixel_values"], dataset.image_transform(Image.new("RGB", (64, 64))))
    # the known 100 x 50 size fills the top half of the padded square
    assert torch.allclose(item["targets"]["boxes"], torch.tensor([[0.2, 0.15, 0.2, 0.1]]))
    no_size = Post("c", ["Brad"], [Entity(0, 1, "PER", [(1, 1, 2, 2)])])
    with pytest.raises(DataError, match="image size is unknown"):
        GMNERDataset([no_size], tokenizer, config)[0]


def test_unreadable_image(tokenizer, config, tmp_path, caplog):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    posts = [Post("x", ["Paris"], [Entity(0, 1, "LOC")], image_path=str(bad))]
    with pytest.raises(DataError, match="broken.jpg"):
        GMNERDataset(posts, tokenizer, config)[0]
    with caplog.at_level(logging.WARNING):
        item = GMNERDataset(posts, tokenizer, config, placeholder_on_error=True)[0]
    assert item["image_missing"] and "broken.jpg" in caplog.text


def test_given_images_and_text_only(tokenizer, config, tmp_path):
    posts = make_posts(tmp_path)
    given = [None, Image.new("RGB", (100, 50), (0, 255, 0))]
    item = GMNERDataset(posts, tokenizer, config, images=given)[1]
    assert not item["image_missing"] and item["pixel_values"][1].mean() > item["pixel_values"][0].mean()
    text_only = GMNERDataset(make_posts(tmp_path), tokenizer, config, text_only=True)
    batch = Collator(0)([text_only[0], text_only[1]])
    assert "pixel_values" not in batch and "pixel_values" not in model_inputs(batch)
    assert batch["targets"][0]["has_box"].tolist() == [True, True, False]


def test_truncation_warns_and_drops_cut_entities(tokenizer, tmp_path, caplog):
    config = QGNConfig.tiny(max_text_length=6)  # [CLS] + 4 sub-words + [SEP]
    long_post = Post(
        "long",
        ["Angelina", "Jolie", "visits", "Paris", "with", "Brad"],
        [Entity(0, 2, "PER"), Entity(3, 4, "LOC"), Entity(5, 6, "PER")],
    )
    short_post = Post("short", ["Paris"], [Entity(0, 1, "LOC")])
    with caplog.at_level(logging.WARNING, logger="qgn.data.pipeline"):
        dataset = GMNERDataset([long_post, short_post], tokenizer, config, text_only=True)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "1 of 2 posts" in warnings[0] and "1 entities" in warnings[0]
    item = dataset[0]
    assert len(item["input_ids"]) == 6 and item["num_words"] == 4
    assert item["targets"]["entity_index"].tolist() == [0, 1]  # the entity on word 5 is gone


def test_bad_entities_are_reported(tokenizer, config):
    with pytest.raises(DataError, match="'MISC'"):
        GMNERDataset([Post("x", ["Paris"], [Entity(0, 1, "MISC")])], tokenizer, config)
    with pytest.raises(DataError, match="outside"):
        GMNERDataset([Post("x", ["Paris"], [Entity(0, 2, "LOC")])], tokenizer, config)


# ---------------------------------------------------------------------------------- batches
def test_collate_model_inputs_and_device(tokenizer, config, tmp_path):
    posts = make_posts(tmp_path) + [Post("empty", [], [])]
    dataset = GMNERDataset(posts, tokenizer, config)
    items = [dataset[i] for i in range(3)]
    batch = make_collate(tokenizer.pad_token_id)(items)
    lengths = [len(i["input_ids"]) for i in items]
    assert batch["input_ids"].shape == batch["word_index"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()
    assert (batch["word_index"][batch["attention_mask"] == 0] == -1).all()
    assert batch["word_mask"].dtype == torch.bool and batch["word_mask"].sum(1).tolist() == [6, 2, 0]
    assert batch["pixel_values"].shape == (3, 3, 64, 64)
    assert [p.id for p in batch["posts"]] == ["a", "b", "empty"] and batch["image_missing"] == [False, True, True]
    assert batch["targets"][2]["boxes"].shape == (0, 4)
    assert set(model_inputs(batch)) == {
        "input_ids",
        "attention_mask",
        "word_index",
        "word_mask",
        "pixel_values",
        "pixel_mask",
    }
    assert batch["pixel_mask"].shape == (3, 64, 64) and batch["pixel_mask"].dtype == torch.bool
    moved = move_to_device(batch, "meta")
    assert moved["input_ids"].device.type == "meta" and moved["targets"][0]["boxes"].device.type == "meta"
    assert moved["posts"] is batch["posts"] and batch["input_ids"].device.type == "cpu"
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=Collator(0))
    assert [b["input_ids"].shape[0] for b in loader] == [2, 1]
