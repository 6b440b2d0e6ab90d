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
        make_targets(
            [0, 0, 2],
            [1, 1, 4],
            [2, 2, 4],
            [[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.2, 0.3], [0, 0, 0, 0]],
            [True, True, False],
        ),
        make_targets([3], [0], [0], [[0.5, 0.5, 0.4, 0.4]], [True]),
    ]
    targets[0]["entity_index"] = torch.tensor([0, 0, 1])
    return targets


def weighted_total(config, parts):
    return (
        config.lambda_pred * parts.get("loss_pred", 0.0)
        + config.lambda_nt * parts.get("loss_nt", 0.0)
        + config.lambda_con * parts.get("loss_con", 0.0)
    )


def test_finite_scalar_with_all_parts(config):
    out = random_outputs(2, 6, 7, C, seed=0)
    total, parts = SetCriterion(config)(out, two_posts())
    assert total.dim() == 0 and torch.isfinite(total)
    assert set(parts) == {"loss_ce", "loss_boundary", "loss_l1", "loss_giou", "loss_pred", "loss_nt", "loss_con"}
    assert all(not p.requires_grad and torch.isfinite(p) for p in parts.values())
    pred = (
        config.weight_ce * parts["loss_ce"]
        + config.weight_boundary * parts["loss_boundary"]
        + config.weight_l1 * parts["loss_l1"]
        + config.weight_giou * parts["loss_giou"]
    )
    assert parts["loss_pred"].item() == pytest.approx(pred.item(), rel=1e-5)
    assert total.item() == pytest.approx(float(weighted_total(config, parts)), rel=1e-5)


def test_never_calls_backward_and_half_inputs_work(config):
    out = {
        k: v.clone().half().requires_grad_(v.is_floating_point()) if v.is_floating_point() else v
        for k, v in random_outputs(2, 6, 7, C, seed=1).items()
    }
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
    assert parts["loss_ce"].item() == pytest.approx(
        F.cross_entropy(out["type_logits"].transpose(1, 2), labels).item(), rel=1e-5
    )
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


def test_box_losses_by_hand_skip_box_less_targets(config):
    # Two posts, 4 targets, 2 of them without a box (their zero boxes must not count, in the sum
    # or in the denominator). Boxes in cxcywh.
    out = random_outputs(2, 4, 5, C, seed=12)
    out["pred_boxes"] = torch.tensor(
        [
            [[0.3, 0.3, 0.2, 0.2], [0.5, 0.5, 0.4, 0.2], [0.6, 0.6, 0.3, 0.3], [0.2, 0.7, 0.2, 0.1]],
            [[0.5, 0.4, 0.2, 0.4], [0.7, 0.7, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1], [0.9, 0.9, 0.1, 0.1]],
        ]
    )
    targets = [
        make_targets([0, 1], [0, 2], [1, 2], [[0.35, 0.3, 0.2, 0.3], [0, 0, 0, 0]], [True, False]),
        make_targets([2, 3], [1, 3], [1, 4], [[0, 0, 0, 0], [0.5, 0.5, 0.4, 0.4]], [False, True]),
    ]
    indices = [(torch.tensor([0, 2]), torch.tensor([0, 1])), (torch.tensor([1, 3]), torch.tensor([0, 1]))]
    _, parts = SetCriterion(config)(out, targets, indices)
    # pairs with a box: post 0 query 0 <-> (0.35, 0.3, 0.2, 0.3); post 1 query 3 <-> (0.5, 0.5, 0.4, 0.4)
    l1 = (0.05 + 0 + 0 + 0.1) + (0.4 + 0.4 + 0.3 + 0.3)
    # GIoU by hand in xyxy: [0.2,0.2,0.4,0.4] vs [0.25,0.15,0.45,0.45]: inter 0.15*0.2=0.03,
    # union 0.04+0.06-0.03=0.07, hull 0.25*0.3=0.075; [0.85,0.85,0.95,0.95] vs [0.3,0.3,0.7,0.7]:
    # inter 0, union 0.01+0.16=0.17, hull 0.65*0.65=0.4225.
    giou_a = 0.03 / 0.07 - (0.075 - 0.07) / 0.075
    giou_b = 0.0 - (0.4225 - 0.17) / 0.4225
    assert parts["loss_l1"].item() == pytest.approx(l1 / 2, rel=1e-5)
    assert parts["loss_giou"].item() == pytest.approx(((1 - giou_a) + (1 - giou_b)) / 2, rel=1e-5)


