"""Box ops and the Hungarian matcher on hand-made outputs of the contract's shapes."""

from __future__ import annotations

import itertools

import pytest
import torch

from qgn.modeling.box_ops import (
    box_area,
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    denormalize_boxes,
    generalized_box_iou,
    normalize_boxes,
)
from qgn.modeling.configuration_qgn import QGNConfig
from qgn.modeling.matcher import HungarianMatcher

BIG = 10.0


def random_xyxy(n: int, generator: torch.Generator) -> torch.Tensor:
    corner = torch.rand(n, 2, generator=generator)
    size = torch.rand(n, 2, generator=generator) * 0.5 + 0.01
    return torch.cat([corner, corner + size], dim=1)


def brute_iou_giou(a: list[float], b: list[float]) -> tuple[float, float]:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union, inter / union - (hull - union) / hull


# ------------------------------------------------------------------------------ box ops
def test_box_conversions_round_trip():
    g = torch.Generator().manual_seed(0)
    xyxy = random_xyxy(20, g)
    assert torch.allclose(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(xyxy)), xyxy, atol=1e-6)
    assert torch.allclose(
        box_xyxy_to_cxcywh(torch.tensor([[10.0, 20.0, 30.0, 60.0]])), torch.tensor([[20.0, 40.0, 20.0, 40.0]])
    )
    assert box_area(torch.tensor([[10.0, 20.0, 30.0, 60.0]])).item() == 800.0  # no +1


def test_normalise_denormalise_round_trip_and_clamp():
    size = (600, 450)
    pixels = torch.tensor([[0.0, 0.0, 600.0, 450.0], [60.0, 45.0, 120.0, 90.0]])
    normalised = normalize_boxes(pixels, size)
    assert torch.allclose(normalised[0], torch.tensor([0.5, 0.5, 1.0, 1.0]))
    assert torch.allclose(normalised[1], torch.tensor([0.15, 0.15, 0.1, 0.1]))
    assert torch.allclose(denormalize_boxes(normalised, size), pixels, atol=1e-4)
    # boxes past the border are clamped to the image both ways
    assert torch.allclose(
        normalize_boxes(torch.tensor([-5.0, 0.0, 700.0, 450.0]), size), torch.tensor([0.5, 0.5, 1.0, 1.0])
    )
    assert torch.allclose(
        denormalize_boxes(torch.tensor([0.9, 0.5, 0.4, 0.2]), size), torch.tensor([420.0, 180.0, 600.0, 270.0])
    )


def test_iou_known_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0]])
    iou, union = box_iou(a, b)
    assert torch.allclose(iou, torch.tensor([[1 / 7, 1.0, 0.0]]))
    assert torch.allclose(union, torch.tensor([[7.0, 4.0, 5.0]]))
    giou = generalized_box_iou(a, b)
    assert torch.allclose(giou[0, :2], torch.tensor([1 / 7 - 2 / 9, 1.0]))
    assert giou[0, 2] < 0


def test_iou_and_giou_match_brute_force_and_range():
    g = torch.Generator().manual_seed(1)
    a, b = random_xyxy(7, g), random_xyxy(5, g)
    iou, _ = box_iou(a, b)
    giou = generalized_box_iou(a, b)
    assert iou.shape == giou.shape == (7, 5)
    for i, j in itertools.product(range(7), range(5)):
        expected_iou, expected_giou = brute_iou_giou(a[i].tolist(), b[j].tolist())
        assert iou[i, j].item() == pytest.approx(expected_iou, abs=1e-5)
        assert giou[i, j].item() == pytest.approx(expected_giou, abs=1e-5)
    assert (giou >= -1).all() and (giou <= 1).all() and (giou <= iou + 1e-6).all()


