"""The synthetic demo benchmark: deterministic, valid Twitter-GMNER layout, needs the image."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from qgn.data.synthetic import (
    COLOURS,
    FILLS,
    MANIFEST_NAME,
    NAME_LOOKS,
    SHAPES,
    SYNTHETIC_VOCABULARY,
    generate_synthetic_benchmark,
    make_post,
)
from qgn.errors import QGNError
from qgn.metrics.scorer import box_iou_xyxy

COUNTS = {"train": 120, "dev": 30, "test": 150}


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("syn") / "bench"
    return generate_synthetic_benchmark(
        out, num_train=COUNTS["train"], num_dev=COUNTS["dev"], num_test=COUNTS["test"], seed=3
    )


def parse_txt(path: Path) -> list[tuple[str, list[str], list[str]]]:
    """(id, tokens, tags) per block; asserts the exact line format on the way."""
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n\n") and not text.endswith("\n\n\n")  # blocks, then one empty line at the end
    blocks = []
    for chunk in text.rstrip("\n").split("\n\n"):
        lines = chunk.split("\n")
        assert lines[0].startswith("IMGID:")
        fields = [line.split("\t") for line in lines[1:]]
        assert all(len(f) == 2 and f[0] and " " not in f[0] for f in fields)
        blocks.append((lines[0][len("IMGID:") :], [f[0] for f in fields], [f[1] for f in fields]))
    return blocks


def entity_spans(tags: list[str]) -> list[tuple[int, int, str]]:
    """``(start, end, type)`` per BIO entity (end exclusive); asserts well-formed IOB2."""
    spans: list[tuple[int, int, str]] = []
    for i, tag in enumerate(tags):
        if tag.startswith("B-"):
            spans.append((i, i + 1, tag[2:]))
        elif tag.startswith("I-"):
            assert spans and spans[-1][1] == i and spans[-1][2] == tag[2:]
            spans[-1] = (spans[-1][0], i + 1, spans[-1][2])
        else:
            assert tag == "O"
    return spans


def entity_strings(tokens: list[str], tags: list[str]) -> list[tuple[str, str]]:
    """(surface string, type) per BIO entity; asserts well-formed IOB2."""
    return [(" ".join(tokens[start:end]), kind) for start, end, kind in entity_spans(tags)]


def boxes_by_name(xml_path: Path) -> tuple[tuple[int, int], dict[str, list[tuple[int, ...]]]]:
    root = ET.parse(xml_path).getroot()
    size = root.find("size")
    wh = (int(size.findtext("width")), int(size.findtext("height")))
    assert size.findtext("depth") == "3"
    boxes: dict[str, list[tuple[int, ...]]] = {}
    for obj in root.iter("object"):
        box = obj.find("bndbox")
        boxes.setdefault(obj.findtext("name"), []).append(
            tuple(int(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        )
    return wh, boxes


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    first = files(generate_synthetic_benchmark(tmp_path / "a", 20, 5, 5, seed=1))
    second = files(generate_synthetic_benchmark(tmp_path / "b", 20, 5, 5, seed=1))
    other = files(generate_synthetic_benchmark(tmp_path / "c", 20, 5, 5, seed=2))
    assert first == second
    assert any(name.endswith(".jpg") for name in first) and any(name.endswith(".xml") for name in first)
    assert first["txt/train.txt"] != other["txt/train.txt"]
    # A post depends on (seed, split, index) only: growing train leaves dev and test untouched.
    bigger = files(generate_synthetic_benchmark(tmp_path / "d", 25, 5, 5, seed=1))
    assert bigger["txt/test.txt"] == first["txt/test.txt"]


def test_layout_is_valid_twitter_gmner(bench: Path) -> None:
    manifest = json.loads((bench / MANIFEST_NAME).read_text())
    assert manifest["seed"] == 3 and manifest["counts"] == COUNTS
    all_ids: list[str] = []
    stats = Counter()
    for split, count in COUNTS.items():
        blocks = parse_txt(bench / "txt" / f"{split}.txt")
        assert len(blocks) == count
        for post_id, tokens, tags in blocks:
            all_ids.append(post_id)
            entities = entity_strings(tokens, tags)
            assert 5 <= len(tokens) <= 24 and len(entities) <= 4
            assert len({name for name, _ in entities}) == len(entities)  # no name twice in a post
            with Image.open(bench / "images" / f"{post_id}.jpg") as image:
                image_size = image.size
                assert image.mode == "RGB"
            xml_path = bench / "xml" / f"{post_id}.xml"
            named: dict[str, list[tuple[int, ...]]] = {}
            if xml_path.exists():
                wh, named = boxes_by_name(xml_path)
                assert wh == image_size and named
            # Every object name is exactly an entity string of the post (exact-string linking).
            assert set(named) <= {name for name, _ in entities}
            for name, kind in entities:
                assert NAME_LOOKS[name][0] == kind
                boxes = named.get(name, [])
                stats["entities"] += 1
                stats["ungroundable"] += not boxes
                stats["multi_box"] += len(boxes) > 1
                for x1, y1, x2, y2 in boxes:
                    assert 0 <= x1 < x2 <= image_size[0] and 0 <= y1 < y2 <= image_size[1]
                    # Big enough to survive a 64x64 resize.
                    assert (x2 - x1) >= 0.15 * image_size[0] and (y2 - y1) >= 0.15 * image_size[1]
            stats["no_entity_posts"] += not entities
    assert len(set(all_ids)) == len(all_ids) == sum(COUNTS.values())
    assert len(list((bench / "images").iterdir())) == sum(COUNTS.values())
    assert 0.35 <= stats["ungroundable"] / stats["entities"] <= 0.55
    assert stats["multi_box"] >= 3 and 1 <= stats["no_entity_posts"] <= 0.12 * sum(COUNTS.values())


def test_looks_are_fixed_and_no_single_feature_identifies_a_name() -> None:
    looks = [look for _, look in NAME_LOOKS.values()]
    assert len(set(looks)) == len(looks) == 40  # one look per name
    assert {look.colour for look in looks} == set(COLOURS) and {look.shape for look in looks} == set(SHAPES)
    assert {look.fill for look in looks} == set(FILLS)
    for feature in ("colour", "shape", "fill"):
        counts = Counter(getattr(look, feature) for look in looks)
        assert min(counts.values()) >= 3, feature  # every colour / shape / fill is worn by several names
    # each colour is shared by names of more than one type
    for colour in COLOURS:
        assert len({t for t, look in NAME_LOOKS.values() if look.colour == colour}) >= 2


def test_objects_wear_their_names_look_and_distractors_other_names_looks() -> None:
    distractors = same_type_pairs = 0
    for index in range(300):
        post = make_post(0, "train", index, (128, 96), 0.25)
        mentioned = {name for name, _ in entity_strings(post.tokens, post.tags)}
        kinds = Counter(NAME_LOOKS[n][0] for n in mentioned)
        same_type_pairs += any(count >= 2 for count in kinds.values())
        worn = {look: name for name, (_, look) in NAME_LOOKS.items()}
        for obj in post.objects:
            if obj.name is None:
                distractors += 1
                # an unmentioned name's look: never the look of a mentioned entity
                assert obj.look in worn and worn[obj.look] not in mentioned
            else:
                assert obj.name in mentioned and obj.look == NAME_LOOKS[obj.name][1]
            width, height = post.size
            assert 0 <= obj.box[0] < obj.box[2] <= width and 0 <= obj.box[1] < obj.box[3] <= height
        # Boxes do not overlap, so each is the whole visible shape.
        boxes = [o.box for o in post.objects]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
    assert distractors >= 300 and same_type_pairs >= 30


def test_the_text_says_nothing_of_where_or_whether() -> None:
    """No word of the text depends on the image: within a type (types have their own base rates
    of being drawn, as in real data), the word before an entity follows the same distribution
    whether it is drawn or not, and there are no position words."""
    context: dict[tuple[str, bool], Counter] = {}
    for index in range(2000):
        post = make_post(0, "train", index, (128, 96), 0.25)
        drawn = {o.name for o in post.objects if o.name is not None}
        for start, end, kind in entity_spans(post.tags):
            before = post.tokens[start - 1] if start else "<s>"
            context.setdefault((kind, " ".join(post.tokens[start:end]) in drawn), Counter())[before] += 1
    for word in ("left", "top", "bottom", "top-left", "top-right", "bottom-left", "bottom-right", "center"):
        assert word not in SYNTHETIC_VOCABULARY
    compared = 0
    for kind in ("PER", "LOC", "ORG", "OTHER"):
        yes, no = context[(kind, True)], context[(kind, False)]
        for word in set(yes) | set(no):
            if yes[word] + no[word] >= 60:
                compared += 1
                assert abs(yes[word] / sum(yes.values()) - no[word] / sum(no.values())) < 0.06, (kind, word)
    assert compared >= 12


def test_text_alone_cannot_place_boxes() -> None:
    """The best fixed box per name (its mean box on train, in relative coordinates) reaches IoU 0.5
    for few grounded test entities: a name's object can be anywhere."""
    sums: dict[str, list[float]] = {}
    for index in range(1500):
        post = make_post(0, "train", index, (128, 96), 0.25)
        width, height = post.size
        for obj in post.objects:
            if obj.name is not None:
                x1, y1, x2, y2 = obj.box
                acc = sums.setdefault(obj.name, [0.0] * 5)
                for k, v in enumerate((x1 / width, y1 / height, x2 / width, y2 / height, 1.0)):
                    acc[k] += v
    grounded = hits = 0
    for index in range(300):
        post = make_post(0, "test", index, (128, 96), 0.25)
        width, height = post.size
        for obj in post.objects:
            if obj.name is None:
                continue
            x1, y1, x2, y2, n = sums[obj.name]
            guess = (x1 / n * width, y1 / n * height, x2 / n * width, y2 / n * height)
            grounded += 1
            hits += box_iou_xyxy(guess, obj.box) >= 0.5
    assert grounded > 300 and hits / grounded < 0.1


