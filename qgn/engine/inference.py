"""Batched prediction over a DataLoader, shared by training (dev/test), ``qgn evaluate`` and ``qgn predict``."""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from qgn.data.pipeline import model_inputs, move_to_device
from qgn.data.records import Prediction
from qgn.modeling.postprocess import Candidate


@torch.inference_mode()
def collect_candidates(
    model: torch.nn.Module,
    postprocessor: Any,
    loader: Any,
    min_score: float,
    accelerator: Any = None,
    device: torch.device | str | None = None,
    description: str = "predict",
    progress: bool = True,
    autocast: torch.dtype | None = None,
) -> dict[str, list[Candidate]]:
    """Run ``model`` over every batch; returns ``{post id: candidates}`` (see
    :meth:`qgn.modeling.postprocess.PostProcessor.candidates`), before any threshold but
    ``min_score``.

    With an ``accelerate.Accelerator`` each process predicts its shard and the results are
    gathered (padding duplicates dropped), so every process returns the whole split.
    ``autocast`` (e.g. ``torch.bfloat16``) runs the model under autocast; the post-processor
    always reads fp32 outputs.
    """
    was_training = model.training
    model.eval()
    results: list[tuple[str, list[Candidate]]] = []
    show = progress and (accelerator is None or accelerator.is_local_main_process)
    for batch in tqdm(loader, desc=description, disable=not show, leave=False):
        if device is not None:
            batch = move_to_device(batch, device)
        if autocast is None:
            outputs = model(**model_inputs(batch))
        else:
            kind = next(model.parameters()).device.type
            with torch.autocast(kind, dtype=autocast):
                outputs = model(**model_inputs(batch))
            outputs = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in outputs.items()}
        found = postprocessor.candidates(outputs, batch["posts"], min_score)
        results.extend((post.id, c) for post, c in zip(batch["posts"], found))
    if accelerator is not None and accelerator.num_processes > 1:
        results = accelerator.gather_for_metrics(results, use_gather_object=True)
    model.train(was_training)
    return dict(results)


def predict_loader(
    model: torch.nn.Module,
    postprocessor: Any,
    loader: Any,
    accelerator: Any = None,
    device: torch.device | str | None = None,
    description: str = "predict",
    progress: bool = True,
    autocast: torch.dtype | None = None,
) -> dict[str, list[Prediction]]:
    """``{post id: predictions}`` of ``model`` + ``postprocessor`` over ``loader`` (arguments as
    :func:`collect_candidates`)."""
    found = collect_candidates(
        model,
        postprocessor,
        loader,
        postprocessor.score_threshold,
        accelerator,
        device,
        description,
        progress,
        autocast,
    )
    return {post_id: postprocessor.select(c) for post_id, c in found.items()}


def format_summary(splits: dict[str, dict[str, Any]]) -> str:
    """A GMNER / MNER / EEG table with raw counts, one block per split (``{split: metrics_summary}``)."""
    lines = [f"{'split':<6} {'metric':<6} {'P':>7} {'R':>7} {'F1':>7} {'TP':>6} {'#pred':>6} {'#gold':>6}"]
    for split, rows in splits.items():
        for metric in ("GMNER", "MNER", "EEG"):
            r = rows[metric]
            lines.append(
                f"{split:<6} {metric:<6} {r['precision']:7.2f} {r['recall']:7.2f} {r['f1']:7.2f} "
                f"{r['tp']:6d} {r['n_pred']:6d} {r['n_gold']:6d}"
            )
    return "\n".join(lines)