def test_giou_refuses_inverted_boxes_and_survives_degenerate_ones():
    with pytest.raises(ValueError):
        generalized_box_iou(torch.tensor([[2.0, 0.0, 1.0, 1.0]]), torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
    point = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    assert torch.isfinite(generalized_box_iou(point, point)).all()


# ------------------------------------------------------------------------------ matcher
from fakes import make_targets, random_outputs  # noqa: E402  (tests/ is on sys.path)


@pytest.fixture
def config() -> QGNConfig:
    return QGNConfig.tiny()


def test_obvious_assignment_is_found(config):
    # 6 queries; queries 4, 1 and 3 point clearly at gold entities 0, 1 and 2 (shuffled).
    out = random_outputs(1, 6, 8, 4, seed=0)
    gold = [(2, 0, 1, [0.2, 0.2, 0.2, 0.2]), (0, 3, 3, [0.7, 0.6, 0.3, 0.4]), (1, 5, 7, None)]
    plan = {4: 0, 1: 1, 3: 2}
    for q, j in plan.items():
        label, start, end, box = gold[j]
        out["type_logits"][0, q, label] = BIG
        out["start_logits"][0, q, start] = BIG
        out["end_logits"][0, q, end] = BIG
        if box is not None:
            out["pred_boxes"][0, q] = torch.tensor(box)
    targets = [
        make_targets(
            [g[0] for g in gold],
            [g[1] for g in gold],
            [g[2] for g in gold],
            [g[3] or [0, 0, 0, 0] for g in gold],
            [g[3] is not None for g in gold],
        )
    ]
    ((rows, cols),) = HungarianMatcher(config)(out, targets)
    assert rows.dtype == cols.dtype == torch.long
    assert dict(zip(rows.tolist(), cols.tolist())) == plan
    assert rows.tolist() == sorted(rows.tolist())


def test_boxes_break_ties_between_same_span_targets(config):
    # An entity with two boxes: two targets with the same span/type differ only by box.
    out = random_outputs(1, 4, 5, 4, seed=1)
    for q in (0, 2):
        out["type_logits"][0, q, 0] = BIG
        out["start_logits"][0, q, 1] = BIG
        out["end_logits"][0, q, 2] = BIG
    out["pred_boxes"][0, 0] = torch.tensor([0.8, 0.8, 0.2, 0.2])
    out["pred_boxes"][0, 2] = torch.tensor([0.2, 0.2, 0.2, 0.2])
    targets = [make_targets([0, 0], [1, 1], [2, 2], [[0.2, 0.2, 0.2, 0.2], [0.8, 0.8, 0.2, 0.2]], [True, True])]
    ((rows, cols),) = HungarianMatcher(config)(out, targets)
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 2: 0}


def test_batched_equals_per_post(config):
    out = random_outputs(3, 7, 9, 4, seed=2)
    out["word_mask"][1, 6:] = False
    out["start_logits"] = out["start_logits"].masked_fill(~out["word_mask"][:, None], -1e4)
    g = torch.Generator().manual_seed(3)
    targets = [
        make_targets([0, 3, 1], [0, 2, 5], [1, 2, 8], torch.rand(3, 4, generator=g).tolist(), [True, False, True]),
        make_targets([2], [4], [5], [[0.5, 0.5, 0.3, 0.3]], [True]),
        make_targets([], [], []),
    ]
    matcher = HungarianMatcher(config)
    batched = matcher(out, targets)
    for b in range(3):
        single = matcher({k: v[b : b + 1] for k, v in out.items()}, [targets[b]])[0]
        assert torch.equal(batched[b][0], single[0]) and torch.equal(batched[b][1], single[1])
    assert [len(r) for r, _ in batched] == [3, 1, 0]


def test_zero_entities_give_empty_indices(config):
    out = random_outputs(2, 5, 4, 4, seed=4)
    indices = HungarianMatcher(config)(out, [make_targets([], [], []), make_targets([], [], [])])
    assert all(r.numel() == 0 and c.numel() == 0 and r.dtype == torch.long for r, c in indices)


def test_entities_without_box_use_constant_region_cost(config):
    # For box-less targets the region term is a constant, so the predicted boxes cannot change
    # the assignment: two very different box predictions give the same matching.
    out = random_outputs(1, 6, 6, 4, seed=5)
    targets = [make_targets([0, 1, 2], [0, 2, 4], [1, 3, 5])]
    matcher = HungarianMatcher(config)
    first = matcher(out, targets)[0]
    out["pred_boxes"] = torch.rand_like(out["pred_boxes"])
    second = matcher(out, targets)[0]
    text_only = matcher({k: v for k, v in out.items() if k not in ("pred_boxes", "notarget_logits")}, targets)[0]
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert torch.equal(first[0], text_only[0]) and torch.equal(first[1], text_only[1])


def test_box_cost_decides_when_targets_have_boxes(config):
    # Same type/span everywhere: only the boxes distinguish the queries, so with boxes the
    # assignment follows them.
    out = random_outputs(1, 3, 4, 4, seed=6)
    out["type_logits"].zero_()
    out["start_logits"].zero_()
    out["end_logits"].zero_()
    out["pred_boxes"] = torch.tensor([[[0.8, 0.8, 0.1, 0.1], [0.5, 0.5, 0.1, 0.1], [0.2, 0.2, 0.1, 0.1]]])
    targets = [
        make_targets(
            [0, 0, 0],
            [1, 1, 1],
            [1, 1, 1],
            [[0.2, 0.2, 0.1, 0.1], [0.8, 0.8, 0.1, 0.1], [0.5, 0.5, 0.1, 0.1]],
            [True] * 3,
        )
    ]
    ((rows, cols),) = HungarianMatcher(config)(out, targets)
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 1: 2, 2: 0}


