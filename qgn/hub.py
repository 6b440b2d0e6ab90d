"""Checkpoints that travel: loading from the Hugging Face hub, ``qgn push``, and a finished run's model
card (the card itself is written by :mod:`qgn.model_card`).

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
from qgn.model_card import CARD_FILE, write_model_card

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
        raise QGNError(
            f"{checkpoint} is not a local folder, and the hub repo is not in the cache "
            f"({_cache_dir()}) while offline or unreachable; download it once online, or give a folder"
        ) from None
    except RepositoryNotFoundError:
        raise QGNError(
            f"{checkpoint}: no such folder here, and no such model repo on the hub (or it is private: "
            "log in with `hf auth login`)"
        ) from None
    except HfHubHTTPError as err:
        raise QGNError(f"{checkpoint}: the hub answered {err}") from None


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def push(
    checkpoint: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str = "Upload QGN checkpoint",
) -> str:
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
    info = api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), revision=revision, commit_message=commit_message, repo_type="model"
    )
    return str(getattr(info, "commit_url", info))


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
    url = push(
        args.checkpoint,
        args.repo_id,
        private=args.private,
        token=args.token,
        revision=args.revision,
        commit_message=args.message,
    )
    print(f"pushed {args.checkpoint} to {args.repo_id}: {url}")
    return 0
