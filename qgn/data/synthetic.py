"""A deterministic synthetic grounded-NER benchmark in the Twitter-GMNER layout (the demo's data).

Why it exists: the real images cannot be shipped, and the demo must train a tiny random-init QGN
on a CPU in minutes and still show that grounding needs *both* modalities, and that the model
binds a name to *what it looks like*, as GMNER asks on real posts (a player's face, a club's logo).

Design (version ``GENERATOR_VERSION``, "grounding by appearance"):

- 40 entity names, 10 per type (PER / LOC / ORG / OTHER), some multi-word ("New Haven").
- Each name has a fixed look, the same in train, dev and test: a colour (8), a shape (4) and a
  fill (solid, ring, striped), 96 looks in all. Every colour is worn by 5 names of mixed types
  and the 5 differ in shape or fill, so colour alone never identifies a name; neither does shape
  or fill. Looks are assigned by a fixed permutation (``LOOK_SEED``), not by the benchmark seed.
- The text never says where, or whether, an entity is drawn: sentences come from the same
  templates whether the entity is in the image or not, and nothing in them depends on the image.
- A groundable entity's object lies anywhere in the image (boxes never overlap). Some entities
  are absent (per-type probabilities, LOC the least drawn, as in real data); some ORG entities
  (teams) are drawn twice: one entity, two boxes. Types are drawn independently per entity, so
  many posts name two entities of the same type.
- Distractors (0-3 per post, drawn, never mentioned) wear the looks of *other* names of the
  vocabulary and lie anywhere, so "some object is there" says nothing: only the look does. A
  distractor may share a colour, a shape or a fill with a mentioned entity, never all three.
- About 5 % of posts have no entity; posts hold 1-4 entities and 5-24 words.
- Boxes are the drawn shapes' exact pixel extents, each 18-28 % of the image side (16-22 % for a
  team's two copies), so a shape spans about two patches of a 64 px, 8 px-patch ViT.

A text-only system cannot place boxes: a name's object is anywhere, so the best fixed box per
name reaches IoU 0.5 for few grounded entities (tested in ``tests/test_synthetic.py``).

Variants (``VARIANTS``; ``qgn demo --variant NAME``). ``default`` is the benchmark above. Each of
the others changes one thing real posts have and the default lacks, and ``mixed`` changes all of
them at once; every variant keeps the rules above (fixed looks, nothing in the text locates an
entity, distractors, absent entities, two boxes for some teams):

- ``shapes``: images of every size and aspect ratio, as posts have them: the longer side 96-640 px
  (log-uniform), width / height 1:2 to 3:1 (log-uniform). Objects keep their own shape (a circle
  is round in the image) and their side is 18-28 % of sqrt(W * H), so a panorama's objects are
  small against its width.
- ``outline``: a fourth fill, ``outline``: the shape's border only, 4-10 % of the object's side
  and 2 to 6 px wide, beside solid, ring and striped looks (16 patterns per colour).
- ``many``: 80 identities (20 per type) instead of 40, from the same number of posts: half as many
  training examples of each look.
- ``scale``: object sides from 8 % to 50 % of sqrt(W * H) (log-uniform) instead of 18-28 %.
- ``mixed``: all four at once.

On-disk layout (docs/data.md, "Twitter-GMNER")::

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image, ImageDraw

from qgn.errors import QGNError

GENERATOR_VERSION = 4
MANIFEST_NAME = "synthetic.json"
SPLITS = ("train", "dev", "test")
JPEG_QUALITY = 92

# Saturated colours that stay distinct after JPEG and a 64x64 resize, and far from the light,
# desaturated backgrounds.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (250, 150, 30),
    "yellow": (235, 215, 40),
    "green": (40, 160, 60),
    "cyan": (40, 200, 210),
    "blue": (40, 70, 210),
    "magenta": (210, 50, 200),
    "black": (30, 30, 30),
}
SHAPES = ("circle", "square", "triangle", "diamond")
FILLS = ("solid", "ring", "striped")
ENTITY_TYPES = ("PER", "LOC", "ORG", "OTHER")
NAMES_BY_TYPE: dict[str, tuple[str, ...]] = {
    "PER": ("Anna", "Bruno Silva", "Chloe", "Diego", "Emma Hart", "Farid", "Grace", "Hugo", "Ines", "Jonas"),
    "LOC": ("Paris", "Oslo", "New Haven", "Lima", "Cairo", "San Jose", "Rome", "Hong Kong", "Quito", "Perth"),
    "ORG": (
        "Redwood",
        "Iron Wolves",
        "Star Labs",
        "Nova Bank",
        "Tiger FC",
        "Blue Comets",
        "Apex Motors",
        "Zenith",
        "Orbit Air",
        "Delta Crew",
    ),
    "OTHER": (
        "Aero Max",
        "Quasar",
        "Nimbus 3",
        "Volt",
        "Pixelbook",
        "Echo Dot",
        "Model T",
        "Zoom X",
        "Hyper V",
        "Lumen",
    ),
}
# The ``many`` variant's second ten names of each type (after the first ten above).
MORE_NAMES_BY_TYPE: dict[str, tuple[str, ...]] = {
    "PER": ("Kofi", "Lena Park", "Mateo", "Nadia", "Omar Reyes", "Priya", "Rafael", "Sofia", "Tariq", "Yuki"),
    "LOC": ("Austin", "Berlin", "Cape Town", "Denver", "Fiji", "Geneva", "Kyoto", "Lagos", "Madrid", "Nairobi"),
    "ORG": (
        "Falcon United",
        "Green Peak",
        "Harbor Labs",
        "Kite Media",
        "Lunar FC",
        "Maple Group",
        "North Stars",
        "Pulse Radio",
        "Silver Fox",
        "Titan Works",
    ),
    "OTHER": (
        "Alpha One",
        "Boltz",
        "Cobalt 7",
        "Drift Pro",
        "Ember",
        "Flux Pad",
        "Glide S",
        "Halo Z",
        "Ion Cam",
        "Jet X",
    ),
}
LOOK_SEED = 20261201  # fixes which name wears which look; independent of the benchmark seed
TYPE_WEIGHTS = (0.35, 0.20, 0.25, 0.20)
# Chance that an entity of each type is drawn: LOC rarely, as in the real data (~57 % overall).
GROUNDED_PROBABILITY = {"PER": 0.70, "LOC": 0.35, "ORG": 0.60, "OTHER": 0.55}
ORG_BOX_COUNTS, ORG_BOX_WEIGHTS = (1, 2), (0.7, 0.3)
ENTITY_COUNTS, ENTITY_COUNT_WEIGHTS = (1, 2, 3, 4), (0.30, 0.35, 0.22, 0.13)
NO_ENTITY_PROBABILITY = 0.05
DISTRACTOR_COUNTS, DISTRACTOR_WEIGHTS = (0, 1, 2, 3), (0.15, 0.35, 0.35, 0.15)
# Box width (height) as a fraction of the image width (height): one object, or each of two copies.
OBJECT_SIDE_RANGE = (0.18, 0.28)
COPY_SIDE_RANGE = (0.16, 0.22)

# Context phrases; "{}" is the entity. None of them depends on whether or where the entity is drawn.
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
    """How a name is drawn: its colour name, shape and fill."""

    colour: str
    shape: str
    fill: str


@dataclass(frozen=True)
class Variant:
    """A preset of the generator (module docstring, "Variants"). ``None`` fields keep the default
    benchmark's behaviour, draw for draw, so ``default`` writes the same files as before variants.

    Attributes:
        name, summary: the preset's name and one line on what it changes.
        longer_side: range of the longer image side in px (log-uniform), with ``aspect`` the
            range of width / height (log-uniform); ``None``: the base size with its jitter.
        object_side: range of an object's side as a fraction of sqrt(W * H) (log-uniform; a
            team's two copies take 0.8 of it), each object about square in pixels; ``None``:
            18-28 % of the width by 18-28 % of the height (``OBJECT_SIDE_RANGE``).
        fills: the fill patterns looks are made of (``outline`` adds the border-only look).
        names_per_type: identities of each type (10 or 20).
    """

    name: str
    summary: str
    longer_side: tuple[int, int] | None = None
    aspect: tuple[float, float] | None = None
    object_side: tuple[float, float] | None = None
    fills: tuple[str, ...] = FILLS
    names_per_type: int = 10

    @property
    def names_by_type(self) -> dict[str, tuple[str, ...]]:
        extra = self.names_per_type - len(NAMES_BY_TYPE[ENTITY_TYPES[0]])
        return {t: NAMES_BY_TYPE[t] + MORE_NAMES_BY_TYPE[t][: max(0, extra)] for t in ENTITY_TYPES}


OUTLINE_FILLS = FILLS + ("outline",)
# Outline width: this fraction of the object's side, at least 2 and at most 6 px.
OUTLINE_WIDTH_RANGE, OUTLINE_PX = (0.04, 0.10), (2, 6)
REAL_SIDES, REAL_ASPECTS = (96, 640), (0.5, 3.0)
VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            "default",
            "128 x 96 px images (+-25 %), objects 18-28 % of each side, 40 identities, solid / ring / striped looks",
        ),
        Variant(
            "shapes",
            "images of every size and aspect ratio: longer side 96-640 px, width:height 1:2 to 3:1",
            longer_side=REAL_SIDES,
            aspect=REAL_ASPECTS,
            object_side=(0.18, 0.28),
        ),
        Variant(
            "outline", "outline-only looks (2-6 px borders) beside solid, ring and striped ones", fills=OUTLINE_FILLS
        ),
        Variant(
            "many", "80 identities instead of 40 from as many posts: half the examples of each look", names_per_type=20
        ),
        Variant(
            "scale", "object sides from 8 % to 50 % of the image's scale instead of 18-28 %", object_side=(0.08, 0.50)
        ),
        Variant(
            "mixed",
            "all of shapes, outline, many and scale at once",
            longer_side=REAL_SIDES,
            aspect=REAL_ASPECTS,
            object_side=(0.08, 0.50),
            fills=OUTLINE_FILLS,
            names_per_type=20,
        ),
    )
}


def get_variant(name: str | Variant) -> Variant:
    """The preset called ``name`` (a :class:`Variant` is returned as is)."""
    if isinstance(name, Variant):
        return name
    if name not in VARIANTS:
        raise QGNError(f"unknown synthetic variant {name!r}; choose from {', '.join(VARIANTS)}")
    return VARIANTS[name]


def _build_looks(
    names_by_type: dict[str, tuple[str, ...]] | None = None, fills: tuple[str, ...] = FILLS
) -> dict[str, tuple[str, Look]]:
    """Give every name its own look, each colour to ``len(names) / len(COLOURS)`` names of mixed
    types with pairwise different (shape, fill)."""
    names_by_type = NAMES_BY_TYPE if names_by_type is None else names_by_type
    rng = np.random.default_rng(LOOK_SEED)
    names = [(t, n) for t in ENTITY_TYPES for n in names_by_type[t]]
    order = rng.permutation(len(names))
    patterns = [(s, f) for s in SHAPES for f in fills]
    colours = list(COLOURS)
    looks: dict[str, tuple[str, Look]] = {}
    for rank, i in enumerate(order):
        entity_type, name = names[int(i)]
        colour = colours[rank % len(colours)]
        # The k-th name of a colour takes the k-th pattern of a per-colour shuffle: distinct patterns.
        k = rank // len(colours)
        shape, fill = patterns[
            int(np.random.default_rng([LOOK_SEED, rank % len(colours)]).permutation(len(patterns))[k])
        ]
        looks[name] = (entity_type, Look(colour, shape, fill))
    return {n: looks[n] for _, n in names}


# name -> (type, look); the whole grounding "knowledge" a model must learn from the pairs.
NAME_LOOKS: dict[str, tuple[str, Look]] = _build_looks()
ALL_NAMES: tuple[str, ...] = tuple(NAME_LOOKS)
_VARIANT_LOOKS: dict[str, dict[str, tuple[str, Look]]] = {}


def variant_looks(variant: str | Variant = "default") -> dict[str, tuple[str, Look]]:
    """name -> (type, look) of a variant's identities (``NAME_LOOKS`` for ``default``)."""
    v = get_variant(variant)
    if v.names_per_type == 10 and v.fills == FILLS:
        return NAME_LOOKS
    key = f"{v.names_per_type}:{','.join(v.fills)}"
    if key not in _VARIANT_LOOKS:
        _VARIANT_LOOKS[key] = _build_looks(v.names_by_type, v.fills)
    return _VARIANT_LOOKS[key]