def test_type_cost_decides_when_spans_and_boxes_are_equal(config):
    # Three targets with one span and one box that differ only by type; each query is confident of
    # one type. Only the type term can pair them, and the right pairing is not the identity (the
    # order scipy falls back to when every cost is equal).
    out = random_outputs(1, 3, 4, 4, seed=9)
    out["start_logits"].zero_()
    out["end_logits"].zero_()
    out["type_logits"].zero_()
    out["pred_boxes"][:] = torch.tensor([0.5, 0.5, 0.2, 0.2])
    for q, label in enumerate((2, 0, 1)):
        out["type_logits"][0, q, label] = BIG
    targets = [make_targets([0, 1, 2], [1, 1, 1], [2, 2, 2], [[0.5, 0.5, 0.2, 0.2]] * 3, [True] * 3)]
    ((rows, cols),) = HungarianMatcher(config)(out, targets)
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 2, 1: 0, 2: 1}


def hand_cost(config: QGNConfig, out: dict, target: dict, q: int, j: int) -> float:
    """The matching cost of query q for target j, written out from the definition."""
    c = -config.cost_class * out["type_logits"][0, q].softmax(-1)[target["labels"][j]].item()
    c -= config.cost_span * (
        out["start_logits"][0, q].softmax(-1)[target["start"][j]].item()
        + out["end_logits"][0, q].softmax(-1)[target["end"][j]].item()
    )
    if not target["has_box"][j]:
        return c + config.cost_no_box
    box, gold = out["pred_boxes"][0, q].tolist(), target["boxes"][j].tolist()
    xyxy = lambda b: [b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2]  # noqa: E731
    return (
        c
        + config.cost_l1 * sum(abs(a - b) for a, b in zip(box, gold))
        - config.cost_giou * brute_iou_giou(xyxy(box), xyxy(gold))[1]
    )


@pytest.mark.parametrize("only", [None, "cost_class", "cost_span", "cost_l1", "cost_giou"])
def test_assignment_is_the_brute_force_optimum_of_the_hand_cost(only):
    # Each term alone (the others at 0), and all together: the matcher's pairs must be the
    # cheapest of all 4P3 assignments under the cost written out by hand.
    weights = {"cost_class": 1.0, "cost_span": 1.0, "cost_l1": 1.0, "cost_giou": 1.0}
    if only:
        weights = {k: (1.0 if k == only else 0.0) for k in weights}
    config = QGNConfig.tiny(**weights)
    g = torch.Generator().manual_seed(11)
    target = make_targets(
        [1, 3, 0],
        [0, 2, 4],
        [1, 3, 4],
        (torch.rand(3, 4, generator=g) * 0.4 + 0.1).tolist(),
        [True, True, True] if only in ("cost_l1", "cost_giou") else [True, False, True],
    )
    for seed in range(5):
        out = random_outputs(1, 4, 6, 4, seed=100 + seed)
        out = {k: v * 3 if k.endswith("logits") else v for k, v in out.items()}  # peakier: the terms differ
        costs = {
            perm: sum(hand_cost(config, out, target, q, j) for j, q in enumerate(perm))
            for perm in itertools.permutations(range(4), 3)
        }
        best = min(costs.values())
        assert sorted(costs.values())[1] - best > 1e-4, "the example must have one optimum"
        ((rows, cols),) = HungarianMatcher(config)(out, [target])
        chosen = tuple(dict(zip(cols.tolist(), rows.tolist()))[j] for j in range(3))
        assert costs[chosen] == pytest.approx(best, abs=1e-5), (only, seed)


def test_text_only_outputs_and_more_targets_than_queries(config):
    out = random_outputs(1, 2, 5, 4, seed=7, boxes=False)
    ((rows, cols),) = HungarianMatcher(config)(out, [make_targets([0, 1, 2], [0, 1, 2], [0, 1, 2])])
    assert len(rows) == 2 and len(set(cols.tolist())) == 2


def test_nan_outputs_raise_clear_error(config):
    out = random_outputs(1, 2, 3, 4, seed=8)
    out["type_logits"][0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite"):
        HungarianMatcher(config)(out, [make_targets([0], [0], [0])])