def test_auxiliary_layers_add_their_own_losses(config):
    # total(final + aux layers) = sum over layers of the loss of that layer alone, each matched
    # on its own; and the logged parts are the final layer's.
    layers = [random_outputs(2, 6, 7, C, seed=s) for s in (20, 21, 22)]
    criterion = SetCriterion(config)
    alone = [criterion(layer, two_posts())[0].item() for layer in layers]
    assert len({round(v, 4) for v in alone}) == 3, "the layers must differ"
    combined = {**layers[-1], "aux_outputs": layers[:-1]}
    total, parts = criterion(combined, two_posts())
    assert total.item() == pytest.approx(sum(alone), rel=1e-5)
    final_only = criterion(layers[-1], two_posts())[1]
    assert {k: v.item() for k, v in parts.items()} == pytest.approx({k: v.item() for k, v in final_only.items()})
    # each auxiliary layer is matched itself: a layer whose queries are permuted has the same loss
    permuted = {
        k: v[:, torch.randperm(6, generator=torch.Generator().manual_seed(0))] if v.dim() == 3 else v
        for k, v in layers[0].items()
    }
    again = criterion({**layers[-1], "aux_outputs": [permuted, layers[1]]}, two_posts())[0]
    assert again.item() == pytest.approx(sum(alone), rel=1e-5)


def test_one_to_many_matches_each_target_k_times_in_auxiliary_layers_only(config):
    from qgn.modeling.criterion import repeat_targets

    posts = two_posts()
    twice = repeat_targets(posts[0], 2)
    n = len(posts[0]["labels"])
    assert n > 0
    for key in ("labels", "start", "end", "has_box", "entity_index"):
        assert torch.equal(twice[key], torch.cat([posts[0][key], posts[0][key]]))
    assert torch.equal(twice["boxes"], torch.cat([posts[0]["boxes"], posts[0]["boxes"]]))

    layers = [random_outputs(2, 6, 7, C, seed=s) for s in (30, 31)]
    combined = {**layers[-1], "aux_outputs": layers[:-1]}
    k2 = SetCriterion(config.replace(aux_one_to_many=2))
    seen = []
    matcher = k2.matcher.forward

    def recording(outputs, targets):
        indices = matcher(outputs, targets)
        seen.append([len(q) for q, _ in indices])
        return indices

    k2.matcher.forward = recording
    total, parts = k2(combined, posts)
    targets_per_post = [len(t["labels"]) for t in posts]
    assert seen[0] == targets_per_post  # the final layer: one query per target
    assert seen[1] == [min(2 * n, 6) for n in targets_per_post]  # the auxiliary layer: two per target
    # the total is the final layer's loss plus the auxiliary layer's against the repeated targets
    one = SetCriterion(config)
    expected = one(layers[-1], posts)[0] + one(layers[0], [repeat_targets(t, 2) for t in posts])[0]
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert {k: v.item() for k, v in parts.items()} == pytest.approx(
        {k: v.item() for k, v in one(layers[-1], posts)[1].items()}
    )
    with pytest.raises(ValueError, match="aux_one_to_many"):
        config.replace(aux_one_to_many=0)


def peaked_spans(out, spans):
    """Make query q decode ``spans[q]`` (inclusive start, end) by a wide margin."""
    for q, (start, end) in enumerate(spans):
        out["start_logits"][0, q] = -5.0
        out["end_logits"][0, q] = -5.0
        out["start_logits"][0, q, start] = 5.0
        out["end_logits"][0, q, end] = 5.0
    return out


