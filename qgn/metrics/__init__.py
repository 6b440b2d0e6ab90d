"""GMNER / MNER / EEG scoring (the benchmark's definition; see docs/evaluation.md)."""

from qgn.metrics.prediction_file import PredictionSet, read_predictions, write_predictions
from qgn.metrics.scorer import METRICS, MetricRow, ScoreReport, box_iou_xyxy, score

__all__ = [
    "METRICS",
    "MetricRow",
    "PredictionSet",
    "ScoreReport",
    "box_iou_xyxy",
    "read_predictions",
    "score",
    "write_predictions",
]
