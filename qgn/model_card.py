"""The model card: ``README.md`` in every checkpoint folder (what the model is, its data, its figures
and thresholds, how to load it). :meth:`QGNModel.save_pretrained` writes it and ``qgn push`` uploads it.

It reads the config by attribute and imports nothing of :mod:`qgn.modeling` or :mod:`qgn.hub`, so
both can import it without closing an import circle.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

CARD_FILE = "README.md"


def _encoder_line(config: Any, which: str) -> str:
    sub = getattr(config, f"{which}_config") or {}
    name = getattr(config, f"{which}_encoder")
    return (
        f"{sub.get('model_type', '?')} (from `{name}`; {sub.get('num_hidden_layers', '?')} layers, width "
        f"{sub.get('hidden_size', '?')})"
    )


def _figures(final: dict[str, Any]) -> list[str]:
    lines = ["| split | metric | P | R | F1 |", "|---|---|---|---|---|"]
    for split in ("dev", "test"):
        for metric in ("GMNER", "MNER", "EEG"):
            row = (final.get(split) or {}).get(metric)
            if row:
                lines.append(f"| {split} | {metric} | {row['precision']:.2f} | {row['recall']:.2f} | {row['f1']:.2f} |")
    return lines if len(lines) > 2 else []


def _data_description(data_path: str | None) -> list[str]:
    if data_path is None:
        return ["Not recorded with this checkpoint."]
    folder = Path(data_path)
    manifest = folder / "synthetic.json"
    if manifest.is_file():
        return [
            "The synthetic grounding benchmark that `qgn demo` generates (shapes with fixed looks per "
            "name; no real people or posts). It is generated, so it has no terms of use of its own."
        ]
    return [
        f"Read from `{folder.name}` (the folder given as `data.path`). If it is Twitter-GMNER or "
        "Twitter-FMNERG: the annotations are released by NUSTM for research use, and the tweets and "
        "images belong to their authors under Twitter's terms; check both before redistributing the "
        "model or its outputs."
    ]


def write_model_card(
    folder: str | os.PathLike, config: Any, final: dict[str, Any] | None = None, data_path: str | None = None
) -> Path:
    """Write ``folder/README.md``: what the model is, its data, figures, thresholds, how to load it.
    ``final`` is a run's ``final_metrics.json`` (figures are left out when it is unknown)."""
    folder = Path(folder)
    kind = "text-only (no image branch)" if config.text_only else "text and image"
    vision = "" if config.text_only else f"\n- image encoder: {_encoder_line(config, 'vision')}"
    figures = _figures(final) if final else []
    lines = [
        "---",
        "library_name: qgn",
        "tags: [gmner, named-entity-recognition, visual-grounding, multimodal]",
        "---",
        "",
        "# QGN checkpoint",
        "",
        "A Query-Guided Network (QGN) for Grounded Multimodal Named Entity Recognition: given a post's text "
        "and image, it finds each named entity (its words and type) and the box of that entity in the image, "
        "or says it has none. Trained with the `qgn` toolkit.",
        "",
        "## Model",
        "",
        f"- inputs: {kind}",
        f"- text encoder: {_encoder_line(config, 'text')}{vision}",
        f"- entity queries: {config.num_queries}",
        f"- entity types: {', '.join(config.entity_types)}",
        "",
        "## Training data",
        "",
        *_data_description(data_path),
        "",
        "## Figures",
        "",
    ]
    if figures and final:
        selected = final.get("selected_on", "dev")
        lines += [
            f"Micro P/R/F1 (%) of this checkpoint (best epoch {final.get('best_epoch')}, selected on "
            f"{selected}), with the thresholds below:",
            "",
            *figures,
        ]
    else:
        lines.append("Unknown: no `final_metrics.json` was recorded with this checkpoint.")
    lines += [
        "",
        "## Post-processing thresholds in use",
        "",
        f"- `score_threshold`: {config.score_threshold:g} (entities scoring lower are dropped)",
        f"- `no_target_threshold`: {config.no_target_threshold:g} (at or above it, the entity gets no box)",
        f"- `remove_overlaps`: {str(config.remove_overlaps).lower()}",
    ]
    if final and final.get("thresholds", {}).get("chosen_on"):
        lines.append(f"- chosen on: {final['thresholds']['chosen_on']}")
    lines += [
        "",
        "## How to use",
        "",
        "```bash",
        f"# qgn is not on PyPI: install it from a checkout of its source repository (this card: qgn {_version()})",
        "pip install torch==2.13.0 && pip install -e .          # in the qgn checkout; -e '.[serve]' for qgn serve",
        'qgn predict --checkpoint THIS_FOLDER_OR_REPO_ID --image photo.jpg --text "Anna met the Blue Comets"',
        "qgn serve --checkpoint THIS_FOLDER_OR_REPO_ID   # web page and JSON API on 127.0.0.1:7860",
        "```",
        "",
        "```python",
        "import qgn",
        'predictor = qgn.load("THIS_FOLDER_OR_REPO_ID")',
        'predictor.predict("photo.jpg", "Anna met the Blue Comets")',
        "```",
        "",
    ]
    path = folder / CARD_FILE
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _version() -> str:
    from qgn.version import __version__

    return __version__
