"""The reference scorer (qgn.metrics), the prediction file format and ``qgn evaluate --pred``.

Worked examples are those of docs/evaluation.md ("Worked examples"), computed by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from qgn.data.records import Entity, Post, Prediction
from qgn.errors import DataError, QGNError
from qgn.metrics import box_iou_xyxy, read_predictions, score, write_predictions

SHARED = Path(__file__).resolve().parents[2] / "shared"
TYPES = ("PER", "LOC", "ORG", "OTHER")


def rows(report, metric):
    r = report[metric]
    return (r.tp, r.n_pred, r.n_gold)


def example_post() -> Post:
    """Section 4.5: gold A = [0, 2) PER with two boxes, gold B = [5, 6) ORG with no box."""
    a = Entity(0, 2, "PER", [(0, 0, 10, 10), (50, 50, 60, 60)])
    b = Entity(5, 6, "ORG")
    return Post("t1", ["w"] * 8, [a, b], image_size=(100, 100))


# ----------------------------------------------------------------------------- IoU
def test_box_iou_no_plus_one():
    assert box_iou_xyxy((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou_xyxy((51, 51, 61, 61), (50, 50, 60, 60)) == pytest.approx(81 / 119)
    assert box_iou_xyxy((0, 0, 10, 20), (0, 0, 10, 10)) == 0.5
    assert box_iou_xyxy((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # touching edges share no area
    assert box_iou_xyxy((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert box_iou_xyxy((5, 5, 5, 9), (0, 0, 10, 10)) == 0.0  # zero-area box


# ----------------------------------------------------------------------------- worked examples (4.5)
def test_example_1_all_correct():
    report = score([example_post()], {"t1": [Prediction(0, 2, "PER", (51, 51, 61, 61)), Prediction(5, 6, "ORG")]})
    for metric in ("GMNER", "MNER", "EEG"):
        assert rows(report, metric) == (2, 2, 2)
        assert (report[metric].precision, report[metric].recall, report[metric].f1) == (100.0, 100.0, 100.0)


def test_example_2_iou_exactly_half_counts_and_box_on_ungroundable_is_wrong():
    preds = {"t1": [Prediction(0, 2, "PER", (0, 0, 10, 20)), Prediction(5, 6, "ORG", (1, 1, 5, 5))]}
    report = score([example_post()], preds)
    assert rows(report, "GMNER") == (1, 2, 2)
    assert (report.gmner.precision, report.gmner.recall, report.gmner.f1) == (50.0, 50.0, 50.0)
    assert rows(report, "MNER") == (2, 2, 2)
    assert rows(report, "EEG") == (1, 2, 2)
    # The threshold is inclusive; above 0.5 the same box misses.
    assert score([example_post()], preds, iou_threshold=0.51).gmner.tp == 0


def test_default_iou_threshold_is_one_half():
    # IoU (0,0,10,10) vs (0,0,10,25) = 100/250 = 0.4: a miss at the default threshold of 0.5,
    # a hit only if the threshold is lowered explicitly.
    assert box_iou_xyxy((0, 0, 10, 25), (0, 0, 10, 10)) == pytest.approx(0.4)
    preds = {"t1": [Prediction(0, 2, "PER", (0, 0, 10, 25)), Prediction(5, 6, "ORG")]}
    report = score([example_post()], preds)
    assert rows(report, "GMNER") == (1, 2, 2) and rows(report, "EEG") == (1, 2, 2)
    assert rows(report, "MNER") == (2, 2, 2)
    assert score([example_post()], preds, iou_threshold=0.4).gmner.tp == 2


def test_example_3_wrong_type_right_box():
    report = score([example_post()], {"t1": [Prediction(0, 2, "ORG", (50, 50, 60, 60))]})
    assert rows(report, "GMNER") == (0, 1, 2)
    assert rows(report, "MNER") == (0, 1, 2)
    assert rows(report, "EEG") == (1, 1, 2)
    assert report.eeg.precision == 100.0 and report.eeg.recall == 50.0
    assert report.eeg.f1 == pytest.approx(200 / 3)
    assert report.gmner.f1 == 0.0
    # Per type: the prediction is an FP under ORG, the missed gold an FN under PER.
    per_type = report.per_type["GMNER"]
    assert (per_type["ORG"].tp, per_type["ORG"].n_pred, per_type["ORG"].n_gold) == (0, 1, 1)
    assert (per_type["PER"].tp, per_type["PER"].n_pred, per_type["PER"].n_gold) == (0, 0, 1)


def test_example_4_duplicate_prediction_is_a_false_positive():
    box = (0, 0, 10, 10)
    post = Post("t1", ["w"] * 8, [Entity(0, 2, "PER", [box])])
    report = score([post], {"t1": [Prediction(0, 2, "PER", box), Prediction(0, 2, "PER", box, score=0.1)]})
    for metric in ("GMNER", "MNER", "EEG"):
        assert rows(report, metric) == (1, 2, 1)
    assert report.gmner.precision == 50.0 and report.gmner.recall == 100.0
    # With the example's two golds (only A predicted, twice) P = R = 50 as in docs/evaluation.md.
    report = score([example_post()], {"t1": [Prediction(0, 2, "PER", box), Prediction(0, 2, "PER", box)]})
    assert rows(report, "GMNER") == (1, 2, 2)
    assert (report.gmner.precision, report.gmner.recall) == (50.0, 50.0)


def test_example_5_post_without_gold():
    empty = Post("e", ["nothing", "here"], [])
    report = score([empty], {"e": [Prediction(0, 1, "PER")]})
    assert rows(report, "GMNER") == (0, 1, 0)
    assert report.gmner.precision == 0.0 and report.gmner.recall == 0.0 and report.gmner.f1 == 0.0
    report = score([empty, example_post()], {"e": [], "t1": [Prediction(5, 6, "ORG")]})
    assert rows(report, "GMNER") == (1, 1, 2)
    assert report.n_posts == 2 and report.n_posts_without_predictions == 0


def test_no_box_for_grounded_entity_is_wrong_and_any_gold_box_suffices():
    report = score([example_post()], {"t1": [Prediction(0, 2, "PER", None)]})
    assert rows(report, "GMNER") == (0, 1, 2) and rows(report, "MNER") == (1, 1, 2)
    report = score([example_post()], {"t1": [Prediction(0, 2, "PER", (1, 1, 10, 10))]})  # first box
    assert report.gmner.tp == 1


def test_missing_posts_count_as_no_prediction():
    other = Post("t2", ["x", "y"], [Entity(0, 1, "LOC")])
    report = score([example_post(), other], {"t1": [Prediction(5, 6, "ORG")]})
    assert report.n_posts_without_predictions == 1
    assert rows(report, "GMNER") == (1, 1, 3)


def test_match_by_string_uses_surface_form():
    # "Paris" twice; gold is the second occurrence, the prediction the first.
    post = Post("s", ["Paris", "and", "Paris"], [Entity(2, 3, "LOC")])
    preds = {"s": [Prediction(0, 1, "LOC")]}
    assert score([post], preds).gmner.tp == 0
    assert score([post], preds, match_by="string").gmner.tp == 1


def test_string_matching_is_one_to_one_whatever_the_order():
    # Two golds share the string "Bo". p0's box fits both golds, p2's only the first. A greedy
    # match giving gold 0 to p0 would then leave p2 unmatched (1 TP); the maximum matching finds 2.
    box_a, box_c = (0, 0, 10, 10), (20, 20, 30, 30)
    gold = Post("s", ["Bo", "x", "Bo"], [Entity(0, 1, "PER", [box_a, box_c]), Entity(2, 3, "PER", [box_c])])
    p0, p1, p2 = Prediction(0, 1, "PER", box_c), Prediction(2, 3, "PER", box_c), Prediction(2, 3, "PER", box_a)
    for order in ([p0, p2], [p2, p0]):
        assert rows(score([gold], {"s": order}, match_by="string"), "GMNER") == (2, 2, 2)
    # Both predictions fit only gold 0: one TP, one FP.
    assert rows(score([gold], {"s": [p2, Prediction(0, 1, "PER", box_a)]}, match_by="string"), "GMNER") == (1, 2, 2)
    # Three predictions for two golds: at most 2 TP.
    assert rows(score([gold], {"s": [p0, p1, p2]}, match_by="string"), "GMNER") == (2, 3, 2)
    # By span, p2 sits on gold 1's span with gold 0's box: wrong.
    assert rows(score([gold], {"s": [p0, p2]}), "GMNER") == (1, 2, 2)


def test_to_dict_is_json_and_table_shows_counts():
    report = score([example_post()], {"t1": [Prediction(0, 2, "PER", (51, 51, 61, 61))]})
    data = json.loads(json.dumps(report.to_dict()))
    assert data["GMNER"] == {
        "precision": 100.0,
        "recall": 50.0,
        "f1": pytest.approx(200 / 3),
        "tp": 1,
        "n_pred": 1,
        "n_gold": 2,
    }
    assert data["per_type"]["MNER"]["ORG"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "tp": 0,
        "n_pred": 0,
        "n_gold": 1,
    }
    assert "fmnerg" not in data and data["n_posts"] == 1
    table = report.format_table()
    assert "#pred" in table and "#gold" in table
    gmner_line = next(line for line in table.splitlines() if line.startswith("GMNER "))
    assert gmner_line.split() == ["GMNER", "100.00", "50.00", "66.67", "1", "1", "2"]


# ----------------------------------------------------------------------------- FMNERG
FINE_TO_COARSE = {
    "athlete": "person",
    "actor": "person",
    "city": "location",
    "country": "location",
    "band": "organization",
}


def test_fmnerg_per_category():
    post = Post(
        "f",
        ["w"] * 6,
        [
            Entity(0, 1, "athlete", [(0, 0, 10, 10)], coarse_type="person"),
            Entity(2, 3, "city", coarse_type="location"),
            Entity(4, 5, "actor", coarse_type="person"),
        ],
    )
    preds = {
        "f": [
            Prediction(0, 1, "city", (0, 0, 10, 10)),  # wrong category: FP location, FN person
            Prediction(2, 3, "country"),  # right category, wrong fine type: FP and FN in location
            Prediction(4, 5, "actor"),  # correct
        ]
    }
    report = score([post], preds, fine_to_coarse=FINE_TO_COARSE)
    coarse = report.fmnerg_coarse
    assert list(coarse) == ["person", "location", "organization"]
    assert (coarse["person"].tp, coarse["person"].n_pred, coarse["person"].n_gold) == (1, 1, 2)
    assert (coarse["location"].tp, coarse["location"].n_pred, coarse["location"].n_gold) == (0, 2, 1)
    assert (coarse["organization"].n_pred, coarse["organization"].n_gold, coarse["organization"].f1) == (0, 0, 0.0)
    assert coarse["person"].f1 == pytest.approx(200 / 3)
    assert rows(report, "GMNER") == (1, 3, 3)
    fine = report.fmnerg_fine
    assert (fine["city"].tp, fine["city"].n_pred, fine["city"].n_gold) == (0, 1, 1)
    assert (fine["athlete"].n_pred, fine["athlete"].n_gold) == (0, 1)
    data = report.to_dict()["fmnerg"]
    assert data["All"]["tp"] == 1 and data["coarse"]["location"]["n_pred"] == 2
    assert "FMNERG GMNER per category" in report.format_table(per_type=False)
    with pytest.raises(DataError, match="fine type 'mayor' has no coarse category"):
        score([post], {"f": [Prediction(0, 1, "mayor")]}, fine_to_coarse=FINE_TO_COARSE, entity_types={"mayor"})


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "pred, message",
    [
        (Prediction(0, 9, "PER"), r"post 't1', entity 0: span \[0, 9\) is out of range of the post's 8 tokens"),
        (Prediction(3, 3, "PER"), r"span \[3, 3\) is empty or reversed"),
        (Prediction(-1, 2, "PER"), "'start' must be >= 0"),
        (Prediction(0, 2, "PER", (1, 2, 3)), "'box' must be 4 finite numbers"),
        (Prediction(0, 2, "PER", (5, 0, 4, 10)), "x2 < x1 or y2 < y1"),
        (Prediction(0, 2, "PER", (0, 0, float("nan"), 10)), "'box' must be 4 finite numbers"),
        (Prediction(0, 2, "MISC"), "unknown type 'MISC'"),
    ],
)
def test_malformed_predictions_raise(pred, message):
    with pytest.raises(DataError, match=message):
        score([example_post()], {"t1": [pred]}, entity_types=TYPES)


def test_bad_ids_and_settings_raise():
    with pytest.raises(DataError, match=r"predictions for 1 post id\(s\) not in the gold set: 'nope'"):
        score([example_post()], {"nope": []})
    with pytest.raises(DataError, match="duplicate post id 't1'"):
        score([example_post(), example_post()], {})
    with pytest.raises(QGNError, match="iou_threshold"):
        score([example_post()], {}, iou_threshold=1.5)
    with pytest.raises(QGNError, match="match_by"):
        score([example_post()], {}, match_by="chars")


# ----------------------------------------------------------------------------- prediction file
def test_prediction_file_round_trip(tmp_path):
    preds = {"t1": [Prediction(0, 2, "PER", (51.0, 51.0, 61.0, 61.0), score=0.9), Prediction(5, 6, "ORG")], "t2": []}
    path = tmp_path / "sub" / "pred.jsonl"
    write_predictions(preds, path)
    back = read_predictions(path)
    assert dict(back) == preds and back.lines == {"t1": 1, "t2": 2}
    # Numeric ids, extra keys (as written by `qgn predict`) and blank lines are accepted.
    path.write_text(
        '\n{"id": 71044, "entities": [{"start": 0, "end": 1, "type": "PER", "box": null, '
        '"text": "Anna", "score": null}]}\n\n',
        encoding="utf-8",
    )
    assert read_predictions(path) == {"71044": [Prediction(0, 1, "PER", None, None)]}


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not valid JSON"),
        ('["t1"]', "each line must be an object"),
        ('{"entities": []}', "missing key 'id'"),
        ('{"id": "t1"}', "missing key 'entities'"),
        ('{"id": true, "entities": []}', "'id' must be a non-empty string"),
        ('{"id": "t1", "entities": {}}', "'entities' must be a list"),
        ('{"id": "t1", "entities": [{"start": 0, "end": 1, "type": "PER"}]}', r"entity 0: missing key\(s\) box"),
        (
            '{"id": "t1", "entities": [{"start": "0", "end": 1, "type": "PER", "box": null}]}',
            "'start' must be an integer",
        ),
        (
            '{"id": "t1", "entities": [{"start": 0, "end": 1.5, "type": "PER", "box": null}]}',
            "'end' must be an integer",
        ),
        ('{"id": "t1", "entities": [{"start": 0, "end": 1, "type": 3, "box": null}]}', "'type' must be a non-empty"),
        ('{"id": "t1", "entities": [{"start": 0, "end": 1, "type": "PER", "box": [1, 2, 3]}]}', "'box' must be 4"),
        ('{"id": "t1", "entities": [{"start": 0, "end": 1, "type": "PER", "box": [3, 0, 1, 1]}]}', "x2 < x1"),
        ('{"id": "t1", "entities": [{"start": 2, "end": 1, "type": "PER", "box": null}]}', "empty or reversed"),
    ],
)
def test_prediction_file_errors_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "pred.jsonl"
    path.write_text('{"id": "ok", "entities": []}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=message) as err:
        read_predictions(path)
    assert str(err.value).startswith(f"{path}:2: ")


def test_prediction_file_duplicate_id_and_score_time_errors_name_the_line(tmp_path):
    path = tmp_path / "pred.jsonl"
    path.write_text('{"id": "t1", "entities": []}\n{"id": "t1", "entities": []}\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}:2: duplicate id 't1' \(first on line 1\)"):
        read_predictions(path)
    # Range and id checks need the gold posts, so they happen in score(), still naming the line.
    path.write_text('{"id": "t1", "entities": []}\n{"id": "zz", "entities": []}\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}:2: predictions for 1 post id"):
        score([example_post()], read_predictions(path))
    path.write_text('{"id": "t1", "entities": [{"start": 7, "end": 12, "type": "PER", "box": null}]}\n')
    with pytest.raises(DataError, match=rf"^{path}:1: post 't1', entity 0: span \[7, 12\) is out of range"):
        score([example_post()], read_predictions(path))
    with pytest.raises(DataError, match="prediction file not found"):
        read_predictions(tmp_path / "absent.jsonl")


# ----------------------------------------------------------------------------- properties
@st.composite
def gold_posts(draw, max_posts: int = 4) -> list[Post]:
    """Random posts: tokens from a 3-word vocabulary (so strings repeat), flat spans, 0-3 boxes."""
    posts = []
    for index in range(draw(st.integers(0, max_posts))):
        n_tokens = draw(st.integers(1, 10))
        width, height = draw(st.integers(2, 300)), draw(st.integers(2, 300))
        cuts = sorted(draw(st.sets(st.integers(0, n_tokens), max_size=8)))
        entities = []
        for start, end in zip(cuts, cuts[1:]):
            if not draw(st.booleans()):
                continue
            boxes = []
            for _ in range(draw(st.integers(0, 3))):
                x1, y1 = draw(st.integers(0, width - 1)), draw(st.integers(0, height - 1))
                boxes.append((x1, y1, draw(st.integers(x1 + 1, width)), draw(st.integers(y1 + 1, height))))
            entities.append(Entity(start, end, draw(st.sampled_from(TYPES)), boxes))
        tokens = draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=n_tokens, max_size=n_tokens))
        posts.append(Post(f"p{index}", tokens, entities, image_size=(width, height)))
    return posts


@st.composite
def posts_and_predictions(draw) -> tuple[list[Post], dict[str, list[Prediction]]]:
    """Gold posts and arbitrary valid predictions: perturbed copies of golds plus random triples."""
    posts = draw(gold_posts())
    predictions = {}
    for post in posts:
        if not draw(st.booleans()) and post.entities:
            continue  # some posts absent from the predictions
        preds = []
        for entity in post.entities:
            for _ in range(draw(st.integers(0, 2))):
                box = draw(st.sampled_from([None, *entity.boxes, (0, 0, 1, 1)]))
                type_ = entity.type if draw(st.booleans()) else draw(st.sampled_from(TYPES))
                preds.append(Prediction(entity.start, entity.end, type_, box))
        n_tokens = len(post.tokens)
        for _ in range(draw(st.integers(0, 3))):
            start = draw(st.integers(0, n_tokens - 1))
            end = draw(st.integers(start + 1, n_tokens))
            box = draw(st.one_of(st.none(), st.tuples(*[st.floats(0, 50)] * 2).map(lambda p: (*p, p[0] + 5, p[1] + 7))))
            preds.append(Prediction(start, end, draw(st.sampled_from(TYPES)), box))
        predictions[post.id] = preds
    return posts, predictions


PROPERTY_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(gold_posts(), st.sampled_from(["span", "string"]))
def test_gold_against_itself_is_perfect(posts, match_by):
    predictions = {
        post.id: [Prediction(e.start, e.end, e.type, e.boxes[0] if e.boxes else None) for e in post.entities]
        for post in posts
    }
    report = score(posts, predictions, match_by=match_by)
    n_gold = sum(len(post.entities) for post in posts)
    for metric in ("GMNER", "MNER", "EEG"):
        assert rows(report, metric) == (n_gold, n_gold, n_gold)
        expected = 100.0 if n_gold else 0.0
        assert (report[metric].precision, report[metric].recall, report[metric].f1) == (expected,) * 3


@PROPERTY_SETTINGS
@given(posts_and_predictions(), st.sampled_from(["span", "string"]), st.randoms(use_true_random=False))
def test_scores_are_bounded_and_order_free(data, match_by, rng):
    posts, predictions = data
    report = score(posts, predictions, match_by=match_by, entity_types=TYPES)
    for metric in ("GMNER", "MNER", "EEG"):
        row = report[metric]
        assert row.tp <= row.n_pred and row.tp <= row.n_gold
        assert all(0.0 <= v <= 100.0 for v in (row.precision, row.recall, row.f1))
    assert report.gmner.tp <= min(report.mner.tp, report.eeg.tp)
    shuffled = {}
    for post_id in rng.sample(list(predictions), len(predictions)):
        shuffled[post_id] = rng.sample(predictions[post_id], len(predictions[post_id]))
    assert score(list(reversed(posts)), shuffled, match_by=match_by).to_dict() == report.to_dict()


# ----------------------------------------------------------------------------- CLI
def _xml(width: int, height: int, objects: list[tuple[str, tuple[int, int, int, int]]]) -> str:
    body = "".join(
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for name, b in objects
    )
    return (
        f"<annotation><folder>x</folder><filename>x.jpg</filename><size><width>{width}</width>"
        f"<height>{height}</height><depth>3</depth></size><segmented>0</segmented>{body}</annotation>"
    )


def write_tiny_dataset(root: Path) -> Path:
    """Three test posts in the Twitter-GMNER layout: 4 gold entities, 3 boxes, one post without xml."""
    (root / "txt").mkdir(parents=True)
    (root / "xml").mkdir()
    blocks = [
        ("71044", [("Anna", "B-PER"), ("met", "O"), ("Bob", "B-PER"), ("in", "O"), ("Paris", "B-LOC")]),
        ("O_5", [("Blue", "B-ORG"), ("Comets", "I-ORG"), ("win", "O")]),
        ("17_06_1", [("nothing", "O"), ("here", "O")]),
    ]
    text = "".join(f"IMGID:{pid}\n" + "".join(f"{tok}\t{tag}\n" for tok, tag in rows_) + "\n" for pid, rows_ in blocks)
    (root / "txt" / "test.txt").write_text(text, encoding="utf-8")
    (root / "xml" / "71044.xml").write_text(_xml(100, 100, [("Anna", (10, 10, 50, 50))]), encoding="utf-8")
    (root / "xml" / "O_5.xml").write_text(
        _xml(200, 100, [("Blue Comets", (0, 0, 20, 20)), ("Blue Comets", (100, 0, 140, 40))]), encoding="utf-8"
    )
    return root


def test_cli_evaluate_pred_json(tmp_path, capsys, caplog):
    from qgn.cli import main

    data = write_tiny_dataset(tmp_path / "data")
    pred = tmp_path / "pred.jsonl"
    write_predictions(
        {
            "71044": [
                Prediction(0, 1, "PER", (10, 10, 50, 55)),
                Prediction(2, 3, "PER"),
                Prediction(4, 5, "LOC", (0, 0, 5, 5)),
            ],  # right span and type, box on an ungroundable
            "17_06_1": [],
        },
        pred,
    )  # O_5 absent: its gold counts as missed
    assert main(["evaluate", "--data", str(data), "--split", "test", "--pred", str(pred), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {k: out[k]["tp"] for k in ("GMNER", "MNER", "EEG")} == {"GMNER": 2, "MNER": 3, "EEG": 2}
    assert out["GMNER"]["n_pred"] == 3 and out["GMNER"]["n_gold"] == 4
    assert out["GMNER"]["precision"] == pytest.approx(200 / 3) and out["GMNER"]["recall"] == 50.0
    assert out["per_type"]["MNER"]["ORG"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "tp": 0,
        "n_pred": 0,
        "n_gold": 1,
    }
    assert out["n_posts"] == 3 and out["n_posts_without_predictions"] == 1
    assert "1 of 3 gold posts have no entry" in caplog.text

    assert main(["evaluate", "--data", str(data), "--pred", str(pred), "--per-type"]) == 0
    table = capsys.readouterr().out
    assert "GMNER per type" in table and "MNER per type" in table


def test_cli_evaluate_default_iou_is_one_half(tmp_path, capsys):
    from qgn.cli import main

    data = write_tiny_dataset(tmp_path / "data")
    pred = tmp_path / "pred.jsonl"
    # IoU with the gold box (0, 0, 20, 20) is 400 / 1000 = 0.4
    write_predictions({"O_5": [Prediction(0, 2, "ORG", (0, 0, 20, 50))]}, pred)
    assert main(["evaluate", "--data", str(data), "--pred", str(pred), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["GMNER"]["tp"] == 0
    assert main(["evaluate", "--data", str(data), "--pred", str(pred), "--json", "--iou-threshold", "0.4"]) == 0
    assert json.loads(capsys.readouterr().out)["GMNER"]["tp"] == 1


def test_cli_evaluate_errors(tmp_path, capsys):
    from qgn.cli import main

    with pytest.raises(SystemExit):  # neither --pred nor --checkpoint
        main(["evaluate", "--data", str(tmp_path)])
    # a folder without config.json is not a checkpoint: one clear line, exit code 2
    assert main(["evaluate", "--data", str(tmp_path), "--checkpoint", str(tmp_path)]) == 2
    assert "is not a QGN checkpoint" in capsys.readouterr().err
    data = write_tiny_dataset(tmp_path / "data")
    pred = tmp_path / "pred.jsonl"
    pred.write_text('{"id": "71044", "entities": [{"start": 0, "end": 1, "type": "MISC", "box": null}]}\n')
    assert main(["evaluate", "--data", str(data), "--pred", str(pred)]) == 2
    assert f"{pred}:1: post '71044', entity 0: unknown type 'MISC'" in capsys.readouterr().err


def test_real_test_split_text_only_baseline(tmp_path):
    """v2.0 test with gold spans and types but never a box: GMNER = EEG = ungroundable share."""
    root = SHARED / "datasets" / "twitter-gmner" / "Twitter10000_v2.0"
    if not root.is_dir():
        pytest.skip(f"Twitter-GMNER v2.0 not found at {root}")
    from qgn.data import read_dataset

    posts = read_dataset(str(root), split="test")
    baseline = {p.id: [Prediction(e.start, e.end, e.type, None) for e in p.entities] for p in posts}
    report = score(posts, baseline)
    assert rows(report, "MNER") == (2543, 2543, 2543)
    assert rows(report, "GMNER") == (1497, 2543, 2543)  # 1,497 ungroundable test entities (docs/data.md)
    assert rows(report, "EEG") == (1497, 2543, 2543)
    perfect = {
        p.id: [Prediction(e.start, e.end, e.type, e.boxes[0] if e.boxes else None) for e in p.entities] for p in posts
    }
    write_predictions(perfect, tmp_path / "gold.jsonl")
    assert score(posts, read_predictions(tmp_path / "gold.jsonl")).gmner.f1 == 100.0


# ----------------------------------------------------------------------------- breakdown, bounds, tables
def breakdown_posts():
    """Two posts with one gold entity in each breakdown category, counted by hand."""
    a = Post(
        "a",
        ["w"] * 10,
        [
            Entity(0, 1, "PER", [(0, 0, 10, 10)]),  # correct
            Entity(1, 2, "LOC"),  # missed
            Entity(2, 3, "ORG", [(0, 0, 10, 10)]),  # wrong type
            Entity(3, 4, "PER", [(0, 0, 10, 10)]),
        ],  # grounded, no box
        image_size=(100, 100),
    )
    b = Post(
        "b",
        ["w"] * 10,
        [
            Entity(0, 2, "PER", [(50, 50, 60, 60)]),  # grounded, IoU < 0.5
            Entity(4, 5, "OTHER"),  # box-less, with a box
            Entity(6, 7, "LOC"),
        ],  # correct (none)
        image_size=(100, 100),
    )
    preds = {
        "a": [
            Prediction(0, 1, "PER", (1, 1, 10, 10)),
            Prediction(2, 3, "PER", (0, 0, 10, 10)),
            Prediction(3, 4, "PER"),
            Prediction(8, 9, "LOC"),
        ],  # the last: spurious
        "b": [
            Prediction(0, 2, "PER", (50, 50, 58, 70)),
            Prediction(4, 5, "OTHER", (0, 0, 5, 5)),
            Prediction(6, 7, "LOC"),
            Prediction(7, 9, "ORG"),
            Prediction(7, 9, "ORG"),
        ],
    }  # 2 spurious
    return [a, b], preds


def test_breakdown_counts_and_shares_by_hand():
    posts, preds = breakdown_posts()
    report = score(posts, preds)
    expected = {
        "correct": 2,
        "missed": 1,
        "wrong_type": 1,
        "grounded_without_box": 1,
        "grounded_wrong_box": 1,
        "boxless_with_box": 1,
        "spurious": 3,
    }
    assert report.breakdown == expected
    assert rows(report, "GMNER") == (2, 9, 7)
    shares = report.breakdown_rows()
    assert shares["missed"] == {"count": 1, "share": pytest.approx(100 / 7)}
    assert shares["spurious"] == {"count": 3, "share": pytest.approx(100 * 3 / 9)}
    assert report.to_dict()["breakdown"] == shares
    # the gold categories partition the gold entities
    assert sum(v for k, v in expected.items() if k != "spurious") == report.gmner.n_gold
    # order-free and per-post additive
    alone = [score([p], {p.id: preds[p.id]}).breakdown for p in posts]
    assert {k: alone[0][k] + alone[1][k] for k in expected} == expected
    # no predictions at all: every gold entity is missed, shares of an empty #pred are 0
    nothing = score(posts, {})
    assert nothing.breakdown == {**{k: 0 for k in expected}, "missed": 7}
    assert nothing.breakdown_rows()["spurious"] == {"count": 0, "share": 0.0}


def test_breakdown_with_string_matching_and_a_threshold():
    posts, preds = breakdown_posts()
    # at IoU 0.3 the IoU-0.4 box counts: grounded_wrong_box becomes correct
    # ((50,50,58,70) vs (50,50,60,60): 80 / 200 = 0.4)
    assert score(posts, preds, iou_threshold=0.3).breakdown["grounded_wrong_box"] == 0
    assert score(posts, preds, iou_threshold=0.3).breakdown["correct"] == 3
    named = [Post("s", ["Blue", "Comets", "and", "Blue", "Comets"], [Entity(0, 2, "ORG")])]
    by_string = score(named, {"s": [Prediction(3, 5, "ORG")]}, match_by="string")
    assert by_string.breakdown["correct"] == 1 and by_string.breakdown["spurious"] == 0
    by_span = score(named, {"s": [Prediction(3, 5, "ORG")]})
    assert by_span.breakdown["missed"] == 1 and by_span.breakdown["spurious"] == 1


@pytest.mark.parametrize("threshold, ok", [(0.0, True), (1.0, True), (-0.01, False), (1.01, False)])
def test_iou_threshold_bounds_are_inclusive(threshold, ok):
    if ok:
        assert score([example_post()], {}, iou_threshold=threshold).iou_threshold == threshold
    else:
        with pytest.raises(QGNError, match=r"iou_threshold must be in \[0, 1\]"):
            score([example_post()], {}, iou_threshold=threshold)


def test_unknown_prediction_ids_are_listed_up_to_five():
    gold = [example_post()]
    with pytest.raises(DataError) as err:
        score(gold, {f"x{i}": [] for i in range(5)})
    assert str(err.value) == "predictions for 5 post id(s) not in the gold set: 'x0', 'x1', 'x2', 'x3', 'x4'"
    with pytest.raises(DataError) as err:
        score(gold, {f"x{i}": [] for i in range(6)})
    assert str(err.value) == "predictions for 6 post id(s) not in the gold set: 'x0', 'x1', 'x2', 'x3', 'x4' ..."


def test_fmnerg_coarse_counts_sum_over_posts_and_use_the_map():
    fine_to_coarse = {"city": "location", "athlete": "person", "country": "location"}
    posts = [
        Post("p1", ["w"] * 4, [Entity(0, 1, "city"), Entity(1, 2, "athlete")]),
        Post("p2", ["w"] * 4, [Entity(0, 1, "country"), Entity(2, 3, "city")]),
    ]
    preds = {
        "p1": [Prediction(0, 1, "city"), Prediction(1, 2, "athlete")],
        "p2": [Prediction(0, 1, "country"), Prediction(2, 3, "athlete")],
    }
    report = score(posts, preds, fine_to_coarse=fine_to_coarse)
    loc, per = report.fmnerg_coarse["location"], report.fmnerg_coarse["person"]
    assert (loc.tp, loc.n_gold) == (2, 3) and (per.tp, per.n_gold) == (1, 1)
    assert (report.fmnerg_fine["city"].tp, report.fmnerg_fine["city"].n_gold) == (1, 2)
    with pytest.raises(DataError, match="post 'q': gold fine type 'mayor' has no coarse category"):
        score([Post("q", ["w"], [Entity(0, 1, "mayor")])], {}, fine_to_coarse=fine_to_coarse)


def test_table_layout_exactly():
    posts, preds = breakdown_posts()
    table = score(posts, preds).format_table(per_type=False)
    expected = "\n".join(
        [
            "2 posts (0 without predictions), IoU >= 0.5, matched by span, micro-averaged",
            "metric       P       R      F1      TP   #pred   #gold",
            "GMNER    22.22   28.57   25.00       2       9       7",
            "MNER     55.56   71.43   62.50       5       9       7",
            "EEG      33.33   42.86   37.50       3       9       7",
            "",
            "where GMNER is lost                        count    share",
            "correct (span, type and region)                2   28.57% of #gold",
            "missed: no prediction with the span            1   14.29% of #gold",
            "found with the wrong type                      1   14.29% of #gold",
            "grounded entity predicted without a box        1   14.29% of #gold",
            "grounded entity, box IoU below threshold       1   14.29% of #gold",
            "box-less entity predicted with a box           1   14.29% of #gold",
            "spurious: span of no gold entity               3   33.33% of #pred",
        ]
    )
    assert table == expected
    per_type = "\n".join(
        [
            "",
            "GMNER per type       P       R      F1      TP   #pred   #gold",
            "LOC              50.00   50.00   50.00       1       2       2",
            "ORG               0.00    0.00    0.00       0       2       1",
            "OTHER             0.00    0.00    0.00       0       1       1",
            "PER              25.00   33.33   28.57       1       4       3",
            "(macro F1 over these types: 19.64; not the headline)",
            "",
            "MNER per type       P       R      F1      TP   #pred   #gold",
            "LOC             50.00   50.00   50.00       1       2       2",
            "ORG              0.00    0.00    0.00       0       2       1",
            "OTHER          100.00  100.00  100.00       1       1       1",
            "PER             75.00  100.00   85.71       3       4       3",
            "(macro F1 over these types: 58.93; not the headline)",
        ]
    )
    assert score(posts, preds).format_table() == expected + "\n" + per_type
    assert score(posts, preds).macro_f1("MNER") == pytest.approx((50 + 0 + 100 + 600 / 7) / 4)


def test_box_edge_cases_and_score_fields(tmp_path):
    # zero-area boxes are well formed (they just never hit); only reversed corners are refused
    for box in ((5, 0, 5, 10), (0, 5, 10, 5)):
        assert score([example_post()], {"t1": [Prediction(0, 2, "PER", box)]}).gmner.tp == 0
    for box in ((5, 0, 4, 10), (0, 5, 10, 4)):
        with pytest.raises(DataError, match="x2 < x1 or y2 < y1"):
            score([example_post()], {"t1": [Prediction(0, 2, "PER", box)]})
    # IoU: overlapping on one axis and touching on the other is no overlap
    assert box_iou_xyxy((0, 0, 10, 10), (5, 10, 15, 20)) == 0.0
    assert box_iou_xyxy((0, 0, 10, 10), (10, 5, 20, 8)) == 0.0
    assert box_iou_xyxy((0, 0, 10, 10), (5, 5, 15, 15)) == pytest.approx(25 / 175)
    path = tmp_path / "p.jsonl"
    for bad in ('"0.9"', "true", '"nan"'):
        path.write_text(
            '{"id": "t1", "entities": [{"start": 0, "end": 1, "type": "PER", "box": null, "score": ' + bad + "}]}\n"
        )
        with pytest.raises(DataError, match=r"p.jsonl:1: post 't1', entity 0: 'score' must be a number or null"):
            read_predictions(path)
    path.write_text('{"id": "t1", "entities": [{"start": 0, "type": "PER"}]}\n')
    with pytest.raises(DataError, match=r"entity 0: missing key\(s\) end, box \(box may be null, not absent\)"):
        read_predictions(path)


def test_written_prediction_files_are_utf8_and_make_their_folders(tmp_path):
    path = tmp_path / "a" / "b" / "pred.jsonl"
    write_predictions({"café": [Prediction(0, 1, "PER", (0.0, 0.0, 1.0, 1.0), 0.5)]}, path)
    raw = path.read_bytes()
    assert "café".encode() in raw  # written as UTF-8, not \\u escapes
    assert read_predictions(path) == {"café": [Prediction(0, 1, "PER", (0.0, 0.0, 1.0, 1.0), 0.5)]}


def test_string_matching_with_shared_strings_and_nothing_right():
    named = Post("s", ["Blue", "Comets", "v", "Blue", "Comets"], [Entity(0, 2, "ORG"), Entity(3, 5, "ORG")])
    # two golds share a string; two predictions of the string with the wrong type: 0 matched
    assert score([named], {"s": [Prediction(0, 2, "PER"), Prediction(3, 5, "PER")]}, match_by="string").mner.tp == 0
    # one prediction for the shared string matches one of the two golds, not both
    assert score([named], {"s": [Prediction(3, 5, "ORG")]}, match_by="string").mner.tp == 1
    assert score([named], {"s": [Prediction(3, 5, "ORG"), Prediction(0, 2, "ORG")]}, match_by="string").mner.tp == 2
    # a gold without predictions and predictions without gold: nothing matched
    assert score([named], {"s": [Prediction(2, 3, "ORG")]}, match_by="string").mner.tp == 0


def test_report_dict_carries_settings_fine_rows_and_macro_f1():
    posts, preds = breakdown_posts()
    data = score(posts, preds, iou_threshold=0.4, match_by="string").to_dict()
    assert (data["iou_threshold"], data["match_by"], data["n_posts"]) == (0.4, "string", 2)
    assert score(posts, preds).to_dict()["macro_f1"]["MNER"] == pytest.approx((50 + 0 + 100 + 600 / 7) / 4)
    fine = score(
        [Post("f", ["w"], [Entity(0, 1, "city")])],
        {"f": [Prediction(0, 1, "city")]},
        fine_to_coarse={"city": "location"},
    ).to_dict()["fmnerg"]
    assert fine["fine"]["city"]["tp"] == 1 and fine["coarse"]["location"]["tp"] == 1
    assert score([example_post()], {}).macro_f1("GMNER") == 0.0


def test_breakdown_counts_several_of_a_kind_in_one_post_and_degenerate_boxes():
    post = Post(
        "m",
        ["w"] * 8,
        [
            Entity(0, 1, "PER", [(0, 0, 10, 10)]),
            Entity(1, 2, "PER", [(0, 0, 10, 10)]),
            Entity(2, 3, "LOC"),
            Entity(3, 4, "LOC"),
            Entity(4, 5, "ORG", [(0, 0, 10, 10)]),
            Entity(5, 6, "ORG", [(0, 0, 10, 10)]),
            Entity(6, 7, "OTHER", [(0, 0, 10, 10)]),
            Entity(7, 8, "OTHER", [(0, 0, 10, 10)]),
        ],
        image_size=(100, 100),
    )
    preds = {
        "m": [
            Prediction(0, 1, "LOC"),
            Prediction(1, 2, "LOC"),  # wrong type x2
            Prediction(2, 3, "LOC", (0, 0, 5, 5)),
            Prediction(3, 4, "LOC", (0, 0, 5, 5)),  # box-less, box x2
            Prediction(4, 5, "ORG"),
            Prediction(5, 6, "ORG"),  # no box x2
            Prediction(6, 7, "OTHER", (50, 50, 60, 60)),
            Prediction(7, 8, "OTHER", (50, 50, 60, 60)),
        ]
    }
    assert score([post], preds).breakdown == {
        "correct": 0,
        "missed": 0,
        "wrong_type": 2,
        "boxless_with_box": 2,
        "grounded_without_box": 2,
        "grounded_wrong_box": 2,
        "spurious": 0,
    }
    # two identical zero-width (or zero-height) boxes: IoU 0, not a division by zero
    assert box_iou_xyxy((5, 0, 5, 10), (5, 0, 5, 10)) == 0.0
    assert box_iou_xyxy((0, 5, 10, 5), (0, 5, 10, 5)) == 0.0
    # nothing in gold or predictions: no per-type rows, macro F1 0
    assert score([Post("e", ["w"], [])], {}).macro_f1("GMNER") == 0.0


def test_string_matching_with_no_right_region_among_shared_strings():
    named = Post(
        "s",
        ["Blue", "Comets", "v", "Blue", "Comets"],
        [Entity(0, 2, "ORG", [(0, 0, 10, 10)]), Entity(3, 5, "ORG", [(20, 20, 30, 30)])],
        image_size=(99, 99),
    )
    wrong = {"s": [Prediction(0, 2, "ORG", (60, 60, 70, 70)), Prediction(3, 5, "ORG", (80, 80, 90, 90))]}
    report = score([named], wrong, match_by="string")
    assert (report.gmner.tp, report.mner.tp) == (0, 2)


def test_fmnerg_table_layout_exactly():
    fine_to_coarse = {"city": "location", "athlete": "person"}
    posts = [Post("p", ["w"] * 3, [Entity(0, 1, "city"), Entity(1, 2, "athlete")])]
    report = score(posts, {"p": [Prediction(0, 1, "city"), Prediction(1, 2, "city")]}, fine_to_coarse=fine_to_coarse)
    table = report.format_table(per_type=False).split("\n")
    start = table.index("") + 1 + table[table.index("") + 1 :].index("")  # the block after the breakdown
    assert table[start + 1 :] == [
        "FMNERG GMNER per category       P       R      F1      TP   #pred   #gold",
        "location                    50.00  100.00   66.67       1       2       1",
        "person                       0.00    0.00    0.00       0       0       1",
        "All                         50.00   50.00   50.00       1       2       2",
    ]
    full = report.format_table().split("\n")
    fine = full[full.index("FMNERG GMNER per fine type       P       R      F1      TP   #pred   #gold") :]
    assert fine == [
        "FMNERG GMNER per fine type       P       R      F1      TP   #pred   #gold",
        "athlete                       0.00    0.00    0.00       0       0       1",
        "city                         50.00  100.00   66.67       1       2       1",
    ]
    assert full[full.index(fine[0]) - 1] == ""


def test_prediction_file_messages_in_full(tmp_path):
    path = tmp_path / "pred.jsonl"
    cases = [
        ('["t1"]', 'each line must be an object {"id": ..., "entities": [...]}'),
        ('{"id": "t1", "entities": [5]}', "post 't1', entity 0: expected an object {start, end, type, box}, got 5"),
        (
            '{"id": "t1", "entities": [{"start": 0, "end": 1, "type": "PER", "box": 5}]}',
            "'box' must be 4 finite numbers [x1, y1, x2, y2] or null, got 5",
        ),
        (
            '{"id": "t1", "entities": [{"start": 0, "end": 1, "type": "PER", "box": null, "score": [1]}]}',
            "'score' must be a number or null, got [1]",
        ),
    ]
    for line, message in cases:
        path.write_text(line + "\n")
        with pytest.raises(DataError) as err:
            read_predictions(path)
        assert str(err.value).startswith(f"{path}:1: ") and str(err.value).endswith(message), str(err.value)


def test_defaults_of_the_report_helpers():
    from qgn.metrics.report import format_report

    posts, preds = breakdown_posts()
    report = score(posts, preds)
    assert format_report(report) == report.format_table(per_type=True)  # per-type rows by default
    assert report.macro_f1() == report.macro_f1("GMNER") == pytest.approx((50 + 0 + 0 + 200 / 7) / 4)
    fine = score(
        [Post("f", ["w"], [Entity(0, 1, "city")])],
        {"f": [Prediction(0, 1, "city")]},
        fine_to_coarse={"city": "location"},
    )
    assert fine.format_table().startswith("1 posts (0 without predictions)")  # the fine rows are appended
    # with FMNERG types and no explicit inventory, the map's types are the known ones
    with pytest.raises(DataError, match=r"post 'f', entity 0: unknown type 'mayor' \(known: city\)"):
        score(
            [Post("f", ["w"], [Entity(0, 1, "city")])],
            {"f": [Prediction(0, 1, "mayor")]},
            fine_to_coarse={"city": "location"},
        )


def test_breakdown_with_string_matching_counts_one_correct_per_true_positive():
    """Two gold "Apple" ORG entities and one right prediction: TP 1, and the breakdown says 1 correct
    (the other gold has no prediction left to it), not 2."""
    post = Post("s", ["Apple", "and", "Apple"], [Entity(0, 1, "ORG"), Entity(2, 3, "ORG")])
    report = score([post], {"s": [Prediction(2, 3, "ORG")]}, match_by="string")
    assert report.gmner.tp == report.mner.tp == 1
    assert report.breakdown == {
        "correct": 1,
        "missed": 1,
        "wrong_type": 0,
        "grounded_without_box": 0,
        "grounded_wrong_box": 0,
        "boxless_with_box": 0,
        "spurious": 0,
    }
    # one right and one of another type: the second gold is found with the wrong type
    other = score([post], {"s": [Prediction(2, 3, "ORG"), Prediction(0, 1, "PER")]}, match_by="string")
    assert (other.breakdown["correct"], other.breakdown["wrong_type"], other.breakdown["missed"]) == (1, 1, 0)
    # two predictions of the string, one with a wrong box: one correct, one grounded with the wrong box
    boxed = Post(
        "b",
        ["Apple", "and", "Apple"],
        [Entity(0, 1, "ORG", [(0, 0, 10, 10)]), Entity(2, 3, "ORG", [(50, 50, 60, 60)])],
        image_size=(99, 99),
    )
    found = score(
        [boxed],
        {"b": [Prediction(0, 1, "ORG", (50, 50, 60, 60)), Prediction(0, 1, "ORG", (80, 80, 90, 90))]},
        match_by="string",
    )
    assert (found.gmner.tp, found.mner.tp) == (1, 2)
    assert (found.breakdown["correct"], found.breakdown["grounded_wrong_box"]) == (1, 1)


def _breakdown_sums(report):
    b, gold = report.breakdown, [k for k in report.breakdown if k != "spurious"]
    region = b["boxless_with_box"] + b["grounded_without_box"] + b["grounded_wrong_box"]
    return sum(b[k] for k in gold), b["correct"], b["correct"] + region, b["spurious"]


@PROPERTY_SETTINGS
@given(posts_and_predictions(), st.sampled_from(["span", "string"]), st.randoms(use_true_random=False))
def test_breakdown_sums_to_the_scores_in_both_match_modes(data, match_by, rng):
    """On varied posts (shared strings, duplicates, wrong types and boxes, predictions of no gold):
    the gold categories sum to #gold, ``correct`` is the GMNER TP, ``correct`` plus the region errors
    the MNER TP, and ``spurious`` counts the predictions whose key is no gold's."""
    posts, predictions = data
    report = score(posts, predictions, match_by=match_by)
    n_gold, correct, typed, spurious = _breakdown_sums(report)
    assert (n_gold, correct, typed) == (report.gmner.n_gold, report.gmner.tp, report.mner.tp)

    def key(post, start, end):
        return (start, end) if match_by == "span" else " ".join(post.tokens[start:end])

    by_id = {post.id: post for post in posts}
    expected_spurious = sum(
        1
        for pid, preds in predictions.items()
        for p in preds
        if key(by_id[pid], p.start, p.end) not in {key(by_id[pid], e.start, e.end) for e in by_id[pid].entities}
    )
    assert spurious == expected_spurious <= report.gmner.n_pred - report.mner.tp
    # the same whatever the order of the predictions
    shuffled = {pid: rng.sample(preds, len(preds)) for pid, preds in predictions.items()}
    assert score(posts, shuffled, match_by=match_by).breakdown == report.breakdown


def test_breakdown_sums_on_shared_strings_by_hand():
    """The sums on a post with three golds of one string (two types), in both match modes."""
    post = Post(
        "x",
        ["Paris", "v", "Paris", "v", "Paris"],
        [Entity(0, 1, "LOC", [(0, 0, 10, 10)]), Entity(2, 3, "LOC"), Entity(4, 5, "PER")],
        image_size=(50, 50),
    )
    preds = {"x": [Prediction(4, 5, "LOC", (0, 0, 10, 10)), Prediction(0, 1, "LOC"), Prediction(2, 3, "ORG")]}
    for match_by in ("span", "string"):
        report = score([post], preds, match_by=match_by)
        assert _breakdown_sums(report)[:3] == (3, report.gmner.tp, report.mner.tp), match_by
    by_string = score([post], preds, match_by="string").breakdown
    # string: LOC golds x2 vs LOC preds x2 -> 2 correct (box-less gold gets the box-less pred, grounded gets the box);
    # the PER gold has the ORG prediction of its string left: wrong type
    assert (by_string["correct"], by_string["wrong_type"], by_string["missed"]) == (2, 1, 0)
