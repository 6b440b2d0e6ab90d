"""Post-processing thresholds chosen on dev for a trained checkpoint.

The model runs once over dev; its candidates (:meth:`qgn.modeling.postprocess.PostProcessor.
candidates`) are then selected under every setting of the grid and scored, and the setting with
the best dev micro F1 of the selection metric wins (the config's own values on ties). The test
split is never looked at: callers score it once per setting they report.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from qgn.data.records import Post
from qgn.modeling.postprocess import Candidate

SCORE_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
NO_TARGET_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
THRESHOLD_FIELDS = ("score_threshold", "no_target_threshold", "remove_overlaps")


def current_thresholds(config: Any) -> dict[str, Any]:
    """The post-processing settings a config holds."""
    return {name: getattr(config, name) for name in THRESHOLD_FIELDS}


def select_all(
    postprocessor: Any, candidates: Mapping[str, Sequence[Candidate]], thresholds: Mapping[str, Any]
) -> dict[str, list]:
    """``{post id: predictions}`` under ``thresholds`` (keys of :data:`THRESHOLD_FIELDS`)."""
    return {post_id: postprocessor.select(c, **thresholds) for post_id, c in candidates.items()}


def tune_thresholds(
    postprocessor: Any,
    config: Any,
    posts: Sequence[Post],
    candidates: Mapping[str, Sequence[Candidate]],
    metric: str = "GMNER",
    *,
    split: str,
    test_split: str = "test",
) -> dict[str, Any]:
    """The grid setting with the best ``metric`` micro F1 on ``posts`` (dev).

    ``split`` names the split ``posts`` come from; the test split (``"test"`` or ``test_split``)
    is refused, and ``candidates`` must be those of ``posts`` (the same post ids).
    ``candidates`` must hold every candidate down to ``min(SCORE_THRESHOLDS)``. Returns
    ``{"thresholds": {...}, "f1": best, "default_f1": F1 with the config's own values}``.
    The no-target threshold is not searched for text-only models (they never predict a box).
    """
    from qgn.errors import QGNError
    from qgn.metrics import score

    if split in ("test", test_split):
        raise QGNError(f"thresholds are chosen on dev, never on the test split ({split!r}): pass the dev posts")
    if set(candidates) != {post.id for post in posts}:
        raise QGNError(f"the candidates are not those of the {split} posts: tune on one split's posts and candidates")

    default = current_thresholds(config)
    no_target = (default["no_target_threshold"],) if config.text_only else NO_TARGET_THRESHOLDS
    types = list(config.entity_types)

    def f1(thresholds: Mapping[str, Any]) -> float:
        report = score(posts, select_all(postprocessor, candidates, thresholds), entity_types=types)
        return report[metric].f1

    best, best_f1 = default, f1(default)
    default_f1 = best_f1
    for values in itertools.product(SCORE_THRESHOLDS, no_target, (False, True)):
        setting = dict(zip(THRESHOLD_FIELDS, values))
        value = f1(setting)
        if value > best_f1:
            best, best_f1 = setting, value
    return {"thresholds": dict(best), "f1": best_f1, "default_f1": default_f1}
