"""Dataset statistics, counted as docs/data.md ("qgn data stats") describes.

"boxes" is the number of xml ``<object>`` elements for the benchmark layouts (v2.0 test: 1,242) and,
for JSONL, the number of distinct (entity string, box) pairs per post, which is the same number for
data converted from the benchmark (when every xml name matches an entity). "entity-box links" counts a box once per entity
that receives it (a repeated string shares its boxes), so it can exceed "boxes".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qgn.data.images import check_images
from qgn.data.records import Post
from qgn.data.twitter import GMNER_TYPES, ReadReport

# Beyond this many types (Twitter-FMNERG has 51 fine types) the table shows coarse rows only.
_MAX_TYPE_ROWS = 12


@dataclass
class SplitStats:
    """Counts of one split. ``None`` means "does not apply" (JSONL has no xml; no image check)."""

    split: str
    layout: str
    posts: int
    posts_without_entities: int
    entities: int
    entities_per_type: dict[str, int]
    grounded_entities: int
    grounded_per_type: dict[str, int]
    boxes: int
    entity_box_links: int
    posts_without_boxes: int
    posts_without_xml: int | None = None
    unmatched_xml_names: int | None = None
    unmatched_xml_boxes: int | None = None
    stray_i_tags: int = 0
    entities_per_coarse_type: dict[str, int] | None = None
    missing_images: int | None = None
    unreadable_images: int | None = None


def _ordered(counter: Counter, order: Sequence[str]) -> dict[str, int]:
    known = [t for t in order if t in counter]
    rest = sorted((t for t in counter if t not in order), key=lambda t: (-counter[t], t))
    return {t: counter[t] for t in known + rest}


def post_stats(
    posts: Sequence[Post], split: str = "", report: ReadReport | None = None, image_dir: str | Path | None = None
) -> SplitStats:
    """Count one split's posts; ``report`` adds the xml facts, ``image_dir`` the missing images."""
    types, grounded, coarse = Counter[str](), Counter[str](), Counter[str]()
    links = distinct_boxes = without_boxes = without_entities = 0
    for post in posts:
        without_entities += not post.entities
        post_boxes: set[tuple[str, Any]] = set()
        for entity in post.entities:
            types[entity.type] += 1
            if entity.coarse_type is not None:
                coarse[entity.coarse_type] += 1
            if entity.boxes:
                grounded[entity.type] += 1
            links += len(entity.boxes)
            # Keyed by surface string as well: two names boxed at the same place are two xml objects,
            # while a repeated string sharing its boxes is not.
            surface = " ".join(post.tokens[entity.start : entity.end])
            post_boxes.update((surface, box) for box in entity.boxes)
        distinct_boxes += len(post_boxes)
        without_boxes += not post_boxes
    has_xml = report is not None and report.xml_objects is not None
    stats = SplitStats(
        split=split,
        layout=report.layout if report else "",
        posts=len(posts),
        posts_without_entities=without_entities,
        entities=sum(types.values()),
        entities_per_type=_ordered(types, GMNER_TYPES),
        grounded_entities=sum(grounded.values()),
        grounded_per_type=_ordered(grounded, list(_ordered(types, GMNER_TYPES))),
        boxes=report.xml_objects if has_xml else distinct_boxes,  # type: ignore[union-attr, arg-type]  # has_xml: report and its xml counts are set
        entity_box_links=links,
        posts_without_boxes=without_boxes,
        posts_without_xml=len(posts) - report.xml_files if has_xml else None,  # type: ignore[union-attr, operator]  # has_xml: report and its xml counts are set
        unmatched_xml_names=report.unmatched_names if has_xml else None,  # type: ignore[union-attr]  # has_xml: report and its xml counts are set
        unmatched_xml_boxes=report.unmatched_boxes if has_xml else None,  # type: ignore[union-attr]  # has_xml: report and its xml counts are set
        stray_i_tags=report.stray_i_tags if report else 0,
        entities_per_coarse_type=_ordered(coarse, []) if coarse else None,
    )
    if image_dir is not None or any(post.image_path for post in posts):
        check = check_images(posts, image_dir)
        stats.missing_images, stats.unreadable_images = len(check.missing), len(check.unreadable)
    return stats


