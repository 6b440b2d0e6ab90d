"""qgn: the proposal-free Query-Guided Network for Grounded Multimodal NER.

``qgn.load(checkpoint_dir).predict(image, text)`` is the inference API; see :mod:`qgn.api`.
"""

from __future__ import annotations

from typing import Any

from qgn.version import __version__ as __version__


def load(checkpoint_dir: Any, device: str | None = None, **thresholds: Any) -> Any:
    """Load a trained QGN checkpoint for inference (see :class:`qgn.api.Predictor`)."""
    from qgn.api import load as _load  # deferred: `import qgn` stays light for the CLI

    return _load(checkpoint_dir, device=device, **thresholds)
