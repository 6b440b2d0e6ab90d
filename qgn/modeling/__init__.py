"""The QGN model family: config, network, Hungarian matcher, set criterion and post-processor.

``build(config)`` is the one factory: it returns ``(model, criterion, postprocessor)``.
"""

from __future__ import annotations

from qgn.modeling.configuration_qgn import QGNConfig, layer_schedule
from qgn.modeling.criterion import SetCriterion
from qgn.modeling.matcher import HungarianMatcher
from qgn.modeling.modeling_qgn import QGNModel, count_parameters
from qgn.modeling.postprocess import PostProcessor


def build(config: QGNConfig, load_pretrained_encoders: bool = False) -> tuple[QGNModel, SetCriterion, PostProcessor]:
    """Model, criterion and post-processor for ``config``.

    Encoders come from ``config.text_encoder`` / ``config.vision_encoder`` (hub name or local
    directory) when their ``*_config`` is unset or ``load_pretrained_encoders`` is true; otherwise
    they are built from the stored configs with random weights.
    """
    model = QGNModel(config, load_pretrained_encoders=load_pretrained_encoders)
    criterion = SetCriterion(config, HungarianMatcher(config))
    return model, criterion, PostProcessor(config)


__all__ = [
    "QGNConfig",
    "QGNModel",
    "HungarianMatcher",
    "SetCriterion",
    "PostProcessor",
    "build",
    "count_parameters",
    "layer_schedule",
]