def synthetic_vocabulary() -> list[str]:
    """Every word the generator can emit, deduplicated, in a fixed order (for word tokenizers)."""
    pieces = list(ALL_NAMES) + [n for names in MORE_NAMES_BY_TYPE.values() for n in names]
    pieces += [p.replace("{}", " ") for phrases in PHRASES.values() for p in phrases]
    pieces += list(CONNECTORS) + list(PREFIXES) + list(SUFFIXES) + list(FILLERS)
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
    line: int = 0  # border width in px of an ``outline`` look


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


def _sentence(
    rng: np.random.Generator, names: list[str], looks: dict[str, tuple[str, Look]] = NAME_LOOKS
) -> tuple[list[str], list[str]]:
    """Tokens and BIO tags of a 5-24 word post mentioning ``names`` in order."""
    tokens: list[str] = []
    tags: list[str] = []
    for k, name in enumerate(names):
        if k:
            tokens.append(_choice(rng, CONNECTORS))
            tags.append("O")
        entity_type = looks[name][0]
        before, after = _choice(rng, PHRASES[entity_type]).split("{}")
        name_words = name.split()
        for word in before.split():
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


def _disjoint(box: tuple[int, int, int, int], others: list[tuple[int, int, int, int]]) -> bool:
    """True if ``box`` is at least 1 px apart from every box of ``others``."""
    return all(box[0] > b[2] or box[2] < b[0] or box[1] > b[3] or box[3] < b[1] for b in others)


