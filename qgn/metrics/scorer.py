"""Reference scorer for GMNER, MNER, EEG and Twitter-FMNERG (the benchmark's definition).

A predicted triple (word span, type, region) is correct for a gold entity (span, type, boxes B) iff

- GMNER: same span, same type, and ``region_ok``;
- MNER: same span and same type (the region is ignored);
- EEG: same span and ``region_ok`` (the type is ignored);

where ``region_ok`` means: B empty and the predicted box is ``None``, or B non-empty and the
predicted box has IoU >= ``iou_threshold`` with at least one box of B. Matching is one-to-one
inside a post (maximum matching, so the order of the predictions can never change a count);
each gold entity counts once however many boxes it has; duplicate predictions are false
positives; nothing is deduplicated. Counts are micro over the whole split:
P = TP / #pred, R = TP / #gold, F1 = 2PR / (P + R), all in percent, 0 when undefined.
See docs/evaluation.md for the full protocol and how it differs from MQSPN's evaluator.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from qgn.data.records import Entity, Post, Prediction
from qgn.errors import DataError, QGNError
from qgn.metrics.prediction_file import (  # noqa: F401  (re-exported: the file format lives beside its checks)
    PredictionSet,
    check_prediction_fields,
    read_predictions,
    write_predictions,
)

K = TypeVar("K", bound=Hashable)  # a grouping key
METRICS = ("GMNER", "MNER", "EEG")
MATCH_KEYS = ("span", "string")
# Where GMNER is lost: every gold entity falls in exactly one of the first six, and "spurious"
# counts predictions (see :func:`_breakdown`).
BREAKDOWN_GOLD = ("correct", "missed", "wrong_type", "grounded_without_box", "grounded_wrong_box", "boxless_with_box")
BREAKDOWN_PRED = ("spurious",)


def box_iou_xyxy(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two ``(x1, y1, x2, y2)`` pixel boxes, area ``(x2 - x1) * (y2 - y1)`` (no +1).

    The no-+1 convention is the one of ``torchvision.ops.box_iou``, which the reference
    implementations use; degenerate (zero-area) boxes have IoU 0 with everything.
    """
    inter_w = min(a[2], b[2]) - max(a[0], b[0])
    inter_h = min(a[3], b[3]) - max(a[1], b[1])
    if inter_w <= 0 or inter_h <= 0:
        return 0.0
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union)


@dataclass(frozen=True)
class MetricRow:
    """Raw counts of one metric (or one type of one metric) and the percentages derived from them."""

    tp: int
    n_pred: int
    n_gold: int

    @property
    def precision(self) -> float:
        return 100.0 * self.tp / self.n_pred if self.n_pred else 0.0

    @property
    def recall(self) -> float:
        return 100.0 * self.tp / self.n_gold if self.n_gold else 0.0

    @property
    def f1(self) -> float:
        # 2PR/(P+R) written on the counts: 2TP/(#pred+#gold); equal, and exact in floating point.
        return 200.0 * self.tp / (self.n_pred + self.n_gold) if self.tp else 0.0

    def to_dict(self) -> dict[str, float | int]:
        return {
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "tp": self.tp,
            "n_pred": self.n_pred,
            "n_gold": self.n_gold,
        }