def test_text_only_baseline_is_far_below_90(bench: Path) -> None:
    """Gold spans and types with no box are right exactly for the ungroundable entities (P = R)."""
    gold = correct = 0
    for post_id, tokens, tags in parse_txt(bench / "txt" / "test.txt"):
        xml_path = bench / "xml" / f"{post_id}.xml"
        named = boxes_by_name(xml_path)[1] if xml_path.exists() else {}
        for name, _ in entity_strings(tokens, tags):
            gold += 1
            correct += name not in named
    f1 = 100 * correct / gold
    assert 30 < f1 < 70


def test_vocabulary_covers_every_emitted_word(bench: Path) -> None:
    vocabulary = set(SYNTHETIC_VOCABULARY)
    assert len(vocabulary) == len(SYNTHETIC_VOCABULARY)
    for split in COUNTS:
        for _, tokens, _ in parse_txt(bench / "txt" / f"{split}.txt"):
            assert set(tokens) <= vocabulary
    assert any(" " in name for name in NAME_LOOKS)  # multi-word entities exist


def test_reuse_overwrite_and_refusal(tmp_path: Path) -> None:
    out = generate_synthetic_benchmark(tmp_path / "x", 8, 2, 2)
    stamp = (out / "txt" / "train.txt").stat().st_mtime_ns
    assert generate_synthetic_benchmark(tmp_path / "x", 8, 2, 2) == out
    assert (out / "txt" / "train.txt").stat().st_mtime_ns == stamp  # complete and same manifest: reused
    with pytest.raises(QGNError, match="overwrite"):
        generate_synthetic_benchmark(tmp_path / "x", 9, 2, 2)
    generate_synthetic_benchmark(tmp_path / "x", 9, 2, 2, overwrite=True)
    assert len(list((out / "images").iterdir())) == 13
    assert json.loads((out / MANIFEST_NAME).read_text())["counts"]["train"] == 9
    assert not (tmp_path / ".x.partial").exists()
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "notes.txt").write_text("mine")
    with pytest.raises(QGNError):
        generate_synthetic_benchmark(tmp_path / "y", 4, 1, 1)
    with pytest.raises(QGNError):
        generate_synthetic_benchmark(tmp_path / "z", 4, 1, 1, image_size=(8, 8))