def test_consistency_groups_every_query_decoding_a_gold_span(config):
    # One post: a grounded entity with two boxes at words 1-2 and a box-less one at word 4.
    # Queries 0 and 1 are matched to the grounded one's two targets, query 2 (unmatched) is a
    # duplicate decoding the same span, query 3 is matched to the box-less entity, query 4
    # (unmatched) decodes a span of no entity.
    out = peaked_spans(random_outputs(1, 5, 6, C, seed=5), [(1, 2), (1, 2), (1, 2), (4, 4), (0, 3)])
    targets = [
        make_targets(
            [0, 0, 1],
            [1, 1, 4],
            [2, 2, 4],
            [[0.4, 0.4, 0.2, 0.2], [0.7, 0.6, 0.2, 0.2], [0, 0, 0, 0]],
            [True, True, False],
        )
    ]
    targets[0]["entity_index"] = torch.tensor([0, 0, 1])
    indices = [(torch.tensor([0, 1, 3]), torch.tensor([0, 1, 2]))]
    out["notarget_logits"].requires_grad_(True)
    _, parts = SetCriterion(config)(out, targets, indices)
    logits = out["notarget_logits"][0].detach()
    # by hand: members 0, 1, 2 -> has target (0), member 3 -> no target (1); query 4 in no group
    expected = (F.cross_entropy(logits[[0, 1, 2, 3]], torch.tensor([0, 0, 0, 1]), reduction="sum") / 4).item()
    assert parts["loss_con"].item() == pytest.approx(expected, rel=1e-5)
    # L_nt calls the unmatched duplicate (query 2) "no target": the two losses differ in value...
    weight = torch.tensor([1.0, 1.0, config.no_entity_weight, 1.0, config.no_entity_weight])
    ce = F.cross_entropy(logits, torch.tensor([0, 0, 1, 1, 1]), reduction="none")
    loss_nt = ((ce * weight).sum() / weight.sum()).item()
    assert parts["loss_nt"].item() == pytest.approx(loss_nt, rel=1e-5)
    assert abs(parts["loss_con"].item() - loss_nt) > 1e-3

    # ... and in gradient: on the duplicate, L_con raises the has-target logit, L_nt lowers it.
    def grad_of(**lambdas):
        cfg = config.replace(lambda_pred=0.0, **lambdas)
        out["notarget_logits"].grad = None
        SetCriterion(cfg)(out, targets, indices)[0].backward()
        return out["notarget_logits"].grad[0].clone()

    con = grad_of(lambda_nt=0.0, lambda_con=1.0)
    nt = grad_of(lambda_nt=1.0, lambda_con=0.0)
    assert con[2, 0] < 0 < nt[2, 0]  # descent raises has-target (class 0) under L_con only
    assert torch.all(con[4] == 0) and torch.all(nt[4] != 0)  # span of no entity: L_nt only


def test_consistency_is_not_the_matched_no_target_loss(config):
    """With no duplicates L_con still averages over the groups' members; on random outputs and a
    random matching it differs from the CE of the matched queries whenever some unmatched query
    decodes a gold span."""
    out = random_outputs(2, 8, 5, C, seed=11)
    targets = two_posts()
    criterion = SetCriterion(config)
    indices = criterion.matcher(out, targets)
    _, parts = criterion(out, targets, indices)
    starts = out["start_logits"].argmax(-1)
    logits = out["notarget_logits"]
    matched_ce = sum(
        F.cross_entropy(logits[b, q], (~t["has_box"][j]).long(), reduction="sum")
        for b, (t, (q, j)) in enumerate(zip(targets, indices))
    )
    matched_ce = matched_ce / sum(len(t["labels"]) for t in targets)
    assert starts.numel() and abs(parts["loss_con"].item() - matched_ce.item()) > 1e-4


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
    total, _ = SetCriterion(config, matcher=Refuse())(
        out, [make_targets([0], [0], [1])], [(torch.tensor([0]), torch.tensor([0]))]
    )
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