@dataclass
class ScoreReport:
    """Everything :func:`score` computes.

    Attributes:
        overall: ``{"GMNER" | "MNER" | "EEG": MetricRow}``, micro over the split.
        per_type: ``{"GMNER" | "MNER": {type: MetricRow}}``; a prediction counts in its own type's
            #pred, a gold in its own type's #gold (a wrong-type prediction is an FP in one row and
            the missed gold an FN in another).
        fmnerg_coarse / fmnerg_fine: FMNERG GMNER rows per coarse category / per fine type, or
            ``None`` when scored without ``fine_to_coarse``. "All" is ``overall["GMNER"]``.
        n_posts: gold posts scored; n_posts_without_predictions: of those, how many had no entry
            in the prediction mapping (scored as "predicted nothing").
        breakdown: where GMNER is lost, as counts: each gold entity is ``correct``, ``missed``
            (no prediction with its span), ``wrong_type`` (its span, never its type),
            ``grounded_without_box`` / ``grounded_wrong_box`` (span and type right, the entity has
            a box, the prediction none / none with IoU >= threshold) or ``boxless_with_box``; and
            ``spurious`` predictions have a span of no gold entity ("span": the match key, the
            surface string under ``match_by="string"``). Matched one-to-one as the scores are:
            ``correct`` is the GMNER TP, ``correct`` plus the three region errors the MNER TP, and
            the six gold categories sum to #gold (see :func:`_breakdown`).
    """

    overall: dict[str, MetricRow]
    per_type: dict[str, dict[str, MetricRow]]
    n_posts: int
    n_posts_without_predictions: int
    iou_threshold: float
    match_by: str
    fmnerg_coarse: dict[str, MetricRow] | None = None
    fmnerg_fine: dict[str, MetricRow] | None = None
    breakdown: dict[str, int] | None = None

    def breakdown_rows(self) -> dict[str, dict[str, float]]:
        """``{category: {"count", "share"}}``: shares in percent, of #gold for the gold categories
        and of #pred for ``spurious`` (0 when that total is 0)."""
        rows = {}
        for name, count in (self.breakdown or {}).items():
            total = self.gmner.n_pred if name in BREAKDOWN_PRED else self.gmner.n_gold
            rows[name] = {"count": count, "share": 100.0 * count / total if total else 0.0}
        return rows

    def __getitem__(self, metric: str) -> MetricRow:
        return self.overall[metric]

    @property
    def gmner(self) -> MetricRow:
        return self.overall["GMNER"]

    @property
    def mner(self) -> MetricRow:
        return self.overall["MNER"]

    @property
    def eeg(self) -> MetricRow:
        return self.overall["EEG"]

    def macro_f1(self, metric: str = "GMNER") -> float:
        """Mean per-type F1 over the types that occur in gold or predictions (an extra, not the headline)."""
        rows = self.per_type[metric]
        return sum(r.f1 for r in rows.values()) / len(rows) if rows else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict: the three metrics, per-type rows, optional FMNERG rows, counts, settings."""
        out: dict[str, Any] = {name: row.to_dict() for name, row in self.overall.items()}
        out["per_type"] = {m: {t: r.to_dict() for t, r in rows.items()} for m, rows in self.per_type.items()}
        out["macro_f1"] = {m: self.macro_f1(m) for m in self.per_type}
        if self.fmnerg_coarse is not None:
            out["fmnerg"] = {
                "All": self.gmner.to_dict(),
                "coarse": {c: r.to_dict() for c, r in self.fmnerg_coarse.items()},
                "fine": {t: r.to_dict() for t, r in (self.fmnerg_fine or {}).items()},
            }
        if self.breakdown is not None:
            out["breakdown"] = self.breakdown_rows()
        out.update(
            n_posts=self.n_posts,
            n_posts_without_predictions=self.n_posts_without_predictions,
            iou_threshold=self.iou_threshold,
            match_by=self.match_by,
        )
        return out

    def format_table(self, per_type: bool = True) -> str:
        """A readable table with the raw counts beside every figure (see :mod:`qgn.metrics.report`)."""
        from qgn.metrics.report import format_report

        return format_report(self, per_type=per_type)


# ----------------------------------------------------------------------------- validation
def _prediction_error(pred: Prediction, post: Post, index: int, types: set[str] | None) -> str | None:
    problem = check_prediction_fields(pred.start, pred.end, pred.type, pred.box)
    if problem is None and pred.end > len(post.tokens):
        problem = f"span [{pred.start}, {pred.end}) is out of range of the post's {len(post.tokens)} tokens"
    if problem is None and types is not None and pred.type not in types:
        problem = f"unknown type {pred.type!r} (known: {', '.join(sorted(types))})"
    return None if problem is None else f"post {post.id!r}, entity {index}: {problem}"


def _where(predictions: Mapping[str, Any], post_id: str) -> tuple[str | None, int | None]:
    """File and line of a post's predictions when they came from :func:`read_predictions`."""
    return getattr(predictions, "path", None), getattr(predictions, "lines", {}).get(post_id)


# ----------------------------------------------------------------------------- matching
def _max_matching(n_pred: int, n_gold: int, ok: Callable[[int, int], bool]) -> int:
    """Size of a maximum one-to-one matching between ``n_pred`` predictions and ``n_gold`` golds.

    With one gold (every span-keyed group, since BIO spans are unique) this is "any prediction
    correct"; several golds share a key only under string matching or in hand-built data, and
    then a maximum matching keeps the count independent of the prediction order.
    """
    if n_pred == 0 or n_gold == 0:
        return 0
    if n_gold == 1:
        return int(any(ok(i, 0) for i in range(n_pred)))
    import numpy as np
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching

    edges = np.array([[ok(i, j) for j in range(n_gold)] for i in range(n_pred)], dtype=np.int8)
    if not edges.any():
        return 0
    return int((maximum_bipartite_matching(csr_matrix(edges), perm_type="column") >= 0).sum())