def test_read_dataset_agrees_with_the_files(bench: Path) -> None:
    from qgn.data import read_dataset

    posts = read_dataset(str(bench), split="test", image_dir=str(bench / "images"))
    blocks = parse_txt(bench / "txt" / "test.txt")
    assert [p.id for p in posts] == [b[0] for b in blocks]
    for post, (post_id, tokens, tags) in zip(posts, blocks):
        assert post.tokens == tokens
        assert [e.type for e in post.entities] == [k for _, k in entity_strings(tokens, tags)]
        xml_path = bench / "xml" / f"{post_id}.xml"
        named = boxes_by_name(xml_path)[1] if xml_path.exists() else {}
        for entity in post.entities:
            name = " ".join(tokens[entity.start : entity.end])
            assert sorted(tuple(int(v) for v in b) for b in entity.boxes) == sorted(named.get(name, []))
        with Image.open(post.image_path) as image:
            assert tuple(post.image_size) == image.size


# ------------------------------------------------------------------------------------ variants
from qgn.data.synthetic import VARIANTS, get_variant, variant_looks  # noqa: E402

VARIANT_NAMES = [name for name in VARIANTS if name != "default"]


def test_default_variant_is_the_benchmark_without_variants() -> None:
    for index in range(50):
        plain, named = make_post(0, "train", index, (128, 96), 0.25), make_post(0, "train", index, variant="default")
        assert (plain.tokens, plain.tags, plain.size, plain.objects) == (
            named.tokens,
            named.tags,
            named.size,
            named.objects,
        )
    assert variant_looks("default") is NAME_LOOKS
    with pytest.raises(QGNError, match="unknown synthetic variant"):
        get_variant("squares")


