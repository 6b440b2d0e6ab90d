"""PostProcessor on hand-made outputs of the contract's shapes."""

from __future__ import annotations

import logging

import pytest
import torch

from qgn.data.records import Post
from qgn.modeling.configuration_qgn import QGNConfig
from qgn.modeling.postprocess import PostProcessor

TYPES = ["PER", "LOC", "ORG", "OTHER"]
BIG, LOW = 12.0, -12.0


def blank_outputs(batch: int, queries: int, words: int, boxes: bool = True) -> dict[str, torch.Tensor]:
    """Every query says no-entity; spans and boxes are neutral."""
    type_logits = torch.full((batch, queries, len(TYPES) + 1), LOW)
    type_logits[..., -1] = BIG
    out = {
        "type_logits": type_logits,
        "start_logits": torch.zeros(batch, queries, words),
        "end_logits": torch.zeros(batch, queries, words),
        "word_mask": torch.ones(batch, words, dtype=torch.bool),
    }
    if boxes:
        out["pred_boxes"] = torch.full((batch, queries, 4), 0.5)
        out["notarget_logits"] = torch.tensor([LOW, BIG]).repeat(batch, queries, 1)  # no target
    return out


def set_query(out, b, q, type_name, start, end_inclusive, box=None, confidence=BIG):
    out["type_logits"][b, q] = LOW
    out["type_logits"][b, q, TYPES.index(type_name)] = confidence
    out["start_logits"][b, q] = LOW
    out["start_logits"][b, q, start] = BIG
    out["end_logits"][b, q] = LOW
    out["end_logits"][b, q, end_inclusive] = BIG
    if box is not None:
        out["pred_boxes"][b, q] = torch.tensor(box)
        out["notarget_logits"][b, q] = torch.tensor([BIG, LOW])


def post(words: int, size=(200, 100), pid="p") -> Post:
    return Post(pid, [f"w{i}" for i in range(words)], image_size=size)


@pytest.fixture
def config() -> QGNConfig:
    return QGNConfig.tiny(image_geometry="stretch")  # boxes normalised to the whole image


def test_padded_geometry_maps_boxes_back_to_the_image():
    # 200 x 100 padded to the 64 px square: the image is its top 64 x 32, half the height
    out = blank_outputs(1, 2, 3)
    set_query(out, 0, 0, "PER", 1, 1, box=[0.5, 0.25, 0.5, 0.2])
    set_query(out, 0, 1, "ORG", 2, 2, box=[0.5, 0.45, 0.2, 0.3])  # reaches into the padding
    ((first, second),) = PostProcessor(QGNConfig.tiny(image_geometry="pad"))(out, [post(3, size=(200, 100))])
    assert first.box == pytest.approx((50.0, 30.0, 150.0, 70.0))
    assert second.box == pytest.approx((80.0, 60.0, 120.0, 100.0))  # cut at the image's bottom edge


def test_hand_made_outputs_give_expected_entities(config):
    out = blank_outputs(2, 5, 6)
    set_query(out, 0, 3, "LOC", 4, 5)
    set_query(out, 0, 1, "PER", 0, 1, box=[0.5, 0.5, 0.5, 0.2])
    set_query(out, 1, 0, "ORG", 2, 2)
    preds = PostProcessor(config)(out, [post(6), post(6, pid="q")])
    assert [(p.start, p.end, p.type) for p in preds[0]] == [(0, 2, "PER"), (4, 6, "LOC")]
    assert preds[0][0].box == pytest.approx((50.0, 40.0, 150.0, 60.0))  # denormalised to 200x100
    assert preds[0][1].box is None  # no-target head says "no box"
    assert [(p.start, p.end, p.type, p.box) for p in preds[1]] == [(2, 3, "ORG", None)]
    assert all(p.score == pytest.approx(1.0, abs=1e-4) for p in preds[0] + preds[1])


def test_boxes_are_clamped_to_the_image(config):
    out = blank_outputs(1, 2, 3)
    set_query(out, 0, 0, "PER", 1, 1, box=[0.9, 0.1, 0.4, 0.4])
    ((pred,),) = PostProcessor(config)(out, [post(3, size=(100, 50))])
    assert pred.box == pytest.approx((70.0, 0.0, 100.0, 15.0))


