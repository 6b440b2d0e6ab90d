"""The entity recognition aids (docs/architecture.md, "Entity recognition aids"): the BIO head and
its loss, span-proposal queries, layer-wise learning-rate decay and the schedules. Each is off in
the paper configs; with them on, the model trains, predicts and resumes exactly (the ONNX export
is tested in test_export_and_hub.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from qgn.modeling import QGNConfig, QGNModel, build
from qgn.modeling.span_aids import SpanProposer, bio_labels, span_labels

from fakes import make_targets  # tests/ is on sys.path

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


# ----------------------------------------------------------------------------- targets
def test_bio_labels_by_hand():
    # post 0: PER (type 0) over words 1-2, LOC (type 1) on word 4, twice (an entity with two boxes)
    targets = [make_targets([0, 1, 1], [1, 4, 4], [2, 4, 4]), make_targets([], [], [])]
    labels = bio_labels(targets, 6, torch.device("cpu"))
    # O = 0, B-PER = 1, I-PER = 2, B-LOC = 3, I-LOC = 4
    assert labels.tolist() == [[0, 1, 2, 0, 3, 0], [0] * 6]


def test_span_labels_by_hand():
    # max 2 words: candidate (s, s + l) sits at s * 2 + l; no-entity class 4
    targets = [make_targets([2, 0, 3], [0, 2, 3], [1, 2, 5])]  # the last is 3 words long: no candidate
    labels = span_labels(targets, 4, 2, 4, torch.device("cpu"))
    expected = [4] * 8
    expected[0 * 2 + 1] = 2  # words 0-1, ORG
    expected[2 * 2 + 0] = 0  # word 2, PER
    assert labels.tolist() == [expected]


# ----------------------------------------------------------------------------- proposer
def test_proposer_enumerates_spans_inside_the_post_and_pads_short_posts():
    torch.manual_seed(0)
    proposer = SpanProposer(hidden_size=16, num_types=4, max_words=3, num_proposals=5)
    words = torch.randn(2, 4, 16)
    word_mask = torch.tensor([[True, True, True, True], [True, False, False, False]])
    out = proposer(words, word_mask)
    assert out["span_logits"].shape == (2, 4 * 3, 5)
    valid = out["span_valid"].view(2, 4, 3)
    for b, n in enumerate((4, 1)):
        for s in range(4):
            for length in range(3):
                assert bool(valid[b, s, length]) == (s + length < n), (b, s, length)
    # post 1 has one word, hence one candidate: one valid proposal, the rest add nothing
    assert out["valid"][1].tolist() == [True, False, False, False, False]
    assert (out["start"][1, 0], out["end"][1, 0]) == (0, 0)
    assert torch.all(out["content"][1, 1:] == 0)
    assert out["valid"][0].all()
    assert torch.all(out["start"][0] <= out["end"][0]) and torch.all(out["end"][0] < 4)
    assert torch.all(out["end"][0] - out["start"][0] < 3)
    # the proposals are the best-scoring valid spans, in order
    logits = out["span_logits"][0]
    score = (logits[:, :-1].logsumexp(-1) - logits[:, -1]).masked_fill(~out["span_valid"][0], float("-inf"))
    best = score.topk(5).indices
    assert out["start"][0].tolist() == (best // 3).tolist()
    assert out["end"][0].tolist() == (best // 3 + best % 3).tolist()


def _batch(config):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (2, 8), generator=g)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0
    word_index = torch.tensor([[-1, 0, 1, 1, 2, 3, 4, -1], [-1, 0, 1, 2, -1, -1, -1, -1]])
    word_mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    batch = {"input_ids": ids, "attention_mask": mask, "word_index": word_index, "word_mask": word_mask}
    if not config.text_only:
        batch["pixel_values"] = torch.randn(2, 3, config.image_size, config.image_size, generator=g)
    return batch


def test_proposal_queries_start_from_their_span():
    """The first k queries get the span feature as content and ``span_prior_bias`` on their own
    start / end words; the other queries are untouched."""
    config = QGNConfig.tiny(vocab_size=120, text_only=True, num_queries=6, span_proposals=3)
    torch.manual_seed(0)
    model = QGNModel(config).eval()
    batch = _batch(config)
    with torch.no_grad():
        with_bias = model(**batch)
        model.span_prior_bias.fill_(0.0)
        without = model(**batch)
        proposals = model.span_proposer(_words(model, batch), batch["word_mask"])
    assert proposals["valid"][0].all(), "five words, 3 proposals"
    for key in ("start", "end"):
        gap = with_bias[f"{key}_logits"] - without[f"{key}_logits"]
        assert torch.all(gap[:, 3:] == 0), "the learned queries have no prior"
        for b in range(2):
            for q in range(3):
                expected = torch.zeros(5)
                if proposals["valid"][b, q]:
                    expected[proposals[key][b, q]] = 2.0
                torch.testing.assert_close(gap[b, q], expected)


def _words(model, batch):
    from qgn.modeling.layers import pool_words

    out = model.text_encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return pool_words(model.text_projection(out.last_hidden_state), batch["word_index"], batch["word_mask"].shape[1])


# ----------------------------------------------------------------------------- losses
@pytest.mark.parametrize("text_only", [True, False])
def test_losses_are_the_cross_entropies_they_say(text_only):
    config = QGNConfig.tiny(
        vocab_size=120, text_only=text_only, num_queries=6, bio_loss_weight=0.5, span_proposals=3,
        span_proposal_max_words=2, span_proposal_weight=2.0,
    )  # fmt: skip
    model, criterion, _ = build(config)
    model.train()
    batch = _batch(config)
    targets = [make_targets([0, 3], [0, 3], [1, 3]), make_targets([2], [2], [2])]
    torch.manual_seed(1)
    outputs = model(**batch)
    total, parts = criterion(outputs, targets)
    # BIO: mean CE over the 8 real words
    labels = torch.tensor([[1, 2, 0, 7, 0], [0, 0, 5, 0, 0]])
    ce = F.cross_entropy(outputs["bio_logits"].float().transpose(1, 2), labels, reduction="none").detach()
    assert parts["loss_bio"] == pytest.approx(float(ce[batch["word_mask"]].mean().detach()), rel=1e-5)
    # proposals: CE over the valid candidates, no-entity weighed by no_entity_weight
    span = torch.full((2, 10), 4)
    span[0, 0 * 2 + 1], span[0, 3 * 2 + 0], span[1, 2 * 2 + 0] = 0, 3, 2
    ce = F.cross_entropy(outputs["span_logits"].detach().float().transpose(1, 2), span, reduction="none")
    weight = torch.where(span == 4, config.no_entity_weight, 1.0) * outputs["span_valid"].float()
    assert parts["loss_proposals"] == pytest.approx(float((ce * weight).sum() / weight.sum()), rel=1e-5)
    # both enter the total with their weights
    without = {k: v for k, v in outputs.items() if k not in ("bio_logits", "span_logits", "span_valid")}
    base, _ = criterion(without, targets)
    assert float(total.detach()) == pytest.approx(
        float(base.detach() + 0.5 * parts["loss_bio"] + 2.0 * parts["loss_proposals"]), rel=1e-5
    )
    total.backward()
    assert model.bio_head.weight.grad.abs().sum() > 0
    assert model.span_proposer.scorer.layers[0].weight.grad.abs().sum() > 0
    assert model.span_proposer.to_query.weight.grad.abs().sum() > 0, "the span feature reaches the queries"


def test_weights_of_zero_switch_the_aids_off():
    config = QGNConfig.tiny(vocab_size=120, text_only=True)
    model = QGNModel(config)
    assert model.bio_head is None and model.span_proposer is None and model.span_prior_bias is None
    model.train()
    out = model(**_batch(config))
    assert not {"bio_logits", "span_logits", "span_valid"} & set(out)
    with pytest.raises(ValueError, match="span_proposals"):
        QGNConfig.tiny(vocab_size=120, num_queries=4, span_proposals=5)
    with pytest.raises(ValueError, match="span_proposal_max_words"):
        QGNConfig.tiny(vocab_size=120, span_proposal_max_words=0)
    with pytest.raises(ValueError, match="bio_loss_weight"):
        QGNConfig.tiny(vocab_size=120, bio_loss_weight=-1.0)


@pytest.mark.parametrize("name", ["twitter_gmner", "twitter_fmnerg"])
def test_the_paper_configs_keep_the_aids_off(name):
    from qgn.engine.settings import load_run_file, settings_from_dict

    settings = settings_from_dict(load_run_file(name))
    m, t = settings.model, settings.train
    assert (m.bio_loss_weight, m.span_proposals, t.layer_decay, t.lr_schedule) == (0.0, 0, 1.0, "linear")


# ----------------------------------------------------------------------------- optimiser
def test_layer_decay_scales_each_encoder_layer():
    from qgn.engine.run_parts import layer_depths, parameter_groups
    from qgn.engine.settings import settings_from_dict

    settings = settings_from_dict(
        {"model": {"preset": "tiny", "text_only": True}, "train": {"lr": 1e-3, "head_lr": 5e-3, "layer_decay": 0.5}}
    )
    model, _, _ = build(settings.model)
    depths = layer_depths(model.text_encoder)
    layers = model.text_encoder.config.num_hidden_layers
    names = dict(model.text_encoder.named_parameters())
    assert depths["embeddings.word_embeddings.weight"] == 0
    assert depths["encoder.layer.0.attention.self.query.weight"] == 1
    assert depths[f"encoder.layer.{layers - 1}.output.dense.weight"] == layers
    lr_of = {id(p): g["lr"] for g in parameter_groups(model, settings) for p in g["params"]}
    top = max(depths.values())
    for name, depth in depths.items():
        assert lr_of[id(names[name])] == pytest.approx(1e-3 * 0.5 ** (top - depth)), name
    assert lr_of[id(model.heads.type_head.layers[0].weight)] == 5e-3
    assert len(lr_of) == sum(p.requires_grad for p in model.parameters())
    # off: two groups, as before
    settings.train.layer_decay = 1.0
    assert [g["lr"] for g in parameter_groups(model, settings)] == [1e-3, 5e-3]


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_schedules_after_the_warm_up(schedule):
    from qgn.engine.run_parts import make_scheduler
    from qgn.engine.settings import settings_from_dict

    settings = settings_from_dict({"train": {"lr_schedule": schedule, "warmup_ratio": 0.1}})
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = make_scheduler(optimizer, settings, 100)
    rates = []
    for _ in range(100):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates[0] == 0 and rates[5] == pytest.approx(0.5) and rates[10] == pytest.approx(1.0)
    halfway = {"linear": 1 - 45 / 90, "cosine": 0.5 * (1 + math.cos(math.pi * 45 / 90)), "constant": 1.0}
    assert rates[55] == pytest.approx(halfway[schedule])


def test_bad_schedule_settings_are_refused():
    from qgn.engine.settings import settings_from_dict
    from qgn.errors import QGNError

    with pytest.raises(QGNError, match="lr_schedule"):
        settings_from_dict({"train": {"lr_schedule": "step"}})
    for bad in (0.0, 1.5):
        with pytest.raises(QGNError, match="layer_decay"):
            settings_from_dict({"train": {"layer_decay": bad}})


# ----------------------------------------------------------------------------- end to end
AIDS = {"bio_loss_weight": 1.0, "span_proposals": 4}
AIDS_TRAIN = {"layer_decay": 0.8, "lr_schedule": "cosine"}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from qgn.data.synthetic import generate_synthetic_benchmark

    return generate_synthetic_benchmark(
        tmp_path_factory.mktemp("synthetic"), num_train=32, num_dev=8, num_test=8, seed=3
    )


def _settings(bench, **train):
    from qgn.engine.settings import settings_from_dict

    return settings_from_dict(
        {
            "model": {"preset": "tiny", "num_queries": 8, "score_threshold": 0.0, **AIDS},
            "data": {"path": str(bench), "image_dir": str(bench / "images"), "tokenizer": "words"},
            "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "eval_batch_size": 8, "seed": 1, **AIDS_TRAIN, **train},
        }
    )


def test_with_the_aids_on_training_predicts_and_resumes_exactly(bench, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from qgn.api import load
    from qgn.cli import main
    from qgn.data import read_dataset
    from qgn.engine.train import Trainer, run_training

    straight = tmp_path / "straight"
    run_training(_settings(bench), straight, progress=False)
    records = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_bio", "loss_proposals"} <= set(records[0]["train"])
    assert records[-1]["train"]["loss"] < records[0]["train"]["loss"]

    interrupted = tmp_path / "interrupted"
    calls = {"n": 0}
    original = Trainer._loss

    def flaky_loss(self, batch):
        calls["n"] += 1
        if calls["n"] == 7:  # inside epoch 2
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(Trainer, "_loss", flaky_loss)
    with pytest.raises(KeyboardInterrupt):
        run_training(
            _settings(bench, checkpoint_every_steps=0, checkpoint_every_minutes=0), interrupted, progress=False
        )
    monkeypatch.setattr(Trainer, "_loss", original)
    assert main(["train", "--resume", str(interrupted), "--no-progress"]) == 0
    a = load_file(str(sorted((straight / "checkpoint").glob("model*.safetensors"))[0]))
    b = load_file(str(sorted((interrupted / "checkpoint").glob("model*.safetensors"))[0]))
    assert a.keys() == b.keys() and "span_prior_bias" in a
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)

    predictor = load(straight / "best", device="cpu", score_threshold=0.0)
    assert predictor.config.span_proposals == 4 and predictor.config.bio_loss_weight == 1.0
    posts = read_dataset(str(bench), split="test", image_dir=str(bench / "images"))
    from PIL import Image

    predictions = predictor.predict_posts(posts, [Image.open(p.image_path) for p in posts])
    assert sum(len(p) for p in predictions) > 0