@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_variants_keep_the_rules(name: str) -> None:
    """Every variant: objects wear their names' looks, distractors other names' looks, boxes
    disjoint inside the image; absent entities, teams drawn twice and entity-less posts exist."""
    looks = variant_looks(name)
    worn = {look: n for n, (_, look) in looks.items()}
    assert len(worn) == len(looks)  # one look per name
    stats = Counter()
    for index in range(400):
        post = make_post(0, "train", index, variant=name)
        mentioned = {n for n, _ in entity_strings(post.tokens, post.tags)}
        drawn = Counter(o.name for o in post.objects if o.name is not None)
        stats["entities"] += len(mentioned)
        stats["absent"] += len(mentioned - set(drawn))
        stats["twice"] += sum(c == 2 for c in drawn.values())
        stats["empty"] += not mentioned
        for obj in post.objects:
            if obj.name is None:
                stats["distractors"] += 1
                assert worn[obj.look] not in mentioned
            else:
                assert obj.name in mentioned and obj.look == looks[obj.name][1]
            assert 0 <= obj.box[0] < obj.box[2] <= post.size[0] and 0 <= obj.box[1] < obj.box[3] <= post.size[1]
        boxes = [o.box for o in post.objects]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
    assert 0.3 <= stats["absent"] / stats["entities"] <= 0.6
    assert stats["twice"] >= 10 and stats["empty"] >= 5 and stats["distractors"] >= 400


@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_variants_text_neither_locates_nor_places(name: str) -> None:
    """The word before an entity does not depend on whether it is drawn (within a type), and the
    best fixed box per name (its mean train box, relative) reaches IoU 0.5 for few test entities."""
    context: dict[tuple[str, bool], Counter] = {}
    sums: dict[str, list[float]] = {}
    for index in range(1500):
        post = make_post(0, "train", index, variant=name)
        drawn = {o.name for o in post.objects if o.name is not None}
        for start, end, kind in entity_spans(post.tags):
            before = post.tokens[start - 1] if start else "<s>"
            context.setdefault((kind, " ".join(post.tokens[start:end]) in drawn), Counter())[before] += 1
        width, height = post.size
        for obj in post.objects:
            if obj.name is not None:
                acc = sums.setdefault(obj.name, [0.0] * 5)
                for k, v in enumerate(
                    (obj.box[0] / width, obj.box[1] / height, obj.box[2] / width, obj.box[3] / height, 1.0)
                ):
                    acc[k] += v
    compared = 0
    for kind in ("PER", "LOC", "ORG", "OTHER"):
        yes, no = context[(kind, True)], context[(kind, False)]
        for word in set(yes) | set(no):
            if yes[word] + no[word] >= 60:
                compared += 1
                n_yes, n_no = sum(yes.values()), sum(no.values())
                pooled = (yes[word] + no[word]) / (n_yes + n_no)
                stderr = (pooled * (1 - pooled) * (1 / n_yes + 1 / n_no)) ** 0.5
                # a two-proportion z-test at 4 standard errors: dozens of words are compared
                assert abs(yes[word] / n_yes - no[word] / n_no) < 4 * stderr, (kind, word)
    assert compared >= 8
    grounded = hits = 0
    for index in range(300):
        post = make_post(0, "test", index, variant=name)
        width, height = post.size
        for obj in post.objects:
            if obj.name is None or obj.name not in sums:
                continue
            x1, y1, x2, y2, n = sums[obj.name]
            guess = (x1 / n * width, y1 / n * height, x2 / n * width, y2 / n * height)
            grounded += 1
            hits += box_iou_xyxy(guess, obj.box) >= 0.5
    assert grounded > 250 and hits / grounded < 0.1


