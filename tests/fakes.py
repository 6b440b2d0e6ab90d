"""Hand-made model outputs and targets shared by the matcher and criterion tests."""

from __future__ import annotations

import socket

import torch


def make_targets(labels, starts, ends, boxes=None, has_box=None) -> dict[str, torch.Tensor]:
    n = len(labels)
    boxes = torch.zeros(n, 4) if boxes is None else torch.tensor(boxes, dtype=torch.float32).reshape(n, 4)
    has_box = torch.zeros(n, dtype=torch.bool) if has_box is None else torch.tensor(has_box, dtype=torch.bool)
    return {
        "labels": torch.tensor(labels, dtype=torch.long),
        "start": torch.tensor(starts, dtype=torch.long),
        "end": torch.tensor(ends, dtype=torch.long),
        "boxes": boxes,
        "has_box": has_box,
        "entity_index": torch.arange(n),
    }


def random_outputs(batch: int, queries: int, words: int, classes: int, seed: int, boxes: bool = True):
    g = torch.Generator().manual_seed(seed)
    out = {
        "type_logits": torch.randn(batch, queries, classes + 1, generator=g),
        "start_logits": torch.randn(batch, queries, words, generator=g),
        "end_logits": torch.randn(batch, queries, words, generator=g),
        "word_mask": torch.ones(batch, words, dtype=torch.bool),
    }
    if boxes:
        out["pred_boxes"] = torch.rand(batch, queries, 4, generator=g) * 0.5 + 0.25
        out["notarget_logits"] = torch.randn(batch, queries, 2, generator=g)
    return out


def free_port() -> int:
    """A TCP port nothing listens on now (a fixed one collides with a parallel or stale run)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
