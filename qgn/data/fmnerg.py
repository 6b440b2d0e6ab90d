"""Twitter-FMNERG (fine-grained GMNER, ACM MM'23): type inventory and reader.

The text files have three columns, ``token<TAB>coarse-BIO<TAB>fine-BIO`` in lower case
(``Garfield\\tB-location\\tB-park``). The release ships no xml: boxes come from the GMNER v2.0 xml
folder and are linked by exact string, as for GMNER (docs/data.md, "Twitter-FMNERG").
``Entity.type`` is the fine type (what the model predicts and the scorer compares);
``Entity.coarse_type`` is its coarse category (for the per-category F1 of the paper's Table II).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from qgn.data.records import Entity, Post
from qgn.data.twitter import (
    ReadReport,
    TaggedBlock,
    attach_xml,
    bio_spans,
    check_type,
    count_text_columns,
    read_tagged_blocks,
    split_file,
    warn_stray_total,
)
from qgn.errors import QGNError

logger = logging.getLogger(__name__)

# 8 coarse categories -> 51 fine types, as the FMNERG release's loader defines them.
FMNERG_COARSE_TO_FINE: dict[str, tuple[str, ...]] = {
    "person": (
        "politician",
        "musician",
        "actor",
        "artist",
        "athlete",
        "author",
        "businessman",
        "character",
        "coach",
        "director",
        "intellectual",
        "journalist",
        "person_other",
    ),
    "location": ("city", "country", "state", "continent", "location_other", "park", "road"),
    "building": ("building_other", "cultural_place", "entertainment_place", "sports_facility"),
    "organization": (
        "company",
        "educational_institution",
        "band",
        "government_agency",
        "news_agency",
        "organization_other",
        "political_party",
        "social_organization",
        "sports_league",
        "sports_team",
    ),
    "other": ("animal", "award", "medical_thing", "website", "ordinance"),
    "art": ("art_other", "film_and_television_works", "magazine", "music", "written_work"),
    "event": ("event_other", "festival", "sports_event"),
    "product": ("brand_name_products", "game", "product_other", "software"),
}
FMNERG_COARSE_TYPES: tuple[str, ...] = tuple(FMNERG_COARSE_TO_FINE)
FMNERG_FINE_TYPES: tuple[str, ...] = tuple(fine for group in FMNERG_COARSE_TO_FINE.values() for fine in group)
# The official evaluation script lists one more person type that the loader does not; it is
# accepted (with a logged note) so such data still reads, but it is not one of the 51.
FMNERG_EXTRA_FINE_TYPES: tuple[str, ...] = ("common_person",)
FMNERG_FINE_TO_COARSE: dict[str, str] = {
    **{fine: coarse for coarse, group in FMNERG_COARSE_TO_FINE.items() for fine in group},
    "common_person": "person",
}
FMNERG_COARSE_TO_GMNER: dict[str, str] = {
    "person": "PER",
    "location": "LOC",
    "building": "LOC",
    "organization": "ORG",
    "other": "OTHER",
    "art": "OTHER",
    "event": "OTHER",
    "product": "OTHER",
}
FMNERG_TEXT_FOLDERS = ("txt", "txt_fine")


def read_twitter_fmnerg(
    data_dir: str | Path,
    split: str,
    xml_dir: str | Path,
    image_dir: str | Path | None = None,
    missing_images: str | None = "fail",
    entity_types: Sequence[str] | None = None,
    report: ReadReport | None = None,
) -> list[Post]:
    """Read one Twitter-FMNERG split, with boxes from the GMNER v2.0 xml folder.

    Args:
        data_dir: folder with ``txt/<split>.txt`` (or ``txt_fine/<split>.txt`` as released).
        split: ``train``, ``dev`` or ``test``.
        xml_dir: the GMNER v2.0 ``xml/`` folder. When ``xml_dir/../txt/<split>.txt`` exists the spans
            are checked against GMNER v2.0 and differences are logged.
        image_dir, missing_images: as for :func:`qgn.data.twitter.read_twitter_gmner`.
        entity_types: allowed fine types; default the 51 fine types plus ``common_person``.
        report: filled with xml and repair counts when given.
    """
    from qgn.data.images import maybe_resolve_images

    report = report if report is not None else ReadReport()
    allowed = list(entity_types) if entity_types else [*FMNERG_FINE_TYPES, *FMNERG_EXTRA_FINE_TYPES]
    path = split_file(data_dir, split, FMNERG_TEXT_FOLDERS)
    where = str(path)
    report.layout, report.path = "twitter-fmnerg", where
    blocks = read_tagged_blocks(path, num_columns=3)
    posts: list[Post] = []
    stray: list[int] = []
    disagreements: list[str] = []
    extra_seen: set[str] = set()
    for block in blocks:
        coarse_by_span = {(s.start, s.end): s.label for s in bio_spans(block, 0, where)}
        entities = []
        for span in bio_spans(block, 1, where, stray):
            check_type(span.label, allowed, where, span.line)
            if span.label in FMNERG_EXTRA_FINE_TYPES:
                extra_seen.add(span.label)
            column_coarse = coarse_by_span.get((span.start, span.end))
            coarse = FMNERG_FINE_TO_COARSE.get(span.label, column_coarse)
            if column_coarse != coarse:
                disagreements.append(f"line {span.line}: {column_coarse}/{span.label}")
            entities.append(Entity(span.start, span.end, span.label, coarse_type=coarse))
        posts.append(Post(id=block.id, tokens=block.tokens, entities=entities))
    warn_stray_total(where, stray)
    report.stray_i_tags = len(stray)
    if extra_seen:
        logger.info(
            "%s: fine type(s) %s accepted (listed by the FMNERG evaluation script, not its loader)",
            where,
            ", ".join(sorted(extra_seen)),
        )
    if disagreements:
        logger.warning(
            "%s: %d entities whose coarse column does not give the fine type's category "
            "(coarse taken from the fine type), e.g. %s",
            where,
            len(disagreements),
            "; ".join(disagreements[:3]),
        )
    xml_dir = Path(xml_dir)
    if not xml_dir.is_dir():
        raise QGNError(f"Twitter-FMNERG boxes come from the GMNER v2.0 xml folder; {xml_dir} is not a folder")
    attach_xml(posts, xml_dir, report, where)
    _compare_with_gmner(blocks, xml_dir.parent / "txt" / f"{split}.txt", where)
    return maybe_resolve_images(posts, image_dir, missing_images, report)


def _compare_with_gmner(blocks: list[TaggedBlock], gmner_path: Path, where: str) -> None:
    """Log posts whose tokens, spans or coarse->GMNER types differ from the GMNER v2.0 file.

    The FMNERG text is meant to be GMNER v2.0 with finer labels (docs/data.md, "Twitter-FMNERG"), which the box
    linking relies on; this check only informs, since the GMNER file may be absent or another version.
    """
    if not gmner_path.is_file() or count_text_columns(gmner_path) != 2:
        return  # no GMNER text beside the xml folder (or it is this FMNERG text itself)
    gmner = {b.id: b for b in read_tagged_blocks(gmner_path, num_columns=2)}
    differ, absent = [], 0
    for block in blocks:
        other = gmner.get(block.id)
        if other is None:
            absent += 1
            continue
        ours = {(s.start, s.end, FMNERG_COARSE_TO_GMNER.get(s.label, s.label)) for s in bio_spans(block, 0, where)}
        theirs = {(s.start, s.end, s.label) for s in bio_spans(other, 0, str(gmner_path))}
        if block.tokens != other.tokens or ours != theirs:
            differ.append(block.id)
    if differ or absent:
        logger.warning(
            "%s: %d posts differ from %s (tokens, spans or types) and %d are not in it, e.g. %s",
            where,
            len(differ),
            gmner_path,
            absent,
            ", ".join(differ[:3]),
        )
    else:
        logger.info("%s: tokens, spans and types agree with %s", where, gmner_path)
