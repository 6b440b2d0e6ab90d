"""The end of a training run: the selected (best-on-dev) checkpoint's thresholds are chosen on dev,
and it is scored once on dev and test, into ``final_metrics.json``. Selection never reads test."""

from __future__ import annotations

import json
import logging
from typing import Any

from qgn.engine.run_parts import make_loader, read_split

logger = logging.getLogger("qgn.engine.train")


def metrics_summary(report: Any) -> dict[str, Any]:
    """GMNER / MNER / EEG precision, recall, F1 and counts, and where GMNER is lost, from a ScoreReport."""
    full = report.to_dict()
    summary = {name: full[name] for name in ("GMNER", "MNER", "EEG", "breakdown") if name in full}
    if (full.get("fmnerg") or {}).get("coarse"):  # Twitter-FMNERG: GMNER per coarse category (Table II)
        summary["fmnerg_coarse"] = full["fmnerg"]["coarse"]
    return summary


def score_selected(trainer: Any) -> dict[str, Any]:
    """Choose the post-processing thresholds on dev for the best-on-dev model of ``trainer`` (a
    :class:`qgn.engine.train.Trainer` whose training is done; stored in its ``config.json``), score
    it on dev and test with the chosen and the default thresholds, write final_metrics.json."""
    from qgn.engine.inference import collect_candidates
    from qgn.engine.thresholds import SCORE_THRESHOLDS, current_thresholds, select_all, tune_thresholds
    from qgn.metrics import score
    from qgn.modeling import QGNConfig, QGNModel
    from qgn.modeling.modeling_qgn import CONFIG_FILE

    s, acc = trainer.settings, trainer.accelerator
    best_dir = trainer.output_dir / "best"
    acc.wait_for_everyone()
    best = QGNModel.from_pretrained(best_dir).to(acc.device)
    test_posts = read_split(s, s.data.test_split, skipped=trainer.skipped)
    test_loader = acc.prepare(
        make_loader(test_posts, trainer.tokenizer, s, trainer.image_transform, s.train.eval_batch_size, False)
    )
    default = current_thresholds(s.model)
    lowest = min(SCORE_THRESHOLDS + (default["score_threshold"],))
    # One precision for choosing and for reporting: the training's (bf16 autocast in the paper
    # configs), in which the dev scores that chose the epoch were computed; so the dev figures
    # below are those that chose it, and `qgn evaluate --checkpoint --precision` with it repeats them.
    from qgn.engine.precision import autocast_dtype

    found = {
        split: collect_candidates(
            best,
            trainer.postprocessor,
            loader,
            lowest,
            acc,
            description=split,
            progress=trainer.progress,
            autocast=autocast_dtype(acc.mixed_precision),
        )
        for split, loader in (("dev", trainer.dev_loader), ("test", test_loader))
    }
    posts = {"dev": trainer.dev_posts, "test": test_posts}

    # FMNERG gold carries a coarse category on every entity: score per category too (Table II).
    from qgn.data import FMNERG_FINE_TO_COARSE

    fmnerg = any(e.coarse_type for post in test_posts for e in post.entities)
    fine_to_coarse = FMNERG_FINE_TO_COARSE if fmnerg else None

    def summary(split: str, thresholds: dict[str, Any]) -> dict[str, Any]:
        predictions = select_all(trainer.postprocessor, found[split], thresholds)
        return metrics_summary(
            score(posts[split], predictions, entity_types=s.model.entity_types, fine_to_coarse=fine_to_coarse)
        )

    chosen = default
    if s.train.tune_thresholds:
        chosen = tune_thresholds(
            trainer.postprocessor,
            s.model,
            trainer.dev_posts,
            found["dev"],
            s.train.select_metric,
            split=s.data.dev_split,
            test_split=s.data.test_split,
        )["thresholds"]
        if acc.is_main_process:  # the checkpoint predicts with them from now on
            config = QGNConfig.load(best_dir / CONFIG_FILE)
            config.replace(**chosen).save(best_dir / CONFIG_FILE)
        logger.info("post-processing chosen on dev: %s (defaults: %s)", chosen, default)
    final = {
        "best_epoch": trainer.state["best_epoch"],
        "selected_on": f"dev {s.train.select_metric} micro F1",
        "scored_in": "fp32" if acc.mixed_precision == "no" else acc.mixed_precision,
        "thresholds": {
            "chosen": chosen,
            "default": default,
            "chosen_on": f"dev {s.train.select_metric} micro F1"
            if s.train.tune_thresholds
            else "not tuned (train.tune_thresholds false)",
        },
        "dev": summary("dev", chosen),
        "test": summary("test", chosen),
        "with_default_thresholds": {"dev": summary("dev", default), "test": summary("test", default)},
        # posts dropped by data.missing_images=skip: their gold entities are not in the scores
        "skipped_for_missing_images": dict(trainer.skipped),
    }
    if acc.is_main_process:
        (trainer.output_dir / "final_metrics.json").write_text(json.dumps(final, indent=2) + "\n")
        from qgn.hub import card_from_run

        card_from_run(best_dir, trainer.output_dir, s.data.path)  # the card now gives the figures
    acc.wait_for_everyone()
    return final