def _scatter(
    rng: np.random.Generator,
    size: tuple[int, int],
    count: int,
    side: Callable[[int, float], tuple[int, int]],
    redraw: bool,
) -> list[tuple[int, int, int, int]]:
    """``count`` boxes anywhere in an image of ``size``, pairwise disjoint. ``side(k, scale)`` gives
    box k's ``(w, h)`` in px (drawn again on every attempt when ``redraw``); all sides shrink by
    10 % whenever random placement gets stuck."""
    width, height = size
    scale = 1.0
    while True:
        boxes: list[tuple[int, int, int, int]] = []
        for k in range(count):
            w, h = side(k, scale)
            for attempt in range(100):
                if redraw and attempt:
                    w, h = side(k, scale)
                x1 = int(rng.integers(0, width - w + 1))
                y1 = int(rng.integers(0, height - h + 1))
                box = (x1, y1, x1 + w, y1 + h)
                if _disjoint(box, boxes):
                    boxes.append(box)
                    break
            else:
                break
        if len(boxes) == count:
            return boxes
        scale *= 0.9


def _place(
    rng: np.random.Generator, sides: list[tuple[float, float]], size: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """One box per entry of ``sides`` (a side range as a fraction of the image side), a new side
    drawn on every attempt (the default benchmark's placement)."""
    width, height = size

    def side(k: int, scale: float) -> tuple[int, int]:
        return (
            max(4, int(round(width * scale * rng.uniform(*sides[k])))),
            max(4, int(round(height * scale * rng.uniform(*sides[k])))),
        )

    return _scatter(rng, size, len(sides), side, redraw=True)


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]))))