def _matched_golds(n_pred: int, n_gold: int, ok: Callable[[int, int], bool]) -> list[int]:
    """The golds of a maximum one-to-one matching, chosen in gold order: gold ``j`` is kept when the
    kept ones and ``j`` can all be matched at once. Matchable sets of golds form a matroid, so this
    keeps :func:`_max_matching` many, and which ones never depends on the order of the predictions."""
    kept: list[int] = []
    for j in range(n_gold):
        trial = [*kept, j]
        if _max_matching(n_pred, len(trial), lambda i, k: ok(i, trial[k])) == len(trial):
            kept.append(j)
    return kept


def _breakdown(
    entities: Sequence[Entity],
    preds: Sequence[Prediction],
    key: Callable[[int, int], Hashable],
    region_ok: Callable[[Prediction, Entity], bool],
) -> Counter[str]:
    """One post's contribution to :attr:`ScoreReport.breakdown`, one-to-one like the scorer, so that
    ``correct`` is the GMNER TP, ``correct`` plus the three region errors the MNER TP, and the gold
    categories sum to #gold, in both match modes.

    The golds and predictions of one key (span, or string) and type are matched as the scorer
    matches them: ``correct`` for the golds of a maximum matching on the region; of the others, as
    many as there are further predictions of their key and type get the region error of those
    predictions (``boxless_with_box``, ``grounded_without_box``, ``grounded_wrong_box``). A gold left
    without a prediction of its type is ``wrong_type`` while predictions of its key that no gold of
    their type took remain, else ``missed``. Ties go to the golds in their order in the post."""
    counts: Counter[str] = Counter()
    by_key = _group(preds, lambda p: key(p.start, p.end))
    golds_by_key = _group(entities, lambda e: key(e.start, e.end))
    counts["spurious"] += sum(len(group) for k, group in by_key.items() if k not in golds_by_key)
    for k, golds in golds_by_key.items():
        same_key = by_key.get(k, [])
        spare = len(same_key)  # predictions of this key that no gold of their own type takes
        without_typed: list[Entity] = []
        for type_, typed_golds in _group(golds, lambda e: e.type).items():
            typed = [p for p in same_key if p.type == type_]
            used = min(len(typed), len(typed_golds))  # the MNER TP of this key and type
            spare -= used
            right = _matched_golds(len(typed), len(typed_golds), lambda i, j: region_ok(typed[i], typed_golds[j]))
            counts["correct"] += len(right)
            others = [g for j, g in enumerate(typed_golds) if j not in right]
            for entity in others[: used - len(right)]:
                if not entity.boxes:
                    counts["boxless_with_box"] += 1
                elif all(p.box is None for p in typed):
                    counts["grounded_without_box"] += 1
                else:
                    counts["grounded_wrong_box"] += 1
            without_typed += others[used - len(right) :]
        for _ in without_typed:  # only counts: which gold gets which category does not matter
            if spare > 0:
                counts["wrong_type"] += 1
                spare -= 1
            else:
                counts["missed"] += 1
    return counts


def _group(items: Iterable[Any], key: Callable[[Any], K]) -> dict[K, list[Any]]:
    groups: dict[K, list[Any]] = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    return groups


