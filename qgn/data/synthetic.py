"""A deterministic synthetic grounded-NER benchmark in the Twitter-GMNER layout (the demo's data).

Why it exists: the real images cannot be shipped, and the demo must train a tiny random-init QGN
on a CPU in minutes and still show that grounding needs *both* modalities.

Design (version ``GENERATOR_VERSION``):

- 32 entity names, 8 per type (PER / LOC / ORG / OTHER), some multi-word ("New Haven").
- Each name has a fixed look: one of 8 colours and one of 4 shapes. The 4 names that share a
  colour have 4 different types and 4 different shapes (a Latin square), so (colour, shape)
  identifies the name, and within one post all entities have different colours.
- The image is split into four quadrants. Each entity is preceded by a position word
  ("with top-left Anna") naming its own quadrant; entities of one post get different quadrants.
  The text says WHERE to look, the image says WHETHER the entity is there and its exact box:
  a groundable entity's object lies at a random place inside its quadrant, an ungroundable
  entity's quadrant stays empty, and its sentence comes from the same templates, so only the
  image can tell.
- Distractor objects (drawn, never mentioned) sit only in quadrants no entity of the post names
  and use colours of no entity in the post, so an object in an entity's quadrant is present iff
  that entity is groundable.
- Some grounded ORG entities (teams) are drawn twice in their quadrant: one entity, two boxes.
- About 5 % of posts have no entity; posts hold 1-4 entities and 5-24 words.
- Boxes are the drawn shapes' exact pixel extents, each at least ~15 % of the image side so
  they survive the 64x64 resize of the tiny model, and at most 28 %, so a quadrant (50 %) leaves
  the position inside it to the image.

Why quadrant words rather than colour words (version 2): binding a colour word to a colour
patch has to be discovered by both randomly initialised encoders at once, and the tiny model did
not find it within the demo's time budget (test GMNER stayed at the text-only level); a position
word maps onto the fixed 2D positions of the visual tokens, which a model from scratch learns in
minutes.

On-disk layout (``/work/shared/notes/twitter-gmner-format-and-scoring.md`` section 1)::

    DIR/txt/{train,dev,test}.txt   IMGID:<id> blocks of "token<TAB>BIO-tag", blank-line separated
    DIR/xml/<id>.xml               Pascal-VOC, one <object> per box; absent when no entity has a box
    DIR/images/<id>.jpg            flat image folder
    DIR/synthetic.json, README.md  manifest (version, seed, counts) and a description

Every post draws from its own ``numpy`` generator seeded by ``(seed, split, index)``, so a post
does not change when other splits are resized; files are byte-identical for a seed.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image, ImageDraw

from qgn.errors import QGNError

GENERATOR_VERSION = 3
MANIFEST_NAME = "synthetic.json"
SPLITS = ("train", "dev", "test")
JPEG_QUALITY = 92

# Saturated colours that stay distinct after JPEG and a 64x64 resize, and far from the light,
# desaturated backgrounds.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "orange": (250, 150, 30), "yellow": (235, 215, 40), "green": (40, 160, 60),
    "cyan": (40, 200, 210), "blue": (40, 70, 210), "magenta": (210, 50, 200), "black": (30, 30, 30),
}
SHAPES = ("circle", "square", "triangle", "diamond")
ENTITY_TYPES = ("PER", "LOC", "ORG", "OTHER")
# Name i of each type gets colour i; list order follows COLOURS ("Blue Comets" is blue).
NAMES_BY_TYPE: dict[str, tuple[str, ...]] = {
    "PER": ("Anna", "Bruno Silva", "Chloe", "Diego", "Emma Hart", "Farid", "Grace", "Hugo"),
    "LOC": ("Paris", "Oslo", "New Haven", "Lima", "Cairo", "San Jose", "Rome", "Hong Kong"),
    "ORG": ("Redwood", "Iron Wolves", "Star Labs", "Nova Bank", "Tiger FC", "Blue Comets", "Apex Motors", "Zenith"),
    "OTHER": ("Aero Max", "Quasar", "Nimbus 3", "Volt", "Pixelbook", "Echo Dot", "Model T", "Zoom X"),
}
TYPE_WEIGHTS = (0.35, 0.20, 0.25, 0.20)
# Chance that an entity of each type is drawn: LOC rarely, as in the real data (~57 % overall).
GROUNDED_PROBABILITY = {"PER": 0.70, "LOC": 0.35, "ORG": 0.60, "OTHER": 0.55}
ORG_BOX_COUNTS, ORG_BOX_WEIGHTS = (1, 2), (0.7, 0.3)
ENTITY_COUNTS, ENTITY_COUNT_WEIGHTS = (1, 2, 3, 4), (0.30, 0.35, 0.22, 0.13)
NO_ENTITY_PROBABILITY = 0.05
DISTRACTOR_COUNTS, DISTRACTOR_WEIGHTS = (0, 1, 2), (0.30, 0.45, 0.25)
# Box width (height) as a fraction of the image width (height): one object, or each of two copies.
OBJECT_SIDE_RANGE = (0.18, 0.28)
COPY_SIDE_RANGE = (0.16, 0.22)
# Position word -> quadrant (column, row) of the image.
POSITIONS: dict[str, tuple[int, int]] = {
    "top-left": (0, 0), "top-right": (1, 0), "bottom-left": (0, 1), "bottom-right": (1, 1),
}

# Context phrases; "{}" is the entity. None of them depends on whether the entity is drawn.
PHRASES: dict[str, tuple[str, ...]] = {
    "PER": ("{} said", "with {}", "{} smiles", "ask {}", "{} is here"),
    "LOC": ("in {}", "at {}", "near {}", "from {}", "{} today"),
    "ORG": ("{} fans", "for {}", "the {} team", "{} wins", "go {}"),
    "OTHER": ("the new {}", "my {}", "{} review", "love the {}", "{} launch"),
}
CONNECTORS = ("and", ",", "then", "plus", "while", "&")
PREFIXES = ("RT", "Look :", "Wow", "Today", "Finally", "Photo :", "OMG", "So")
SUFFIXES = ("!", "#weekend", "lol", "tonight !", "so cool", ":)", "again", "#news")
FILLERS = ("what a day", "so happy right now", "nothing to see here", "good morning all", "best view ever")


@dataclass(frozen=True)
class Look:
    """How a name is drawn: its colour name and shape."""

    colour: str
    shape: str


def _build_looks() -> dict[str, tuple[str, Look]]:
    colours = list(COLOURS)
    looks: dict[str, tuple[str, Look]] = {}
    for type_index, entity_type in enumerate(ENTITY_TYPES):
        for i, name in enumerate(NAMES_BY_TYPE[entity_type]):
            looks[name] = (entity_type, Look(colours[i], SHAPES[(i + type_index) % len(SHAPES)]))
    return looks


# name -> (type, look); the whole grounding "knowledge" a model must learn from the pairs.
NAME_LOOKS: dict[str, tuple[str, Look]] = _build_looks()


def synthetic_vocabulary() -> list[str]:
    """Every word the generator can emit, deduplicated, in a fixed order (for word tokenizers)."""
    pieces = [n for names in NAMES_BY_TYPE.values() for n in names]
    pieces += [p.replace("{}", " ") for phrases in PHRASES.values() for p in phrases]
    pieces += list(CONNECTORS) + list(PREFIXES) + list(SUFFIXES) + list(FILLERS) + list(POSITIONS)
    words: dict[str, None] = {}
    for piece in pieces:
        words.update(dict.fromkeys(piece.split()))
    return list(words)


SYNTHETIC_VOCABULARY: tuple[str, ...] = tuple(synthetic_vocabulary())


@dataclass
class _Object:
    """One drawn object: its look, its box ``(x1, y1, x2, y2)`` (x2/y2 exclusive), owner name."""

    look: Look
    box: tuple[int, int, int, int]
    name: str | None  # None for a distractor


@dataclass
class SyntheticPost:
    """One generated post: tokens with BIO tags, the drawn objects and the image size (W, H)."""

    id: str
    split: str
    index: int
    tokens: list[str]
    tags: list[str]
    objects: list[_Object]
    size: tuple[int, int]


def _choice(rng: np.random.Generator, options: tuple, weights: tuple | None = None):
    probabilities = None if weights is None else np.asarray(weights) / np.sum(weights)
    return options[int(rng.choice(len(options), p=probabilities))]


def _sentence(rng: np.random.Generator, names: list[str], positions: list[str]) -> tuple[list[str], list[str]]:
    """Tokens and BIO tags of a 5-24 word post mentioning ``names`` in order, each preceded by its
    position word."""
    tokens: list[str] = []
    tags: list[str] = []
    for k, (name, position) in enumerate(zip(names, positions)):
        if k:
            tokens.append(_choice(rng, CONNECTORS))
            tags.append("O")
        entity_type = NAME_LOOKS[name][0]
        before, after = _choice(rng, PHRASES[entity_type]).split("{}")
        name_words = name.split()
        # The position word says which quadrant holds the entity's object (if it is drawn at
        # all): the image says whether it is there and exactly where.
        for word in before.split() + [position]:
            tokens.append(word)
            tags.append("O")
        tokens += name_words
        tags += [f"B-{entity_type}"] + [f"I-{entity_type}"] * (len(name_words) - 1)
        for word in after.split():
            tokens.append(word)
            tags.append("O")
    if not names:
        tokens = _choice(rng, FILLERS).split()
        tags = ["O"] * len(tokens)
    # Four entities take up to 23 words, so prefix / suffix are added only where they fit.
    prefix = _choice(rng, PREFIXES).split() if rng.random() < 0.6 or len(tokens) < 5 else []
    suffix = _choice(rng, SUFFIXES).split() if rng.random() < 0.6 or len(tokens) + len(prefix) < 5 else []
    if len(tokens) + len(prefix) <= 20:
        tokens, tags = prefix + tokens, ["O"] * len(prefix) + tags
    if len(tokens) + len(suffix) <= 20:
        tokens, tags = tokens + suffix, tags + ["O"] * len(suffix)
    if len(tokens) < 5:  # e.g. "Wow Anna said !": pad with a filler clause (at most 4 more words)
        filler = _choice(rng, FILLERS).split()
        tokens, tags = tokens + filler, tags + ["O"] * len(filler)
    return tokens, tags


def _place(rng: np.random.Generator, count: int, region: tuple[int, int, int, int],
           size: tuple[int, int], side_range: tuple[float, float]) -> list[tuple[int, int, int, int]]:
    """``count`` non-overlapping boxes (1 px apart) inside ``region`` ``(x1, y1, x2, y2)``, sides a
    ``side_range`` fraction of the image ``size``; shrinks them if random placement gets stuck."""
    width, height = size
    rx1, ry1, rx2, ry2 = region
    scale = 1.0
    while True:
        boxes: list[tuple[int, int, int, int]] = []
        for _ in range(count):
            for _attempt in range(100):
                w = min(int(round(width * scale * rng.uniform(*side_range))), rx2 - rx1)
                h = min(int(round(height * scale * rng.uniform(*side_range))), ry2 - ry1)
                x1 = int(rng.integers(rx1, rx2 - w + 1))
                y1 = int(rng.integers(ry1, ry2 - h + 1))
                box = (x1, y1, x1 + w, y1 + h)
                if all(box[0] > b[2] or box[2] < b[0] or box[1] > b[3] or box[3] < b[1] for b in boxes):
                    boxes.append(box)
                    break
            else:
                break
        if len(boxes) == count:
            return boxes
        scale *= 0.9


def quadrant(position: str, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Pixel rectangle ``(x1, y1, x2, y2)`` (x2/y2 exclusive) of a position word's quadrant."""
    column, row = POSITIONS[position]
    width, height = size
    return (column * width // 2, row * height // 2, (column + 1) * width // 2, (row + 1) * height // 2)


def make_post(seed: int, split: str, index: int, image_size: tuple[int, int], size_jitter: float) -> SyntheticPost:
    """Generate post ``index`` of ``split``; depends only on its arguments."""
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    base_w, base_h = image_size
    size = (int(round(base_w * (1 + size_jitter * rng.uniform(-1, 1)))),
            int(round(base_h * (1 + size_jitter * rng.uniform(-1, 1)))))
    count = 0 if rng.random() < NO_ENTITY_PROBABILITY else _choice(rng, ENTITY_COUNTS, ENTITY_COUNT_WEIGHTS)
    names: list[str] = []
    used_colours: set[str] = set()
    for _ in range(count):
        entity_type = _choice(rng, ENTITY_TYPES, TYPE_WEIGHTS)
        free = tuple(n for n in NAMES_BY_TYPE[entity_type] if NAME_LOOKS[n][1].colour not in used_colours)
        name = _choice(rng, free)
        names.append(name)
        used_colours.add(NAME_LOOKS[name][1].colour)
    positions = [str(p) for p in rng.permutation(list(POSITIONS))[:len(names)]]
    objects: list[_Object] = []
    for name, position in zip(names, positions):
        entity_type, look = NAME_LOOKS[name]
        if rng.random() < GROUNDED_PROBABILITY[entity_type]:
            copies = _choice(rng, ORG_BOX_COUNTS, ORG_BOX_WEIGHTS) if entity_type == "ORG" else 1
            sides = OBJECT_SIDE_RANGE if copies == 1 else COPY_SIDE_RANGE
            for box in _place(rng, copies, quadrant(position, size), size, sides):
                objects.append(_Object(look, box, name))
    # Distractors only where no entity points, in colours of no entity: the image alone decides.
    free_quadrants = [p for p in POSITIONS if p not in positions]
    free_colours = [c for c in COLOURS if c not in used_colours]
    distractors = min(_choice(rng, DISTRACTOR_COUNTS, DISTRACTOR_WEIGHTS), len(free_quadrants))
    quadrants = rng.permutation(free_quadrants)[:distractors]
    colours = rng.permutation(free_colours)[:distractors]
    for position, colour in zip(quadrants, colours):
        look = Look(str(colour), _choice(rng, SHAPES))
        box = _place(rng, 1, quadrant(str(position), size), size, OBJECT_SIDE_RANGE)[0]
        objects.append(_Object(look, box, None))
    tokens, tags = _sentence(rng, names, positions)
    return SyntheticPost(f"{split}_{index:05d}", split, index, tokens, tags, objects, size)


def render_image(post: SyntheticPost, seed: int) -> bytes:
    """The post's JPEG bytes: a light, slightly noisy background with the solid shapes."""
    # Its own stream, so changing how pixels are drawn never changes the annotations.
    rng = np.random.default_rng([seed, SPLITS.index(post.split), post.index, 1])
    width, height = post.size
    base = rng.uniform(185, 235) + rng.uniform(-12, 12, size=3)  # light, nearly grey tint
    gradient = np.linspace(-10, 10, width)[None, :, None] * rng.choice([-1, 1])
    noise = rng.normal(0, 4, size=(height, width, 3))
    pixels = np.clip(base[None, None, :] + gradient + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    for obj in post.objects:
        x1, y1, x2, y2 = obj.box
        right, bottom = x2 - 1, y2 - 1  # PIL includes the end pixel; our x2/y2 are exclusive
        fill = COLOURS[obj.look.colour]
        if obj.look.shape == "circle":
            draw.ellipse([x1, y1, right, bottom], fill=fill)
        elif obj.look.shape == "square":
            draw.rectangle([x1, y1, right, bottom], fill=fill)
        elif obj.look.shape == "triangle":
            draw.polygon([(x1, bottom), (right, bottom), ((x1 + right) / 2, y1)], fill=fill)
        else:
            mid_x, mid_y = (x1 + right) / 2, (y1 + bottom) / 2
            draw.polygon([(mid_x, y1), (right, mid_y), (mid_x, bottom), (x1, mid_y)], fill=fill)
    buffer = io.BytesIO()
    # Fixed quality, no chroma subsampling (keeps colours crisp), no metadata: identical bytes.
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buffer.getvalue()


def voc_xml(post: SyntheticPost) -> str | None:
    """Pascal-VOC annotation of the post's mentioned objects, or ``None`` if it has none."""
    named = [o for o in post.objects if o.name is not None]
    if not named:
        return None
    width, height = post.size
    objects = "".join(
        f"\t<object>\n\t\t<name>{escape(o.name)}</name>\n\t\t<pose>Unspecified</pose>\n"
        "\t\t<truncated>0</truncated>\n\t\t<difficult>0</difficult>\n\t\t<bndbox>\n"
        f"\t\t\t<xmin>{o.box[0]}</xmin>\n\t\t\t<ymin>{o.box[1]}</ymin>\n"
        f"\t\t\t<xmax>{o.box[2]}</xmax>\n\t\t\t<ymax>{o.box[3]}</ymax>\n\t\t</bndbox>\n\t</object>\n"
        for o in named
    )
    return (
        f"<annotation>\n\t<folder>images</folder>\n\t<filename>{post.id}.jpg</filename>\n"
        f"\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n\t\t<depth>3</depth>\n\t</size>\n"
        f"\t<segmented>0</segmented>\n{objects}</annotation>\n"
    )


def _manifest(seed: int, counts: dict[str, int], image_size: tuple[int, int], size_jitter: float) -> dict:
    return {"generator": "qgn.data.synthetic", "version": GENERATOR_VERSION, "seed": seed, "counts": counts,
            "image_size": list(image_size), "size_jitter": size_jitter, "jpeg_quality": JPEG_QUALITY,
            "entity_types": list(ENTITY_TYPES)}


def _is_complete(out_dir: Path, manifest: dict) -> bool:
    """True if ``out_dir`` holds a finished benchmark written with exactly ``manifest``."""
    try:
        if json.loads((out_dir / MANIFEST_NAME).read_text(encoding="utf-8")) != manifest:
            return False
    except (OSError, ValueError):
        return False
    images = out_dir / "images"
    return all((out_dir / "txt" / f"{s}.txt").is_file() for s in SPLITS) and images.is_dir() and (
        sum(1 for _ in images.iterdir()) == sum(manifest["counts"].values()))


def _readme(manifest: dict) -> str:
    rows = "\n".join(f"| {name} | {t} | {look.colour} | {look.shape} |" for name, (t, look) in NAME_LOOKS.items())
    return (
        "# Synthetic grounded-NER benchmark (generated by qgn.data.synthetic)\n\n"
        f"Generator version {manifest['version']}, seed {manifest['seed']}, posts {manifest['counts']}.\n"
        "Twitter-GMNER layout: `txt/{split}.txt`, `xml/<id>.xml` (only posts with a boxed entity),\n"
        "`images/<id>.jpg`. Each entity is preceded by a position word (top-left, top-right, bottom-left,\n"
        "bottom-right) naming the image quadrant of its object; an entity whose quadrant is empty has no\n"
        "box. Each name is always drawn with the same colour and shape. Unmentioned objects\n"
        "(distractors) only sit in quadrants no entity of the post names.\n\n"
        "| name | type | colour | shape |\n|---|---|---|---|\n" + rows + "\n"
    )


def _write_benchmark(target: Path, manifest: dict) -> None:
    seed, counts = manifest["seed"], manifest["counts"]
    image_size, jitter = tuple(manifest["image_size"]), manifest["size_jitter"]
    for sub in ("txt", "xml", "images"):
        (target / sub).mkdir(parents=True)
    for split in SPLITS:
        blocks = []
        for index in range(counts[split]):
            post = make_post(seed, split, index, image_size, jitter)
            lines = [f"IMGID:{post.id}"] + [f"{tok}\t{tag}" for tok, tag in zip(post.tokens, post.tags)]
            blocks.append("\n".join(lines) + "\n")
            xml = voc_xml(post)
            if xml is not None:
                (target / "xml" / f"{post.id}.xml").write_text(xml, encoding="utf-8")
            (target / "images" / f"{post.id}.jpg").write_bytes(render_image(post, seed))
        # Blocks separated by one empty line; the file ends with an empty line (the real layout).
        (target / "txt" / f"{split}.txt").write_text("\n".join(blocks) + "\n", encoding="utf-8")
    (target / "README.md").write_text(_readme(manifest), encoding="utf-8")
    # Written last: a manifest means the folder is complete.
    (target / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def generate_synthetic_benchmark(
    out_dir: str | os.PathLike,
    num_train: int = 1500,
    num_dev: int = 200,
    num_test: int = 200,
    image_size: tuple[int, int] = (128, 96),
    size_jitter: float = 0.25,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write the synthetic benchmark to ``out_dir`` (Twitter-GMNER layout plus ``images/``).

    Args:
        out_dir: target folder; created if absent.
        num_train, num_dev, num_test: posts per split.
        image_size: base ``(width, height)`` in pixels.
        size_jitter: each post's width and height are the base times ``1 + u * size_jitter``,
            ``u`` uniform in [-1, 1] (0 gives every image ``image_size``).
        seed: everything is a function of the seed (byte-identical files).
        overwrite: replace an existing different benchmark (or other contents of ``txt/``,
            ``xml/``, ``images/``) instead of raising.
    Returns:
        ``out_dir`` as a Path. If it already holds a complete benchmark with the same manifest,
        nothing is regenerated.
    Raises:
        QGNError: bad sizes, or ``out_dir`` holds something else and ``overwrite`` is False.
    """
    counts = {"train": int(num_train), "dev": int(num_dev), "test": int(num_test)}
    if min(counts.values()) < 0 or min(image_size) < 32 or not 0 <= size_jitter < 0.5:
        raise QGNError(f"bad synthetic benchmark settings: counts {counts}, image_size {image_size}, "
                       f"size_jitter {size_jitter} (need counts >= 0, sides >= 32, 0 <= jitter < 0.5)")
    out = Path(out_dir)
    manifest = _manifest(int(seed), counts, (int(image_size[0]), int(image_size[1])), float(size_jitter))
    if _is_complete(out, manifest):
        return out
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise QGNError(f"{out} holds other files or another synthetic benchmark; pass overwrite=True "
                       "or choose another folder")
    # Generate beside the target, then move in: an interrupted run never leaves a half benchmark
    # that looks complete.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    _write_benchmark(staging, manifest)
    if not out.exists():
        os.replace(staging, out)
        return out
    for name in (MANIFEST_NAME, "README.md", "txt", "xml", "images"):  # manifest first: never stale
        old = out / name
        shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)
    for child in sorted(staging.iterdir(), key=lambda p: p.name == MANIFEST_NAME):  # manifest last
        os.replace(child, out / child.name)
    staging.rmdir()
    return out