def test_shapes_variant_has_posts_of_every_shape_and_round_objects() -> None:
    sizes, ratios = [], []
    for index in range(400):
        post = make_post(0, "train", index, variant="shapes")
        sizes.append(max(post.size))
        ratios.append(post.size[0] / post.size[1])
        for obj in post.objects:
            w, h = obj.box[2] - obj.box[0], obj.box[3] - obj.box[1]
            assert 0.7 <= w / h <= 1.4  # about square in pixels, whatever the image's aspect ratio
    assert min(sizes) < 150 and max(sizes) > 500
    assert min(ratios) < 0.6 and max(ratios) > 2.5


def test_outline_variant_draws_thin_borders_beside_filled_looks(tmp_path: Path) -> None:
    import numpy as np

    from qgn.data.synthetic import COLOURS as PALETTE, render_image

    fills = Counter(look.fill for _, look in variant_looks("outline").values())
    assert set(fills) == {"solid", "ring", "striped", "outline"} and fills["outline"] >= 5
    checked = 0
    for index in range(200):
        post = make_post(0, "train", index, variant="outline")
        outlined = [o for o in post.objects if o.look.fill == "outline" and o.look.shape == "square"]
        if not outlined:
            continue
        pixels = np.asarray(Image.open(__import__("io").BytesIO(render_image(post, 0))).convert("RGB")).astype(int)
        for obj in outlined:
            assert 2 <= obj.line <= 6
            x1, y1, x2, y2 = obj.box
            colour = np.array(PALETTE[obj.look.colour])
            edge = pixels[y1 + obj.line // 2, x1 + (x2 - x1) // 2]
            centre = pixels[(y1 + y2) // 2, (x1 + x2) // 2]
            assert np.abs(edge - colour).max() < 60  # the border wears the colour
            assert np.abs(centre - colour).max() > 60  # the inside is background
            checked += 1
    assert checked >= 5


def test_many_and_scale_variants() -> None:
    looks = variant_looks("many")
    assert len(looks) == 80 and Counter(t for t, _ in looks.values()) == Counter(
        {t: 20 for t in ("PER", "LOC", "ORG", "OTHER")}
    )
    assert set(NAME_LOOKS) < set(looks)
    relative = []
    for index in range(400):
        post = make_post(0, "train", index, variant="scale")
        scale = (post.size[0] * post.size[1]) ** 0.5
        relative += [(o.box[2] - o.box[0]) / scale for o in post.objects]
    assert min(relative) < 0.1 and max(relative) > 0.4


def test_variant_benchmark_on_disk(tmp_path: Path) -> None:
    out = generate_synthetic_benchmark(tmp_path / "mixed", 12, 3, 3, variant="mixed")
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["variant"] == "mixed" and "variant mixed" in (out / "README.md").read_text()
    from qgn.data import read_dataset

    posts = read_dataset(str(out), split="train", image_dir=str(out / "images"))
    assert len(posts) == 12 and len({tuple(p.image_size) for p in posts}) > 6
    with pytest.raises(QGNError, match="overwrite"):  # another variant in the same folder
        generate_synthetic_benchmark(tmp_path / "mixed", 12, 3, 3, variant="many")
    assert "variant" not in json.loads(
        (generate_synthetic_benchmark(tmp_path / "d", 4, 1, 1) / MANIFEST_NAME).read_text()
    )