def score(
    gold: Sequence[Post],
    predictions: Mapping[str, Sequence[Prediction]],
    iou_threshold: float = 0.5,
    fine_to_coarse: Mapping[str, str] | None = None,
    match_by: str = "span",
    entity_types: Iterable[str] | None = None,
) -> ScoreReport:
    """Score ``predictions`` (``{post id: [Prediction]}``) against the gold posts.

    Args:
        gold: the gold posts of one split; every post is scored, predicted or not.
        predictions: predictions per post id; a post missing here predicted nothing.
        iou_threshold: a box hits a gold box when IoU >= this (inclusive, default 0.5).
        fine_to_coarse: for Twitter-FMNERG, ``{fine type: coarse category}``; types are then fine
            types and the report gains per-coarse-category and per-fine-type GMNER rows.
        match_by: ``"span"`` (word span, the benchmark's rule) or ``"string"`` (the entity's surface
            string, tokens joined by spaces, for comparing with generative baselines).
        entity_types: the label set; a predicted type outside it is an error. Defaults to the
            keys of ``fine_to_coarse`` when given, else no check.

    Raises:
        DataError: a prediction for an id not in ``gold``, a duplicate gold id, a span out of
            range or empty, a malformed box, or an unknown type.
    """
    if not 0.0 <= iou_threshold <= 1.0:
        raise QGNError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    if match_by not in MATCH_KEYS:
        raise QGNError(f"match_by must be one of {MATCH_KEYS}, got {match_by!r}")
    posts: dict[str, Post] = {}
    for post in gold:
        if post.id in posts:
            raise DataError(f"duplicate post id {post.id!r} in the gold set")
        posts[post.id] = post
    unknown = [pid for pid in predictions if pid not in posts]
    if unknown:
        path, line = _where(predictions, unknown[0])
        shown = ", ".join(repr(pid) for pid in unknown[:5])
        raise DataError(
            f"predictions for {len(unknown)} post id(s) not in the gold set: {shown}"
            f"{' ...' if len(unknown) > 5 else ''}",
            path,
            line,
        )
    types = set(entity_types) if entity_types is not None else (set(fine_to_coarse) if fine_to_coarse else None)

    n_pred: Counter[str] = Counter()
    n_gold: Counter[str] = Counter()
    tp: dict[str, Counter[str]] = {"GMNER": Counter(), "MNER": Counter()}
    tp_eeg = 0
    coarse_pred: Counter[str] = Counter()
    coarse_gold: Counter[str] = Counter()
    coarse_tp: Counter[str] = Counter()
    breakdown: Counter[str] = Counter({k: 0 for k in BREAKDOWN_GOLD + BREAKDOWN_PRED})

    def coarse_of_gold(entity: Entity, post: Post) -> str:
        category = fine_to_coarse.get(entity.type) if fine_to_coarse else None
        category = category or entity.coarse_type
        if category is None:
            raise DataError(f"post {post.id!r}: gold fine type {entity.type!r} has no coarse category")
        return category

    for post in posts.values():
        preds = list(predictions.get(post.id, ()))
        for index, pred in enumerate(preds):
            problem = _prediction_error(pred, post, index, types)
            if problem is None and fine_to_coarse is not None and pred.type not in fine_to_coarse:
                problem = f"post {post.id!r}, entity {index}: fine type {pred.type!r} has no coarse category"
            if problem is not None:
                raise DataError(problem, *_where(predictions, post.id))

        def key(start: int, end: int) -> Hashable:
            return (start, end) if match_by == "span" else " ".join(post.tokens[start:end])

        def region_ok(pred: Prediction, entity: Entity) -> bool:
            if not entity.boxes:
                return pred.box is None
            return pred.box is not None and any(box_iou_xyxy(pred.box, b) >= iou_threshold for b in entity.boxes)

        n_pred.update(p.type for p in preds)
        n_gold.update(e.type for e in post.entities)
        breakdown.update(_breakdown(post.entities, preds, key, region_ok))
        if fine_to_coarse is not None:
            coarse_pred.update(fine_to_coarse[p.type] for p in preds)
            coarse_gold.update(coarse_of_gold(e, post) for e in post.entities)

        # GMNER and MNER: only a prediction with the gold's key and type can match it.
        gold_groups = _group(post.entities, lambda e: (key(e.start, e.end), e.type))
        for group_key, group_preds in _group(preds, lambda p: (key(p.start, p.end), p.type)).items():
            golds = gold_groups.get(group_key, [])
            type_ = group_key[1]
            tp["MNER"][type_] += min(len(group_preds), len(golds))
            hits = _max_matching(len(group_preds), len(golds), lambda i, j: region_ok(group_preds[i], golds[j]))
            tp["GMNER"][type_] += hits
            if hits and fine_to_coarse is not None:
                coarse_tp[coarse_of_gold(golds[0], post)] += hits
        # EEG: key and region only.
        golds_by_key = _group(post.entities, lambda e: key(e.start, e.end))
        for span_key, group_preds in _group(preds, lambda p: key(p.start, p.end)).items():
            golds = golds_by_key.get(span_key, [])
            tp_eeg += _max_matching(len(group_preds), len(golds), lambda i, j: region_ok(group_preds[i], golds[j]))

    total_pred, total_gold = sum(n_pred.values()), sum(n_gold.values())
    overall = {
        "GMNER": MetricRow(sum(tp["GMNER"].values()), total_pred, total_gold),
        "MNER": MetricRow(sum(tp["MNER"].values()), total_pred, total_gold),
        "EEG": MetricRow(tp_eeg, total_pred, total_gold),
    }
    all_types = sorted(set(n_pred) | set(n_gold))
    per_type = {m: {t: MetricRow(tp[m][t], n_pred[t], n_gold[t]) for t in all_types} for m in ("GMNER", "MNER")}
    report = ScoreReport(
        overall=overall,
        per_type=per_type,
        n_posts=len(posts),
        n_posts_without_predictions=sum(1 for pid in posts if pid not in predictions),
        iou_threshold=iou_threshold,
        match_by=match_by,
        breakdown=dict(breakdown),
    )
    if fine_to_coarse is not None:
        # Every category of the mapping gets a row (Table II lists all 8), in the mapping's order.
        categories = list(dict.fromkeys([*fine_to_coarse.values(), *coarse_gold]))
        report.fmnerg_coarse = {c: MetricRow(coarse_tp[c], coarse_pred[c], coarse_gold[c]) for c in categories}
        report.fmnerg_fine = dict(per_type["GMNER"])
    return report
