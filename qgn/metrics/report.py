"""Plain-text tables for a :class:`~qgn.metrics.scorer.ScoreReport`: every percentage sits beside
the raw counts it came from (TP, #pred, #gold), so a reader can recompute or sum any row."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

# What the tables read, described here rather than imported: qgn.metrics.scorer imports this module
# (ScoreReport.format_table), so importing its classes back would close an import circle.
# :class:`~qgn.metrics.scorer.MetricRow` and :class:`~qgn.metrics.scorer.ScoreReport` fit them.


class MetricRow(Protocol):
    """One row of counts and the percentages derived from them."""

    @property
    def tp(self) -> int: ...
    @property
    def n_pred(self) -> int: ...
    @property
    def n_gold(self) -> int: ...
    @property
    def precision(self) -> float: ...
    @property
    def recall(self) -> float: ...
    @property
    def f1(self) -> float: ...


class ScoreReport(Protocol):
    """The parts of a score report that :func:`format_report` shows."""

    @property
    def overall(self) -> Mapping[str, MetricRow]: ...
    @property
    def per_type(self) -> Mapping[str, Mapping[str, MetricRow]]: ...
    @property
    def n_posts(self) -> int: ...
    @property
    def n_posts_without_predictions(self) -> int: ...
    @property
    def iou_threshold(self) -> float: ...
    @property
    def match_by(self) -> str: ...
    @property
    def fmnerg_coarse(self) -> Mapping[str, MetricRow] | None: ...
    @property
    def fmnerg_fine(self) -> Mapping[str, MetricRow] | None: ...
    @property
    def breakdown(self) -> Mapping[str, int] | None: ...
    @property
    def gmner(self) -> MetricRow: ...
    def breakdown_rows(self) -> Mapping[str, Mapping[str, float]]: ...
    def macro_f1(self, metric: str = "GMNER") -> float: ...


HEADER = ("P", "R", "F1", "TP", "#pred", "#gold")


def format_rows(rows: Mapping[str, MetricRow], title: str = "metric", indent: str = "") -> list[str]:
    """One aligned line per row: ``name  P  R  F1  TP  #pred  #gold`` (percentages with 2 decimals)."""
    width = max([len(title), *(len(name) for name in rows)])
    lines = [f"{indent}{title:<{width}}  {'P':>6}  {'R':>6}  {'F1':>6}  {'TP':>6}  {'#pred':>6}  {'#gold':>6}"]
    for name, row in rows.items():
        lines.append(
            f"{indent}{name:<{width}}  {row.precision:6.2f}  {row.recall:6.2f}  {row.f1:6.2f}  "
            f"{row.tp:6d}  {row.n_pred:6d}  {row.n_gold:6d}"
        )
    return lines


def format_report(report: ScoreReport, per_type: bool = True) -> str:
    """The three headline metrics; then per-type GMNER / MNER rows (``per_type``); then FMNERG rows.

    FMNERG per-coarse-category rows (QGN Table II) are always shown when present; per-fine-type
    rows only with ``per_type`` (there are up to 51).
    """
    lines = [
        f"{report.n_posts} posts ({report.n_posts_without_predictions} without predictions), "
        f"IoU >= {report.iou_threshold:g}, matched by {report.match_by}, micro-averaged",
        *format_rows(report.overall),
    ]
    if report.breakdown is not None:
        lines += ["", *format_breakdown(report.breakdown_rows())]
    if per_type:
        for metric, rows in report.per_type.items():
            lines += ["", *format_rows(rows, title=f"{metric} per type")]
            lines.append(f"(macro F1 over these types: {report.macro_f1(metric):.2f}; not the headline)")
    if report.fmnerg_coarse is not None:
        lines += ["", *format_rows({**report.fmnerg_coarse, "All": report.gmner}, title="FMNERG GMNER per category")]
        if per_type and report.fmnerg_fine:
            lines += ["", *format_rows(report.fmnerg_fine, title="FMNERG GMNER per fine type")]
    return "\n".join(lines)


BREAKDOWN_LABELS = {
    "correct": "correct (span, type and region)",
    "missed": "missed: no prediction with the span",
    "wrong_type": "found with the wrong type",
    "grounded_without_box": "grounded entity predicted without a box",
    "grounded_wrong_box": "grounded entity, box IoU below threshold",
    "boxless_with_box": "box-less entity predicted with a box",
    "spurious": "spurious: span of no gold entity",
}


def format_breakdown(breakdown: Mapping[str, Mapping[str, float]]) -> list[str]:
    """Where GMNER is lost, from :meth:`ScoreReport.breakdown_rows` (the ``breakdown`` of its
    ``to_dict``, as in final_metrics.json): one line per
    category with its count and share (of #gold for gold entities, of #pred for spurious ones)."""
    width = max(len(label) for label in BREAKDOWN_LABELS.values())
    lines = [f"{'where GMNER is lost':<{width}}  {'count':>6}  {'share':>7}"]
    for name, row in breakdown.items():
        of = "#pred" if name == "spurious" else "#gold"
        lines.append(
            f"{BREAKDOWN_LABELS.get(name, name):<{width}}  {int(row['count']):6d}  {row['share']:6.2f}% of {of}"
        )
    return lines