# ----------------------------------------------------------------------------- alignment losses
def align_config(config):
    return config.replace(lambda_pred=0.0, lambda_nt=0.0, lambda_con=0.0, lambda_align=1.0, lambda_align_words=1.0)


def test_box_patches_cover_cell_centres_and_the_box_centre():
    # 4x4 grid, cell centres at 1/8, 3/8, 5/8, 7/8. Target 0: the top-left 2x2 block; target 1: one
    # cell; target 2: a box smaller than a cell (no centre inside: only the cell holding its
    # centre); target 3: no box.
    t = make_targets(
        [0, 0, 1, 2],
        [0, 0, 1, 2],
        [0, 0, 1, 2],
        [[0.25, 0.25, 0.5, 0.5], [0.875, 0.875, 0.2, 0.2], [0.55, 0.3, 0.05, 0.05], [0, 0, 0, 0]],
        [True, True, True, False],
    )
    cells = SetCriterion.box_patches(t, 4, torch.device("cpu"))
    assert cells[0].nonzero().flatten().tolist() == [0, 1, 4, 5]
    assert cells[1].nonzero().flatten().tolist() == [15]
    assert cells[2].nonzero().flatten().tolist() == [1 * 4 + 2]  # row 1, column 2
    assert not cells[3].any()


def test_query_alignment_goes_to_its_own_copy_word_alignment_to_every_copy(config):
    # One entity drawn twice (cells 0 and 3 of a 2x2 grid), its words 0-1; queries 0 and 1 matched
    # to the two copies.
    targets = [make_targets([0, 0], [0, 0], [1, 1], [[0.25, 0.25, 0.1, 0.1], [0.75, 0.75, 0.1, 0.1]], [True, True])]
    targets[0]["entity_index"] = torch.tensor([0, 0])
    indices = [(torch.tensor([0, 1]), torch.tensor([0, 1]))]
    out = random_outputs(1, 2, 3, C, seed=4)
    big = torch.full((1, 3, 5), -5.0)
    out["align_logits"] = big.clone()
    out["align_logits"][0, 0, 0] = out["align_logits"][0, 1, 3] = 5.0  # each query on its own copy
    out["align_word_logits"] = torch.full((1, 4, 5), -5.0)
    out["align_word_logits"][0, :2, [0, 3]] = 5.0  # both words on both copies
    out["align_word_logits"][0, 3, [1, 2]] = 5.0  # background cells on "no word"
    out["align_logits"][0, 2, [1, 2]] = 5.0  # background cells on "no query"
    _, parts = SetCriterion(align_config(config))(out, targets, indices)
    assert parts["loss_align"].item() < 0.01 and parts["loss_align_words"].item() < 0.05
    swapped = dict(out, align_logits=out["align_logits"][:, [1, 0, 2]])  # each query on the other copy
    assert SetCriterion(align_config(config))(swapped, targets, indices)[1]["loss_align"].item() > 5


def test_query_alignment_by_hand(config):
    # 2x2 grid (G = 4), 2 queries. Query 1 is matched to a grounded entity covering cells 0 and 1,
    # query 0 to a box-less entity. Logits (1, 3, 5): rows q0, q1, "no query"; columns 4 cells, "no patch".
    logits = torch.randn(1, 3, 5, generator=torch.Generator().manual_seed(3))
    out = random_outputs(1, 2, 4, C, seed=4)
    out["align_logits"] = logits
    targets = [make_targets([0, 1], [0, 2], [0, 2], [[0.5, 0.25, 0.8, 0.4], [0, 0, 0, 0]], [True, False])]
    indices = [(torch.tensor([0, 1]), torch.tensor([1, 0]))]
    _, parts = SetCriterion(align_config(config))(out, targets, indices)
    L = logits[0]
    nll = lambda scores, pos: (scores.logsumexp(0) - scores[pos].logsumexp(0)).item()  # noqa: E731
    rows = (nll(L[0], [4]) + nll(L[1], [0, 1])) / 2  # q0 -> "no patch"; q1 -> cells 0, 1
    cols = (nll(L[:, 0], [1]) + nll(L[:, 1], [1]) + nll(L[:, 2], [2]) + nll(L[:, 3], [2])) / 4
    assert parts["loss_align"].item() == pytest.approx((rows + cols) / 2, rel=1e-5)


