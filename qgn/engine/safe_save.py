"""Saving a run's state safely: signals wait while a checkpoint is written, folders are swapped in
whole, and a checkpoint's unreadable files can be found. Used by :mod:`qgn.engine.train`."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("qgn.engine.train")


class Terminated(KeyboardInterrupt):
    """SIGTERM (what schedulers and ``kill`` send): training stops as on Ctrl-C, saving its state first."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


@contextlib.contextmanager
def _signals_held(stopping: bool = False) -> Iterator[None]:
    """Ctrl-C and SIGTERM wait while a training state or model is written, so that a signal never
    leaves a half-written folder behind (a second Ctrl-C 0.3 s after the first used to). A signal
    held here is raised once the save is complete, or, while already stopping, only logged."""
    if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        held.append(signum)
        logger.warning("still saving the training state: qgn stops as soon as it is complete")

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
    if held and not stopping:
        raise Terminated() if held[0] == signal.SIGTERM else KeyboardInterrupt()


def _atomic_replace(tmp: Path, final: Path) -> None:
    """Swap a freshly written folder in, so a crash mid-save never leaves a half checkpoint."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def corrupt_files(folder: Path) -> list[Path]:
    """The files of a checkpoint folder that do not load (truncated or overwritten)."""
    from safetensors import safe_open

    bad = []
    for path in sorted(folder.iterdir()):
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as f:
                    for key in f.keys():
                        f.get_tensor(key)
            elif path.suffix in (".bin", ".pt", ".pth"):
                torch.load(path, map_location="cpu", weights_only=False)
            elif path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
        except Exception:  # noqa: BLE001 - any failure to load is what we look for
            bad.append(path)
    return bad