def test_end_never_precedes_start(config):
    # The separate argmaxes would give start 3, end 1; the best valid pair has end >= start.
    out = blank_outputs(1, 1, 5, boxes=False)
    out["type_logits"][0, 0] = torch.tensor([BIG, LOW, LOW, LOW, LOW])
    out["start_logits"][0, 0] = torch.log(torch.tensor([0.3, 0.05, 0.05, 0.55, 0.05]))
    out["end_logits"][0, 0] = torch.log(torch.tensor([0.05, 0.55, 0.05, 0.05, 0.3]))
    ((pred,),) = PostProcessor(config, score_threshold=0.0)(out, [post(5)])
    # valid pairs: (0,1) = (3,4) = 0.165 are the best, (0,4) = 0.09, ...
    assert pred.end - 1 >= pred.start and pred.score == pytest.approx(0.3 * 0.55, rel=1e-3)
    # with single-word spans only, the best is (1,1) or (3,3) = 0.0275
    processor = PostProcessor(config, score_threshold=0.0, max_span_words=1)
    ((pred,),) = processor(out, [post(5)])
    assert pred.end - pred.start == 1 and pred.score == pytest.approx(0.55 * 0.05, rel=1e-3)


def test_padding_words_are_never_predicted(config):
    out = blank_outputs(1, 1, 6, boxes=False)
    set_query(out, 0, 0, "PER", 5, 5)
    out["start_logits"][0, 0, 1] = BIG - 1  # second best start, a real word
    out["end_logits"][0, 0, 2] = BIG - 1
    out["word_mask"][0, 3:] = False
    ((pred,),) = PostProcessor(config, score_threshold=0.0)(out, [post(3)])
    assert (pred.start, pred.end) == (1, 3)


def test_duplicates_per_span_collapse_to_the_best(config):
    out = blank_outputs(1, 4, 5)
    set_query(out, 0, 0, "PER", 1, 2, box=[0.2, 0.2, 0.1, 0.1], confidence=3.0)
    set_query(out, 0, 2, "ORG", 1, 2, box=[0.7, 0.7, 0.2, 0.2], confidence=8.0)
    set_query(out, 0, 3, "PER", 1, 2, confidence=5.0)
    ((pred,),) = PostProcessor(config, score_threshold=0.0)(out, [post(5, size=(10, 10))])
    assert (pred.start, pred.end, pred.type) == (1, 3, "ORG")
    assert pred.box == pytest.approx((6.0, 6.0, 8.0, 8.0))


def test_thresholds(config):
    out = blank_outputs(1, 2, 4)
    set_query(out, 0, 0, "PER", 0, 0, box=[0.5, 0.5, 0.2, 0.2])
    set_query(out, 0, 1, "LOC", 2, 3, confidence=0.0)
    out["type_logits"][0, 1, -1] = -0.5  # LOC still beats no-entity, but P(LOC) ~ 0.62
    out["notarget_logits"][0, 0] = torch.tensor([0.0, 0.0])  # P(no target) = 0.5
    loose = PostProcessor(config, score_threshold=0.5, no_target_threshold=0.6)(out, [post(4)])[0]
    assert [(p.type, p.box is not None) for p in loose] == [("PER", True), ("LOC", False)]
    strict = PostProcessor(config, score_threshold=0.7, no_target_threshold=0.5)(out, [post(4)])[0]
    assert [(p.type, p.box) for p in strict] == [("PER", None)]  # P(no target) >= threshold -> no box
    # defaults come from the config
    processor = PostProcessor(config.replace(score_threshold=0.9, no_target_threshold=0.2, remove_overlaps=True))
    assert (processor.score_threshold, processor.no_target_threshold, processor.remove_overlaps) == (0.9, 0.2, True)


def test_no_entity_queries_are_dropped_even_with_high_type_probability(config):
    out = blank_outputs(1, 1, 3, boxes=False)
    out["type_logits"][0, 0] = torch.tensor([5.0, LOW, LOW, LOW, 5.1])
    assert PostProcessor(config, score_threshold=0.0)(out, [post(3)]) == [[]]


def test_remove_overlaps_keeps_the_best(config):
    out = blank_outputs(1, 3, 6, boxes=False)
    set_query(out, 0, 0, "PER", 0, 2, confidence=3.0)
    set_query(out, 0, 1, "ORG", 2, 3, confidence=8.0)
    set_query(out, 0, 2, "LOC", 5, 5, confidence=4.0)
    overlapping = PostProcessor(config, score_threshold=0.0)(out, [post(6)])[0]
    assert [(p.start, p.end) for p in overlapping] == [(0, 3), (2, 4), (5, 6)]
    cleaned = PostProcessor(config, score_threshold=0.0, remove_overlaps=True)(out, [post(6)])[0]
    assert [(p.start, p.end, p.type) for p in cleaned] == [(2, 4, "ORG"), (5, 6, "LOC")]


