"""SetCriterion on hand-made outputs: values, switches, consistency groups, optimisation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from qgn.modeling.configuration_qgn import QGNConfig
from qgn.modeling.criterion import SetCriterion

from fakes import make_targets, random_outputs  # noqa: E402  (tests/ is on sys.path)


C = 4  # entity types of QGNConfig.tiny()


@pytest.fixture
def config() -> QGNConfig:
    return QGNConfig.tiny()


def two_posts():
    targets = [
        # entity 0 has two boxes (two targets, one span), entity 1 has none
        make_targets([0, 0, 2], [1, 1, 4], [2, 2, 4], [[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.2, 0.3], [0, 0, 0, 0]],
                     [True, True, False]),
        make_targets([3], [0], [0], [[0.5, 0.5, 0.4, 0.4]], [True]),
    ]
    targets[0]["entity_index"] = torch.tensor([0, 0, 1])
    return targets


def weighted_total(config, parts):
    return (config.lambda_pred * parts.get("loss_pred", 0.0) + config.lambda_nt * parts.get("loss_nt", 0.0)
            + config.lambda_con * parts.get("loss_con", 0.0))


def test_finite_scalar_with_all_parts(config):
    out = random_outputs(2, 6, 7, C, seed=0)
    total, parts = SetCriterion(config)(out, two_posts())
    assert total.dim() == 0 and torch.isfinite(total)
    assert set(parts) == {"loss_ce", "loss_boundary", "loss_l1", "loss_giou", "loss_pred", "loss_nt", "loss_con"}
    assert all(not p.requires_grad and torch.isfinite(p) for p in parts.values())
    pred = (config.weight_ce * parts["loss_ce"] + config.weight_boundary * parts["loss_boundary"]
            + config.weight_l1 * parts["loss_l1"] + config.weight_giou * parts["loss_giou"])
    assert parts["loss_pred"].item() == pytest.approx(pred.item(), rel=1e-5)
    assert total.item() == pytest.approx(float(weighted_total(config, parts)), rel=1e-5)


def test_never_calls_backward_and_half_inputs_work(config):
    out = {k: v.clone().half().requires_grad_(v.is_floating_point()) if v.is_floating_point() else v
           for k, v in random_outputs(2, 6, 7, C, seed=1).items()}
    total, _ = SetCriterion(config)(out, two_posts())
    assert total.dtype == torch.float32
    assert all(v.grad is None for v in out.values() if torch.is_tensor(v) and v.is_floating_point())
    total.backward()
    assert out["type_logits"].grad is not None and out["pred_boxes"].grad is not None


def test_zero_target_batch(config):
    out = random_outputs(2, 5, 4, C, seed=2)
    out = {k: v.requires_grad_(True) if v.is_floating_point() else v for k, v in out.items()}
    empty = [make_targets([], [], []), make_targets([], [], [])]
    total, parts = SetCriterion(config)(out, empty)
    assert torch.isfinite(total)
    labels = torch.full((2, 5), C)
    assert parts["loss_ce"].item() == pytest.approx(F.cross_entropy(out["type_logits"].transpose(1, 2), labels).item(),
                                                    rel=1e-5)
    nt = F.cross_entropy(out["notarget_logits"].transpose(1, 2), torch.ones(2, 5, dtype=torch.long))
    assert parts["loss_nt"].item() == pytest.approx(nt.item(), rel=1e-5)
    for name in ("loss_boundary", "loss_l1", "loss_giou", "loss_con"):
        assert parts[name].item() == 0.0
    total.backward()
    assert out["type_logits"].grad.abs().sum() > 0


def test_no_entity_weight_and_labels_by_hand(config):
    out = random_outputs(1, 4, 5, C, seed=3)
    targets = [make_targets([2], [1], [3])]
    indices = [(torch.tensor([2]), torch.tensor([0]))]
    classes = torch.tensor([[C, C, 2, C]])
    losses = []
    for weight in (0.1, 1.0):
        _, parts = SetCriterion(config.replace(no_entity_weight=weight))(out, targets, indices)
        class_weight = torch.ones(C + 1)
        class_weight[-1] = weight
        ce = F.cross_entropy(out["type_logits"][0], classes[0], reduction="none")
        expected = (ce * class_weight[classes[0]]).sum() / class_weight[classes[0]].sum()
        assert parts["loss_ce"].item() == pytest.approx(expected.item(), rel=1e-5)
        losses.append(parts["loss_ce"].item())
    assert losses[0] != pytest.approx(losses[1])


def test_boundary_loss_by_hand(config):
    out = random_outputs(1, 3, 5, C, seed=4)
    out["word_mask"][0, 4] = False  # the last word is padding
    targets = [make_targets([0], [1], [2])]
    indices = [(torch.tensor([1]), torch.tensor([0]))]
    _, parts = SetCriterion(config)(out, targets, indices)
    expected = 0.0
    for key, gold in (("start_logits", 1), ("end_logits", 2)):
        logits = out[key][0, 1, :4]
        expected += F.binary_cross_entropy_with_logits(logits, F.one_hot(torch.tensor(gold), 4).float()).item()
    assert parts["loss_boundary"].item() == pytest.approx(expected, rel=1e-5)


def test_consistency_groups_by_span(config):
    # Post 0: two targets of one span, one with a box, one without (the group is "has target"),
    # and a lone box-less target. The group label overrides the member's own label.
    out = random_outputs(1, 4, 6, C, seed=5)
    targets = [make_targets([0, 0, 1], [1, 1, 4], [2, 2, 4], [[0.4, 0.4, 0.2, 0.2], [0, 0, 0, 0], [0, 0, 0, 0]],
                            [True, False, False])]
    indices = [(torch.tensor([0, 1, 3]), torch.tensor([0, 1, 2]))]
    _, parts = SetCriterion(config)(out, targets, indices)
    logits = out["notarget_logits"][0]
    expected = (F.cross_entropy(logits[[0, 1, 3]], torch.tensor([0, 0, 1]), reduction="sum") / 3).item()
    assert parts["loss_con"].item() == pytest.approx(expected, rel=1e-5)
    # The no-target loss instead uses each target's own label (query 1 -> no target).
    weight = torch.tensor([1.0, 1.0, config.no_entity_weight, 1.0])
    ce = F.cross_entropy(logits, torch.tensor([0, 1, 1, 1]), reduction="none")
    assert parts["loss_nt"].item() == pytest.approx(((ce * weight).sum() / weight.sum()).item(), rel=1e-5)


def test_lambda_zero_switches_losses_off(config):
    out = random_outputs(2, 6, 7, C, seed=6)
    targets = two_posts()
    for changes, absent in (
        (dict(lambda_nt=0.0), {"loss_nt"}),
        (dict(lambda_con=0.0), {"loss_con"}),
        (dict(lambda_nt=0.0, lambda_con=0.0), {"loss_nt", "loss_con"}),
        (dict(lambda_pred=0.0), {"loss_ce", "loss_boundary", "loss_l1", "loss_giou", "loss_pred"}),
        (dict(weight_l1=0.0, weight_giou=0.0), {"loss_l1", "loss_giou"}),
    ):
        cfg = config.replace(**changes)
        total, parts = SetCriterion(cfg)(out, targets)
        assert absent.isdisjoint(parts), changes
        assert "loss_pred" in parts or "loss_pred" in absent
        assert total.item() == pytest.approx(float(weighted_total(cfg, parts)), rel=1e-5)
    off = config.replace(lambda_pred=0.0, lambda_nt=0.0, lambda_con=0.0)
    total, parts = SetCriterion(off)(out, targets)
    assert parts == {} and total.item() == 0.0


def test_text_only_skips_region_and_notarget_losses(config):
    out = random_outputs(2, 6, 7, C, seed=7, boxes=False)
    total, parts = SetCriterion(config.replace(text_only=True))(out, two_posts())
    assert set(parts) == {"loss_ce", "loss_boundary", "loss_pred"} and torch.isfinite(total)


def test_given_indices_skip_the_matcher(config):
    class Refuse:
        def __call__(self, *args):
            raise AssertionError("matcher called although indices were given")

    out = random_outputs(1, 3, 5, C, seed=8)
    total, _ = SetCriterion(config, matcher=Refuse())(out, [make_targets([0], [0], [1])],
                                                      [(torch.tensor([0]), torch.tensor([0]))])
    assert torch.isfinite(total)


def test_optimising_outputs_lowers_loss_and_fits_targets(config):
    torch.manual_seed(0)
    batch, queries, words = 2, 5, 6
    params = {
        "type_logits": torch.randn(batch, queries, C + 1),
        "start_logits": torch.randn(batch, queries, words),
        "end_logits": torch.randn(batch, queries, words),
        "box_logits": torch.randn(batch, queries, 4),
        "notarget_logits": torch.randn(batch, queries, 2),
    }
    params = {k: v.requires_grad_(True) for k, v in params.items()}
    criterion = SetCriterion(config)
    targets = two_posts()
    optimiser = torch.optim.Adam(params.values(), lr=0.1)

    def outputs():
        out = {k: v for k, v in params.items() if k != "box_logits"}
        out["pred_boxes"] = params["box_logits"].sigmoid()
        out["word_mask"] = torch.ones(batch, words, dtype=torch.bool)
        return out

    first = None
    for _ in range(150):
        total, _ = criterion(outputs(), targets)
        first = total.item() if first is None else first
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
    with torch.no_grad():
        out = outputs()
        final, _ = criterion(out, targets)
        indices = criterion.matcher(out, targets)
    assert math.isfinite(final.item()) and final.item() < 0.3 * first
    for b, (rows, cols) in enumerate(indices):
        t = targets[b]
        assert len(rows) == len(t["labels"])
        assert torch.equal(out["type_logits"][b, rows].argmax(-1), t["labels"][cols])
        assert torch.equal(out["start_logits"][b, rows].argmax(-1), t["start"][cols])
        assert torch.equal(out["end_logits"][b, rows].argmax(-1), t["end"][cols])
        boxed = t["has_box"][cols]
        assert torch.allclose(out["pred_boxes"][b, rows][boxed], t["boxes"][cols][boxed], atol=0.05)
        assert torch.equal(out["notarget_logits"][b, rows].argmax(-1), (~boxed).long())
        unmatched = torch.ones(queries, dtype=torch.bool)
        unmatched[rows] = False
        assert (out["type_logits"][b, unmatched].argmax(-1) == C).all()
