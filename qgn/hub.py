"""Checkpoints that travel: the model card, loading from the Hugging Face hub, and ``qgn push``.

A checkpoint is a folder (``config.json``, ``model.safetensors``, tokenizer and image-processor
files, ``README.md``). Anywhere a checkpoint is asked for, a hub repo id (``owner/name``, optionally
``owner/name@revision``) works too: it is resolved through ``huggingface_hub``, so its cache,
``HF_HOME`` / ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE=1`` behave as in ``transformers``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from qgn.errors import QGNError

CARD_FILE = "README.md"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_checkpoint(checkpoint: str | os.PathLike) -> Path:
    """A local folder as is; else ``owner/name[@revision]`` from the hub (or its cache offline)."""
    path = Path(checkpoint)
    if path.exists() or not isinstance(checkpoint, str):
        return path
    repo_id, _, revision = checkpoint.partition("@")
    if not _REPO_ID.match(repo_id):
        return path  # neither a folder nor a repo id: the caller's "not a checkpoint" error names it
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision or None))
    except LocalEntryNotFoundError:
        raise QGNError(f"{checkpoint} is not a local folder, and the hub repo is not in the cache "
                       f"({_cache_dir()}) while offline or unreachable; download it once online, or give a folder"
                       ) from None
    except RepositoryNotFoundError:
        raise QGNError(f"{checkpoint}: no such folder here, and no such model repo on the hub (or it is private: "
                       "log in with `hf auth login`)") from None
    except HfHubHTTPError as err:
        raise QGNError(f"{checkpoint}: the hub answered {err}") from None


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def push(checkpoint: str | os.PathLike, repo_id: str, private: bool = False, token: str | None = None,
         revision: str | None = None, commit_message: str = "Upload QGN checkpoint") -> str:
    """Upload a checkpoint folder (model card included) to the hub; returns the commit URL."""
    from huggingface_hub import HfApi

    folder = Path(checkpoint)
    for name in ("config.json", "model.safetensors"):
        if not (folder / name).is_file():
            raise QGNError(f"{folder} is not a QGN checkpoint: {name} is missing")
    if not _REPO_ID.match(repo_id):
        raise QGNError(f"--repo-id {repo_id!r}: give owner/name")
    if not (folder / CARD_FILE).is_file():  # checkpoints saved before cards existed
        from qgn.modeling import QGNConfig

        write_model_card(folder, QGNConfig.load(folder / "config.json"))
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                             commit_message=commit_message, repo_type="model")
    return str(getattr(info, "commit_url", info))


# ----------------------------------------------------------------------------- model card
def _encoder_line(config: Any, which: str) -> str:
    sub = getattr(config, f"{which}_config") or {}
    name = getattr(config, f"{which}_encoder")
    return f"{sub.get('model_type', '?')} (from `{name}`; {sub.get('num_hidden_layers', '?')} layers, width " \
           f"{sub.get('hidden_size', '?')})"


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
        return ["The synthetic grounding benchmark that `qgn demo` generates (shapes with fixed looks per "
                "name; no real people or posts). It is generated, so it has no terms of use of its own."]
    return [f"Read from `{folder.name}` (the folder given as `data.path`). If it is Twitter-GMNER or "
            "Twitter-FMNERG: the annotations are released by NUSTM for research use, and the tweets and "
            "images belong to their authors under Twitter's terms; check both before redistributing the "
            "model or its outputs."]


def write_model_card(folder: str | os.PathLike, config: Any, final: dict[str, Any] | None = None,
                     data_path: str | None = None) -> Path:
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
        lines += [f"Micro P/R/F1 (%) of this checkpoint (best epoch {final.get('best_epoch')}, selected on "
                  f"{selected}), with the thresholds below:", "", *figures]
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
        "qgn predict --checkpoint THIS_FOLDER_OR_REPO_ID --image photo.jpg --text \"Anna met the Blue Comets\"",
        "qgn serve --checkpoint THIS_FOLDER_OR_REPO_ID   # web page and JSON API on 127.0.0.1:7860",
        "```",
        "",
        "```python",
        "import qgn",
        "predictor = qgn.load(\"THIS_FOLDER_OR_REPO_ID\")",
        "predictor.predict(\"photo.jpg\", \"Anna met the Blue Comets\")",
        "```",
        "",
    ]
    path = folder / CARD_FILE
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _version() -> str:
    from qgn import __version__

    return __version__


def card_from_run(best_dir: str | os.PathLike, run_dir: str | os.PathLike, data_path: str | None) -> Path:
    """Rewrite ``best_dir``'s card with the run's ``final_metrics.json``."""
    from qgn.modeling import QGNConfig

    best_dir, run_dir = Path(best_dir), Path(run_dir)
    final_file = run_dir / "final_metrics.json"
    final = json.loads(final_file.read_text(encoding="utf-8")) if final_file.is_file() else None
    return write_model_card(best_dir, QGNConfig.load(best_dir / "config.json"), final, data_path)


# ----------------------------------------------------------------------------- CLI
def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "push",
        help="upload a checkpoint (with its model card) to the Hugging Face hub",
        description="Upload a checkpoint folder to a hub model repo (created if absent) through huggingface_hub. "
        "Log in first (`hf auth login`) or give --token / HF_TOKEN. Others then load it with "
        "qgn.load('OWNER/NAME') or --checkpoint OWNER/NAME.",
    )
    p.add_argument("--checkpoint", required=True, help="a QGN checkpoint folder (a run's best/)")
    p.add_argument("--repo-id", required=True, help="OWNER/NAME of the model repo")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--revision", help="branch to push to (default main)")
    p.add_argument("--token", help="hub token (default: the logged-in one, or HF_TOKEN)")
    p.add_argument("--message", default="Upload QGN checkpoint", help="commit message")
    p.set_defaults(func=_main)


def _main(args: Any) -> int:
    url = push(args.checkpoint, args.repo_id, private=args.private, token=args.token, revision=args.revision,
               commit_message=args.message)
    print(f"pushed {args.checkpoint} to {args.repo_id}: {url}")
    return 0