def test_word_alignment_by_hand_and_padding_words_are_no_candidates(config):
    # 2x2 grid; words 0-1 are one grounded entity (cell 3), word 2 a box-less entity, word 3 an
    # "O" word, word 4 padding. Rows: 5 words + "no word"; columns: 4 cells + "no patch".
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(1, 6, 5, generator=g)
    out = random_outputs(1, 2, 5, C, seed=4)
    out["word_mask"] = torch.tensor([[True, True, True, True, False]])
    out["align_word_logits"] = logits.clone()
    targets = [make_targets([0, 1], [0, 2], [1, 2], [[0.75, 0.75, 0.3, 0.3], [0, 0, 0, 0]], [True, False])]
    indices = [(torch.tensor([0, 1]), torch.tensor([0, 1]))]
    criterion = SetCriterion(align_config(config).replace(lambda_align=0.0))
    _, parts = criterion(out, targets, indices)
    L = logits[0]
    real = [0, 1, 2, 3, 5]  # padding word 4 is no candidate of any patch
    nll = lambda scores, pos: (scores.logsumexp(0) - scores[pos].logsumexp(0)).item()  # noqa: E731
    rows = (nll(L[0], [3]) + nll(L[1], [3]) + nll(L[2], [4])) / 3
    cols = sum(nll(L[real, c], [real.index(5)]) for c in (0, 1, 2)) + nll(L[real, 3], [0, 1])
    assert parts["loss_align_words"].item() == pytest.approx((rows + cols / 4) / 2, rel=1e-5)
    out["align_word_logits"][0, 4] = 50.0  # a padding word that "matches" everything changes nothing
    assert criterion(out, targets, indices)[1]["loss_align_words"].item() == pytest.approx(
        parts["loss_align_words"].item(), rel=1e-5
    )


# ----------------------------------------------------------------------------- by-hand checks of the details
def test_box_patches_match_a_plain_loop_on_off_centre_boxes():
    # Boxes whose edges fall exactly on cell centres (inclusive), off-centre and non-square, one
    # whose centre sits on the image border (its cell is the last one, not past the grid).
    grid = 4
    boxes = [
        [0.3125, 0.25, 0.375, 0.25],  # x in [0.125, 0.5], y in [0.125, 0.375]: edges on centres
        [0.6, 0.3, 0.5, 0.1],  # wide and flat, right half
        [0.2, 0.7, 0.1, 0.5],  # narrow and tall, left
        [1.0, 1.0, 0.1, 0.1],
    ]  # centre on the corner
    t = make_targets([0] * 4, [0] * 4, [0] * 4, boxes, [True] * 4)
    cells = SetCriterion.box_patches(t, grid, torch.device("cpu"))
    for k, (cx, cy, w, h) in enumerate(boxes):
        expected = set()
        for r in range(grid):
            for c in range(grid):
                px, py = (c + 0.5) / grid, (r + 0.5) / grid
                if cx - w / 2 <= px <= cx + w / 2 and cy - h / 2 <= py <= cy + h / 2:
                    expected.add(r * grid + c)
        expected.add(min(int(cy * grid), grid - 1) * grid + min(int(cx * grid), grid - 1))
        assert set(cells[k].nonzero().flatten().tolist()) == expected, k
    assert set(cells[0].nonzero().flatten().tolist()) == {0, 1, 4, 5}
    # every edge exactly on a cell centre, cx != cy: x in [0.125, 0.625], y in [0.375, 0.875]
    edges = make_targets([0], [0], [0], [[0.375, 0.625, 0.5, 0.5]], [True])
    assert SetCriterion.box_patches(edges, grid, torch.device("cpu"))[0].nonzero().flatten().tolist() == [
        4,
        5,
        6,
        8,
        9,
        10,
        12,
        13,
        14,
    ]