def test_text_only_and_unknown_image_size_give_no_boxes(config, caplog):
    out = blank_outputs(1, 2, 3, boxes=False)
    set_query(out, 0, 0, "PER", 0, 0)
    ((pred,),) = PostProcessor(config)(out, [post(3)])
    assert pred.box is None
    out = blank_outputs(2, 2, 3)
    set_query(out, 0, 0, "PER", 0, 0, box=[0.5, 0.5, 0.2, 0.2])
    set_query(out, 1, 0, "PER", 0, 0, box=[0.5, 0.5, 0.2, 0.2])
    with caplog.at_level(logging.WARNING, logger="qgn.modeling.postprocess"):
        preds = PostProcessor(config)(out, [post(3, size=None), post(3, size=None, pid="b")])
    assert [p.box for ps in preds for p in ps] == [None, None]
    assert sum("no image size" in r.message for r in caplog.records) == 1


def test_post_without_words_gives_nothing(config):
    out = blank_outputs(1, 2, 1)
    set_query(out, 0, 0, "PER", 0, 0)
    out["word_mask"][:] = False
    assert PostProcessor(config, score_threshold=0.0)(out, [post(0)]) == [[]]


# ----------------------------------------------------------------------------- select() and overlaps by hand
def test_select_thresholds_are_inclusive_explicit_and_skip_not_stop():
    from qgn.modeling.postprocess import Candidate

    pp = PostProcessor(QGNConfig.tiny(), score_threshold=0.5, no_target_threshold=0.5, remove_overlaps=False)
    box = (0.0, 0.0, 5.0, 5.0)
    candidates = [
        Candidate(0, 1, "PER", 0.2, box, 0.1),  # below the threshold: skipped, not the end
        Candidate(1, 2, "LOC", 0.5, box, 0.5),  # exactly at both thresholds: kept, no box
        Candidate(2, 4, "ORG", 0.9, box, 0.49),  # kept with its box
        Candidate(3, 5, "PER", 0.8, box, 0.1),
    ]  # overlaps the ORG span
    kept = pp.select(candidates)
    assert [(p.start, p.end, p.type, p.box) for p in kept] == [
        (1, 2, "LOC", None),
        (2, 4, "ORG", box),
        (3, 5, "PER", box),
    ]
    # arguments given to select() override the post-processor's own values
    assert [p.start for p in pp.select(candidates, score_threshold=0.1)] == [0, 1, 2, 3]
    assert pp.select(candidates, no_target_threshold=0.6)[0].box == box
    assert [p.start for p in pp.select(candidates, remove_overlaps=True)] == [1, 2]


def test_greedy_overlaps_keep_touching_spans_and_treat_no_score_as_zero():
    from qgn.data.records import Prediction
    from qgn.modeling.postprocess import greedy_non_overlapping

    touching = [
        Prediction(0, 2, "PER", None, 0.9),
        Prediction(2, 4, "LOC", None, 0.8),
        Prediction(4, 5, "ORG", None, 0.7),
    ]
    assert sorted((p.start, p.end) for p in greedy_non_overlapping(touching)) == [(0, 2), (2, 4), (4, 5)]
    unscored = [Prediction(0, 2, "PER", None, None), Prediction(1, 3, "LOC", None, 0.1)]
    assert [(p.start, p.end) for p in greedy_non_overlapping(unscored)] == [(1, 3)]
    # a later, shorter span inside a kept one is dropped; one that starts where it ends is not
    nested = [
        Prediction(0, 4, "PER", None, 0.9),
        Prediction(1, 2, "LOC", None, 0.95),
        Prediction(4, 6, "ORG", None, 0.1),
    ]
    assert sorted((p.start, p.end) for p in greedy_non_overlapping(nested)) == [(1, 2), (4, 6)]


def test_masked_log_softmax_without_a_mask_is_a_plain_log_softmax():
    from qgn.modeling.matcher import masked_log_softmax

    logits = torch.randn(2, 3, 5)
    torch.testing.assert_close(masked_log_softmax(logits, None), logits.log_softmax(-1))
    mask = torch.tensor([[True, True, False, False, False], [True] * 5])
    masked = masked_log_softmax(logits, mask)
    assert masked[0, :, 2:].exp().max() < 1e-6
    torch.testing.assert_close(masked[0, :, :2], logits[0, :, :2].log_softmax(-1))


def test_max_span_words_below_one_is_refused():
    with pytest.raises(ValueError, match="max_span_words must be >= 1, got 0"):
        PostProcessor(QGNConfig.tiny(), max_span_words=0)