def dataset_stats(
    path: str | Path,
    split: str | None = None,
    image_dir: str | Path | None = None,
    fmnerg_xml_dir: str | Path | None = None,
) -> dict[str, SplitStats]:
    """Stats of one split, or of every split of a dataset folder (a JSONL file is one split)."""
    from qgn.data import available_splits, read_dataset

    splits = [split] if split else available_splits(path)
    result = {}
    for name in splits:
        report = ReadReport()
        # Images are counted here, not resolved: a missing image must not stop the count.
        posts = read_dataset(path, split=name, fmnerg_xml_dir=fmnerg_xml_dir, report=report)
        result[name] = post_stats(posts, name, report, image_dir)
    return result


def _total(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    if not present:
        return None
    if isinstance(present[0], dict):
        merged: Counter = Counter()
        for value in present:
            merged.update(value)
        return _ordered(merged, list(present[0]))
    return sum(present) if isinstance(present[0], int) else ""


def stats_to_dict(stats: dict[str, SplitStats], path: str | Path = "") -> dict[str, Any]:
    """JSON-ready: ``{"path", "splits": {split: {...}}, "total": {...}}`` (total when > 1 split)."""
    splits = {name: asdict(s) for name, s in stats.items()}
    out: dict[str, Any] = {"path": str(path), "splits": splits}
    if len(splits) > 1:
        keys = [k for k in next(iter(splits.values())) if k not in ("split", "layout")]
        out["total"] = {k: _total([s[k] for s in splits.values()]) for k in keys}
    return out


def format_stats_table(stats: dict[str, SplitStats], path: str | Path = "") -> str:
    """A plain-text table: one column per split (plus total), one row per count."""
    data = stats_to_dict(stats, path)
    columns = dict(data["splits"])
    if "total" in data:
        columns["total"] = data["total"]
    layout = next(iter(stats.values())).layout if stats else ""
    rows: list[tuple[str, list[Any]]] = []

    def add(label: str, key: str, sub: str | None = None) -> None:
        values = [(c[key] or {}).get(sub, 0) if sub else c[key] for c in columns.values()]
        rows.append((label, values))

    add("posts", "posts")
    add("posts without entities", "posts_without_entities")
    add("entities", "entities")
    every_type = list(_total([c["entities_per_type"] for c in columns.values()]) or {})
    show_types = len(every_type) <= _MAX_TYPE_ROWS
    for name in every_type if show_types else []:
        add(f"  {name}", "entities_per_type", name)
    coarse = _total([c["entities_per_coarse_type"] for c in columns.values()])
    for name in coarse or {}:
        add(f"  coarse {name}", "entities_per_coarse_type", name)
    add("grounded entities (>=1 box)", "grounded_entities")
    for name in every_type if show_types else []:
        add(f"  {name}", "grounded_per_type", name)
    add("boxes (xml objects)" if layout != "jsonl" else "boxes (distinct per string)", "boxes")
    add("entity-box links", "entity_box_links")
    if layout != "jsonl":
        add("posts without xml", "posts_without_xml")
        add("xml names matching no entity", "unmatched_xml_names")
        add("  their boxes", "unmatched_xml_boxes")
        add("stray I- tags repaired", "stray_i_tags")
    add("posts without any box", "posts_without_boxes")
    add("missing images", "missing_images")
    add("unreadable images", "unreadable_images")

    header = ["", *columns]
    body = [[label, *("n/a" if v is None else str(v) for v in values)] for label, values in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [f"{path} ({layout})" if path else f"({layout})"]
    for row in [header, *body]:
        lines.append("  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]))
    if not show_types:
        lines.append(f"({len(every_type)} types: per-type counts with --json)")
    return "\n".join(lines)