def test_boundary_loss_by_hand_with_several_targets_a_one_word_post_and_no_mask(config):
    out = random_outputs(2, 3, 4, C, seed=30)
    out["word_mask"][1, 1:] = False  # post 1 has one word
    targets = [make_targets([0, 1], [0, 2], [1, 3]), make_targets([2], [0], [0])]
    indices = [(torch.tensor([2, 0]), torch.tensor([0, 1])), (torch.tensor([1]), torch.tensor([0]))]
    _, parts = SetCriterion(config)(out, targets, indices)
    expected = 0.0
    for b, q, start, end in ((0, 2, 0, 1), (0, 0, 2, 3), (1, 1, 0, 0)):
        n = int(out["word_mask"][b].sum())
        for key, gold in (("start_logits", start), ("end_logits", end)):
            expected += F.binary_cross_entropy_with_logits(
                out[key][b, q, :n], F.one_hot(torch.tensor(gold), n).float()
            ).item()
    assert parts["loss_boundary"].item() == pytest.approx(expected / 3, rel=1e-5)
    # without a word_mask every position is a word: the same as an all-true mask (3 posts of 2
    # queries: more posts than queries)
    full = random_outputs(3, 2, 4, C, seed=31)
    targets = [make_targets([0], [0], [1]), make_targets([2], [0], [0]), make_targets([1], [2], [3])]
    indices = [
        (torch.tensor([1]), torch.tensor([0])),
        (torch.tensor([0]), torch.tensor([0])),
        (torch.tensor([1]), torch.tensor([0])),
    ]
    with_mask = SetCriterion(config)(full, targets, indices)[1]["loss_boundary"]
    del full["word_mask"]
    assert SetCriterion(config)(full, targets, indices)[1]["loss_boundary"].item() == pytest.approx(with_mask.item())


@pytest.mark.parametrize(
    "switch, absent, present",
    [
        ({"weight_ce": 0.0}, {"loss_ce"}, {"loss_boundary", "loss_l1", "loss_giou"}),
        ({"weight_boundary": 0.0}, {"loss_boundary"}, {"loss_ce"}),
        ({"weight_l1": 0.0}, set(), {"loss_giou", "loss_l1"}),  # the box losses run while either weighs
        ({"weight_l1": 0.0, "weight_giou": 0.0}, {"loss_l1", "loss_giou"}, {"loss_ce"}),
        ({"lambda_align": 0.0, "lambda_align_words": 0.0}, {"loss_align", "loss_align_words"}, {"loss_ce"}),
    ],
)
def test_each_weight_switches_exactly_its_loss(config, switch, absent, present):
    out = random_outputs(2, 6, 7, C, seed=32)
    out["align_logits"] = torch.randn(2, 7, 5)
    out["align_word_logits"] = torch.randn(2, 8, 5)
    base = {"lambda_align": 1.0, "lambda_align_words": 1.0}
    _, parts = SetCriterion(config.replace(**{**base, **switch}))(out, two_posts())
    assert not absent & set(parts) and present <= set(parts)
    # outputs without boxes (a text-only head set) never ask for the region or no-target losses
    text = {k: v for k, v in random_outputs(2, 6, 7, C, seed=33).items() if k not in ("pred_boxes", "notarget_logits")}
    _, parts = SetCriterion(config)(text, two_posts())
    assert not {"loss_l1", "loss_giou", "loss_nt", "loss_con"} & set(parts)


def test_total_is_the_weighted_sum_of_every_part_alignment_included(config):
    config = config.replace(lambda_align=0.7, lambda_align_words=0.3, lambda_nt=1.5, lambda_con=0.5)
    out = random_outputs(2, 6, 7, C, seed=34)
    out["align_logits"] = torch.randn(2, 7, 5)
    out["align_word_logits"] = torch.randn(2, 8, 5)
    total, parts = SetCriterion(config)(out, two_posts())
    expected = (
        config.lambda_pred * parts["loss_pred"]
        + 1.5 * parts["loss_nt"]
        + 0.5 * parts["loss_con"]
        + 0.7 * parts["loss_align"]
        + 0.3 * parts["loss_align_words"]
    )
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)


