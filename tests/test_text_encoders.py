"""QGN with a text encoder that is not BERT: MPNet (the base-size encoder of the MNER benchmark)
has no ``token_type_ids`` and other special-token ids (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2), so
nothing in the pipeline or the model may assume BERT's ``[PAD]`` = 0. A tiny MPNet with a
tokenizer of its own is built in a temporary folder; nothing is downloaded."""

from __future__ import annotations

import json

import pytest
import torch

from qgn.data import read_dataset


@pytest.fixture(scope="module")
def tiny_mpnet(tiny_bench, tmp_path_factory):
    from transformers import MPNetConfig, MPNetModel, MPNetTokenizer

    words = sorted({t.lower() for post in read_dataset(str(tiny_bench), split="train") for t in post.tokens})
    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>"] + words + ["<mask>"])}
    folder = tmp_path_factory.mktemp("tiny-mpnet")
    tokenizer = MPNetTokenizer(vocab=vocab, unk_token="<unk>")
    assert (tokenizer.cls_token_id, tokenizer.pad_token_id, tokenizer.sep_token_id) == (0, 1, 2)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    MPNetModel(
        MPNetConfig(
            vocab_size=len(vocab),
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=130,
            pad_token_id=1,
        )
    ).save_pretrained(folder)
    return folder


def test_qgn_trains_and_predicts_on_an_mpnet_encoder(tiny_mpnet, tiny_bench, tmp_path):
    from qgn.api import load
    from qgn.data.pipeline import Collator, GMNERDataset
    from qgn.engine.settings import settings_from_dict
    from qgn.engine.train import run_training

    settings = settings_from_dict(
        {
            "model": {
                "preset": "tiny",
                "text_only": True,
                "text_config": None,
                "text_encoder": str(tiny_mpnet),
                "num_queries": 8,
                "score_threshold": 0.0,
            },
            "data": {"path": str(tiny_bench)},
            "train": {
                "epochs": 3,
                "batch_size": 8,
                "lr": 1e-3,
                "eval_batch_size": 8,
                "seed": 1,
                "tune_thresholds": False,
            },
        }
    )
    run_training(settings, tmp_path, progress=False)
    losses = [json.loads(line)["train"]["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0]

    predictor = load(tmp_path / "best")
    assert type(predictor.model.text_encoder).__name__ == "MPNetModel"
    assert predictor.tokenizer.pad_token_id == 1
    posts = read_dataset(str(tiny_bench), split="test")
    short, long = min(posts, key=lambda p: len(p.tokens)), max(posts, key=lambda p: len(p.tokens))
    assert len(short.tokens) < len(long.tokens)

    dataset = GMNERDataset([short, long], predictor.tokenizer, predictor.model.config)
    batch = Collator(predictor.tokenizer.pad_token_id)([dataset[0], dataset[1]])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids[0, 0] == 0 and ids[0, int(mask[0].sum()) - 1] == 2  # <s> ... </s>
    assert (ids[0][~mask[0].bool()] == 1).all() and (~mask[0].bool()).any()  # padded with <pad> = 1
    assert "token_type_ids" not in batch

    # The short post's predictions do not depend on the padding a longer neighbour adds.
    alone = predictor.predict_posts([short], [None])[0]
    padded = predictor.predict_posts([short, long], [None, None])[0]
    assert alone, "a model trained at score threshold 0 predicts entities"
    assert [(p.start, p.end, p.type) for p in alone] == [(p.start, p.end, p.type) for p in padded]
    assert [p.score for p in alone] == pytest.approx([p.score for p in padded], abs=1e-4)