def _place_pixels(
    rng: np.random.Generator, sides: list[tuple[float, float]], size: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """One box of each ``(w, h)`` in px (kept inside the image)."""
    width, height = size

    def side(k: int, scale: float) -> tuple[int, int]:
        w0, h0 = sides[k]
        return min(width - 1, max(4, int(round(w0 * scale)))), min(height - 1, max(4, int(round(h0 * scale))))

    return _scatter(rng, size, len(sides), side, redraw=False)


def make_post(
    seed: int,
    split: str,
    index: int,
    image_size: tuple[int, int] = (128, 96),
    size_jitter: float = 0.25,
    variant: str | Variant = "default",
) -> SyntheticPost:
    """Generate post ``index`` of ``split`` of ``variant``; depends only on its arguments."""
    v = get_variant(variant)
    name_looks = variant_looks(v)
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    if v.longer_side is None:
        base_w, base_h = image_size
        size = (
            int(round(base_w * (1 + size_jitter * rng.uniform(-1, 1)))),
            int(round(base_h * (1 + size_jitter * rng.uniform(-1, 1)))),
        )
    else:
        longer, aspect = _log_uniform(rng, v.longer_side), _log_uniform(rng, v.aspect or (1.0, 1.0))
        size = (
            (int(round(longer)), int(round(longer / aspect)))
            if aspect >= 1
            else (int(round(longer * aspect)), int(round(longer)))
        )
    count = 0 if rng.random() < NO_ENTITY_PROBABILITY else _choice(rng, ENTITY_COUNTS, ENTITY_COUNT_WEIGHTS)
    names: list[str] = []
    names_by_type = v.names_by_type
    for _ in range(count):
        entity_type = _choice(rng, ENTITY_TYPES, TYPE_WEIGHTS)
        name = _choice(rng, tuple(n for n in names_by_type[entity_type] if n not in names))
        names.append(name)
    owners: list[str | None] = []  # one entry per object to draw
    copies_of: list[int] = []
    for name in names:
        entity_type = name_looks[name][0]
        if rng.random() < GROUNDED_PROBABILITY[entity_type]:
            copies = _choice(rng, ORG_BOX_COUNTS, ORG_BOX_WEIGHTS) if entity_type == "ORG" else 1
            owners += [name] * copies
            copies_of += [copies] * copies
    # Distractors wear the looks of names the post does not mention.
    others = tuple(n for n in name_looks if n not in names)
    distractors = [str(n) for n in rng.permutation(others)[: _choice(rng, DISTRACTOR_COUNTS, DISTRACTOR_WEIGHTS)]]
    owners += [None] * len(distractors)
    copies_of += [1] * len(distractors)
    if v.object_side is None:
        boxes = _place(rng, [OBJECT_SIDE_RANGE if c == 1 else COPY_SIDE_RANGE for c in copies_of], size)
    else:
        scale = float(np.sqrt(size[0] * size[1]))
        sides = []
        for c in copies_of:
            side = _log_uniform(rng, v.object_side) * scale * (1.0 if c == 1 else 0.8)
            sides.append((side * rng.uniform(0.9, 1.1), side * rng.uniform(0.9, 1.1)))
        boxes = _place_pixels(rng, sides, size)
    looks = [name_looks[o][1] for o in owners if o is not None] + [name_looks[d][1] for d in distractors]
    objects = []
    for look, box, owner in zip(looks, boxes, owners):
        line = 0
        if look.fill == "outline":
            side = min(box[2] - box[0], box[3] - box[1])
            line = int(np.clip(round(side * rng.uniform(*OUTLINE_WIDTH_RANGE)), *OUTLINE_PX))
        objects.append(_Object(look, box, owner, line))
    tokens, tags = _sentence(rng, names, name_looks)
    return SyntheticPost(f"{split}_{index:05d}", split, index, tokens, tags, objects, size)


def _shape_mask(shape: str, box: tuple[int, int, int, int], size: tuple[int, int], line: int = 0) -> Image.Image:
    """A 1-bit mask of ``shape`` filling ``box`` (x2/y2 exclusive) in an image of ``size``; with
    ``line`` > 0, only its border, ``line`` px wide, inside the box."""
    mask = Image.new("1", size, 0)
    draw = ImageDraw.Draw(mask)
    x1, y1, x2, y2 = box
    right, bottom = x2 - 1, y2 - 1  # PIL includes the end pixel
    paint = {"outline": 1, "width": line} if line > 0 else {"fill": 1}
    if shape == "circle":
        draw.ellipse([x1, y1, right, bottom], **paint)
    elif shape == "square":
        draw.rectangle([x1, y1, right, bottom], **paint)
    elif shape == "triangle":
        draw.polygon([(x1, bottom), (right, bottom), ((x1 + right) / 2, y1)], **paint)
    else:
        mid_x, mid_y = (x1 + right) / 2, (y1 + bottom) / 2
        draw.polygon([(mid_x, y1), (right, mid_y), (mid_x, bottom), (x1, mid_y)], **paint)
    return mask


def _draw(image: Image.Image, obj: _Object) -> None:
    """Paint one object: the shape in its colour, then its fill pattern in white."""
    colour = COLOURS[obj.look.colour]
    if obj.look.fill == "outline":
        image.paste(colour, mask=_shape_mask(obj.look.shape, obj.box, image.size, max(1, obj.line)))
        return
    outer = _shape_mask(obj.look.shape, obj.box, image.size)
    image.paste(colour, mask=outer)
    x1, y1, x2, y2 = obj.box
    if obj.look.fill == "ring":
        # a hollow centre: the same shape at half the size, centred
        w, h = x2 - x1, y2 - y1
        inner = (x1 + w // 4, y1 + h // 4, x2 - w // 4, y2 - h // 4)
        image.paste((250, 250, 250), mask=_shape_mask(obj.look.shape, inner, image.size))
    elif obj.look.fill == "striped":
        # five horizontal bands, the 2nd and 4th white, clipped to the shape
        bands = Image.new("1", image.size, 0)
        draw = ImageDraw.Draw(bands)
        h = y2 - y1
        for k in (1, 3):
            draw.rectangle([x1, y1 + k * h // 5, x2 - 1, y1 + (k + 1) * h // 5 - 1], fill=1)
        stripes = Image.fromarray(np.asarray(bands) & np.asarray(outer))
        image.paste((250, 250, 250), mask=stripes)


def render_image(post: SyntheticPost, seed: int) -> bytes:
    """The post's JPEG bytes: a light, slightly noisy background with the objects."""
    # Its own stream, so changing how pixels are drawn never changes the annotations.
    rng = np.random.default_rng([seed, SPLITS.index(post.split), post.index, 1])
    width, height = post.size
    base = rng.uniform(185, 235) + rng.uniform(-12, 12, size=3)  # light, nearly grey tint
    gradient = np.linspace(-10, 10, width)[None, :, None] * rng.choice([-1, 1])
    noise = rng.normal(0, 4, size=(height, width, 3))
    pixels = np.clip(base[None, None, :] + gradient + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    for obj in post.objects:
        _draw(image, obj)
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
        f"\t<object>\n\t\t<name>{escape(o.name)}</name>\n\t\t<pose>Unspecified</pose>\n"  # type: ignore[arg-type]  # named: o.name is set
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


def _manifest(
    seed: int, counts: dict[str, int], image_size: tuple[int, int], size_jitter: float, variant: str = "default"
) -> dict:
    manifest = {
        "generator": "qgn.data.synthetic",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "counts": counts,
        "image_size": list(image_size),
        "size_jitter": size_jitter,
        "jpeg_quality": JPEG_QUALITY,
        "entity_types": list(ENTITY_TYPES),
    }
    if variant != "default":  # the default's manifest (and so its cached folders) stay as before variants
        manifest["variant"] = variant
    return manifest


def _is_complete(out_dir: Path, manifest: dict) -> bool:
    """True if ``out_dir`` holds a finished benchmark written with exactly ``manifest``."""
    try:
        if json.loads((out_dir / MANIFEST_NAME).read_text(encoding="utf-8")) != manifest:
            return False
    except (OSError, ValueError):
        return False
    images = out_dir / "images"
    return (
        all((out_dir / "txt" / f"{s}.txt").is_file() for s in SPLITS)
        and images.is_dir()
        and (sum(1 for _ in images.iterdir()) == sum(manifest["counts"].values()))
    )


def _readme(manifest: dict) -> str:
    variant = get_variant(manifest.get("variant", "default"))
    rows = "\n".join(
        f"| {name} | {t} | {look.colour} | {look.shape} | {look.fill} |"
        for name, (t, look) in variant_looks(variant).items()
    )
    return (
        "# Synthetic grounded-NER benchmark (generated by qgn.data.synthetic)\n\n"
        f"Generator version {manifest['version']}, variant {variant.name} ({variant.summary}), seed "
        f"{manifest['seed']}, posts {manifest['counts']}.\n"
        "Twitter-GMNER layout: `txt/{split}.txt`, `xml/<id>.xml` (only posts with a boxed entity),\n"
        "`images/<id>.jpg`. Each name is always drawn with the same colour, shape and fill; the text\n"
        "never says where or whether it is drawn. Unmentioned objects (distractors) wear other names'\n"
        "looks and lie anywhere, so only an entity's look tells which object, if any, is its own.\n\n"
        "| name | type | colour | shape | fill |\n|---|---|---|---|---|\n" + rows + "\n"
    )


def _write_benchmark(target: Path, manifest: dict) -> None:
    seed, counts = manifest["seed"], manifest["counts"]
    image_size, jitter = tuple(manifest["image_size"]), manifest["size_jitter"]
    variant = manifest.get("variant", "default")
    for sub in ("txt", "xml", "images"):
        (target / sub).mkdir(parents=True)
    for split in SPLITS:
        blocks = []
        for index in range(counts[split]):
            post = make_post(seed, split, index, image_size, jitter, variant)
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
    variant: str = "default",
) -> Path:
    """Write the synthetic benchmark to ``out_dir`` (Twitter-GMNER layout plus ``images/``).

    Args:
        out_dir: target folder; created if absent.
        num_train, num_dev, num_test: posts per split.
        image_size: base ``(width, height)`` in pixels.
        size_jitter: each post's width and height are the base times ``1 + u * size_jitter``,
            ``u`` uniform in [-1, 1] (0 gives every image ``image_size``).
        seed: everything is a function of the seed (byte-identical files).
        variant: a preset of ``VARIANTS`` (module docstring); ``shapes`` and ``mixed`` draw their
            own image sizes and ignore ``image_size`` / ``size_jitter``.
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
        raise QGNError(
            f"bad synthetic benchmark settings: counts {counts}, image_size {image_size}, "
            f"size_jitter {size_jitter} (need counts >= 0, sides >= 32, 0 <= jitter < 0.5)"
        )
    get_variant(variant)  # an unknown name fails before any work
    out = Path(out_dir)
    manifest = _manifest(int(seed), counts, (int(image_size[0]), int(image_size[1])), float(size_jitter), variant)
    if _is_complete(out, manifest):
        return out
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise QGNError(
            f"{out} holds other files or another synthetic benchmark; pass overwrite=True or choose another folder"
        )
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