def test_consistency_decodes_spans_over_real_words_and_needs_both_ends(config):
    # 6 positions, the last two padding. Query 0's raw logits peak on padding word 5 for the end;
    # over the real words its best span is the gold (1, 2). Query 1 shares only the start with the
    # gold span (1, 3): it is in no group.
    out = peaked_spans(random_outputs(1, 3, 6, C, seed=40), [(1, 2), (1, 3), (0, 0)])
    out["word_mask"][0, 4:] = False
    out["end_logits"][0, 0, 5] = 9.0
    targets = [make_targets([0], [1], [2], [[0.4, 0.4, 0.2, 0.2]], [True])]
    indices = [(torch.tensor([2]), torch.tensor([0]))]
    _, parts = SetCriterion(config)(out, targets, indices)
    logits = out["notarget_logits"][0]
    assert parts["loss_con"].item() == pytest.approx(F.cross_entropy(logits[[0]], torch.tensor([0])).item(), rel=1e-5)


def test_notarget_unmatched_weight_by_hand(config):
    out = random_outputs(1, 4, 5, C, seed=41)
    targets = [make_targets([0, 1], [0, 2], [1, 3], [[0.4, 0.4, 0.2, 0.2], [0, 0, 0, 0]], [True, False])]
    indices = [(torch.tensor([1, 3]), torch.tensor([0, 1]))]
    labels = torch.tensor([1, 0, 1, 1])  # matched 1 -> has target, matched 3 -> box-less, others none
    ce = F.cross_entropy(out["notarget_logits"][0], labels, reduction="none")
    for unmatched, expected_weight in ((None, config.no_entity_weight), (0.0, 0.0), (0.25, 0.25)):
        weight = torch.tensor([expected_weight, 1.0, expected_weight, 1.0])
        _, parts = SetCriterion(config.replace(notarget_unmatched_weight=unmatched))(out, targets, indices)
        assert parts["loss_nt"].item() == pytest.approx(((ce * weight).sum() / weight.sum()).item(), rel=1e-5)


def test_a_given_matcher_is_the_one_used(config):
    calls = []

    class Identity:
        def __call__(self, outputs, targets):
            calls.append(len(targets))
            return [(torch.arange(len(t["labels"])), torch.arange(len(t["labels"]))) for t in targets]

    SetCriterion(config, matcher=Identity())(random_outputs(2, 6, 7, C, seed=42), two_posts())
    assert calls == [2]


def test_word_alignment_of_a_box_less_entity_stops_at_its_last_word(config):
    # Words 0 (box-less entity) and 1 (grounded entity in cell 3 of a 2x2 grid), word 2 padding:
    # only word 0 goes to "no patch" (column 4). Rows: words 0-2 and "no word" (row 3).
    targets = [make_targets([1, 0], [0, 1], [0, 1], [[0, 0, 0, 0], [0.75, 0.75, 0.1, 0.1]], [False, True])]
    out = random_outputs(1, 2, 3, C, seed=43)
    out["word_mask"][0, 2] = False
    logits = torch.randn(1, 4, 5, generator=torch.Generator().manual_seed(44))
    out["align_word_logits"] = logits
    _, parts = SetCriterion(align_config(config))(out, targets, [(torch.tensor([0, 1]), torch.tensor([0, 1]))])
    real = logits[0].clone()
    real[2] = float("-inf")  # the padding word is no candidate
    lse = torch.logsumexp
    rows = (lse(real[0], 0) - real[0, 4]) + (lse(real[1], 0) - real[1, 3])
    cols = sum(lse(real[:, c], 0) - real[3 if c < 3 else 1, c] for c in range(4))
    expected = (rows / 2 + cols / 4) / 2
    assert parts["loss_align_words"].item() == pytest.approx(expected.item(), rel=1e-5)
