"""CPU speed of QGN: throughput, memory and FLOPs of the full-size and tiny models vs the bare encoders.

The full-size architecture (bert-base-cased shapes + CLIP ViT-B/32 at 224 px) is built from configs
with random weights -- nothing is downloaded. Batches are synthetic Twitter-GMNER shapes (32
sub-words, 20 words, 1-3 entities per post, half with a box).

    python benchmarks/speed.py --quick                 # essential rows, < 2 min on 2 cores
    python benchmarks/speed.py --json speed.json       # everything, ~10 min on 2 cores
    python benchmarks/speed.py --quick --set num_decoder_layers=1 --set ffn_dim=1024   # a variant
    python benchmarks/speed.py --variants              # FLOP ratio of MQD depth / width variants, < 1 min

Rows: inference (model.eval(), torch.inference_mode()) and training (forward + criterion +
backward + AdamW step) at batch 1 and 16: median seconds per batch, posts/s and the peak resident
memory above the level before the row. "encoders" is BertModel + CLIPVisionModel built from the
same configs; the ratio QGN / encoders (inference, same batch) is what QGN's own modules add,
and the issue's goal is <= 1.25. When it is above, a per-module profile (inclusive wall time and
FLOPs of each sub-module of one forward pass) follows the table. FLOPs are counted by
torch.utils.flop_counter (2 per multiply-add) and compared with the measured peak of a 2048^3
fp32 matmul at the same thread count.

bf16 (``--precision``): on a CPU with bf16 units (AMX or AVX-512 bf16, read from /proc/cpuinfo)
the default ``auto`` measures every row twice, in fp32 and under ``torch.autocast("cpu",
torch.bfloat16)`` (training rows: the criterion in fp32, as the trainer runs it), interleaved so
that drift hits both alike, and the bf16 matmul peak beside the fp32 one. On a CPU without them,
``auto`` measures fp32 only (emulated bf16 is slower); ``--precision both`` measures it anyway.

The output ends with two lines: ``qgn/encoders inference ratio: X`` (fp32, batch 16) and
``bf16/fp32 inference speed-up: X`` (full-size QGN, batch 16; ``n/a`` when bf16 was not measured).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

RATIO_GOAL = 1.25

# Full-size variants for --variants: the paper fixes d = 768 and Nq = 60 but not the depths of
# VTF / FDE / MRE nor the feed-forward width (our defaults: 2 / 3 / 2 layers, 2048).
ONE_LAYER_EACH = dict(num_fusion_layers=1, num_decoder_layers=1, num_refinement_layers=1)  # MQD 1/1/1
VARIANTS: dict[str, dict[str, Any]] = {
    "default (MQD 2/3/2 layers, ffn 2048)": {},
    "MQD 1/2/1": dict(num_fusion_layers=1, num_decoder_layers=2, num_refinement_layers=1),
    "MQD 1/1/1": ONE_LAYER_EACH,
    "MQD 1/1/1, ffn 1024": {**ONE_LAYER_EACH, "ffn_dim": 1024},
    "MQD 1/1/1, ffn 512": {**ONE_LAYER_EACH, "ffn_dim": 512},
    "MQD 1/1/1, ffn 1024, Nq 30": {**ONE_LAYER_EACH, "ffn_dim": 1024, "num_queries": 30},
    # ffn 8 makes every feed-forward block nearly free: what is left is the attention the paper
    # describes (one layer per stage), i.e. the floor of its modules at d = 768 and Nq = 60.
    "MQD 1/1/1, ffn 8 (about attention only)": {**ONE_LAYER_EACH, "ffn_dim": 8},
    "use_mqd=false (Table III ablation)": dict(use_mqd=False),
    "use_mqd=false, use_hvla=false": dict(use_mqd=False, use_hvla=False),
}


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["num_decoder_layers=1", "ffn_dim=1024"]`` -> QGNConfig keyword overrides."""
    from qgn.engine.settings import _parse_value

    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--set expects KEY=VALUE (a QGNConfig field), got {pair!r}")
        overrides[key.strip()] = _parse_value(value)
    try:
        C.full_size_config(**overrides)
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"bad --set: {exc}") from exc
    return overrides


def flop_variants() -> list[dict[str, Any]]:
    """Forward FLOPs per post of each VARIANTS config over the encoders' (no timing)."""
    rows = []
    encoder_flops = None
    for name, overrides in VARIANTS.items():
        config = C.full_size_config(**overrides)
        model, _ = C.build_qgn(config)
        model.eval()
        inputs, _ = C.synthetic_batch(config, 2)
        if encoder_flops is None:
            encoders = C.Encoders(config).eval()
            encoder_flops = C.count_flops(lambda: encoders(**inputs))[0] / 2
            del encoders
        flops = C.count_flops(lambda: model(**inputs))[0] / 2  # noqa: F821  (called before the del below; pyflakes reads closures at the end of the scope)
        parameters = C.count_parameters(model)
        rows.append(
            dict(
                variant=name,
                overrides=overrides,
                parameters=parameters,
                gflops_per_post=flops / 1e9,
                flop_ratio=flops / encoder_flops,
            )
        )
        print(
            f"{name:<40} {parameters / 1e6:8.1f} M {flops / 1e9:8.2f} GFLOP/post {flops / encoder_flops:15.2f}",
            flush=True,
        )
        del model
        gc.collect()
    print(f"(encoders alone: {encoder_flops / 1e9:.2f} GFLOP/post; goal for the time ratio <= {RATIO_GOAL})")
    return rows


# ----------------------------------------------------------------------------- measurements
autocast = C.autocast


def bench_inference(
    models: dict[str, torch.nn.Module],
    config: Any,
    batch: int,
    warmup: int,
    repeats: int,
    precisions: tuple[str, ...] = ("fp32",),
) -> list[dict[str, Any]]:
    """Median seconds per forward pass of ``batch`` posts in eval mode, one row per model and precision.

    The timed calls are interleaved (A B A B ..., every precision of every model in one round) so
    that the drift of a shared machine hits them alike and their ratios stay meaningful; the memory
    peak of each pair is taken during its own warm-up calls.
    """
    inputs, _ = C.synthetic_batch(config, batch)
    runs = [(label, model, precision) for precision in precisions for label, model in models.items()]
    peaks, times = {}, {}

    def call(model: torch.nn.Module, precision: str) -> Any:
        with autocast(precision):
            return model(**inputs)

    with torch.inference_mode():
        for label, model, precision in runs:
            model.eval()
            with C.PeakRSS() as mem:
                C.time_calls(lambda: call(model, precision), max(warmup, 1), 0)
            peaks[label, precision], times[label, precision] = mem.peak_delta, []
        for _ in range(repeats):
            for label, model, precision in runs:
                times[label, precision] += C.time_calls(lambda: call(model, precision), 0, 1)
    return [
        _row(label, "inference", batch, times[label, precision], peaks[label, precision], precision)
        for label, _, precision in runs
    ]


def bench_training(
    label: str,
    model: torch.nn.Module,
    loss_fn: Any,
    config: Any,
    batch: int,
    warmup: int,
    repeats: int,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Median seconds per optimisation step of ``batch`` posts (forward, loss, backward, AdamW);
    under bf16 the forward runs in autocast and the loss in fp32."""
    inputs, targets = C.synthetic_batch(config, batch)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    step = C.train_step_fn(model, loss_fn, optimizer, inputs, targets, autocast_dtype=C.autocast_dtype(precision))
    gc.collect()
    with C.PeakRSS() as mem:  # includes AdamW's two moment buffers, created on the first step
        times = C.time_calls(step, warmup, repeats)
    del optimizer
    model.zero_grad(set_to_none=True)
    return _row(label, "train", batch, times, mem.peak_delta, precision)


def _row(
    label: str, mode: str, batch: int, times: list[float], peak_bytes: int, precision: str = "fp32"
) -> dict[str, Any]:
    med = C.median(times)
    row = dict(
        model=label,
        mode=mode,
        precision=precision,
        batch=batch,
        median_s=med,
        best_s=min(times),
        posts_per_s=batch / med,
        peak_rss_mb=peak_bytes / 2**20,
        times_s=times,
    )
    print(
        f"  {label:<14} {mode:<9} {precision:<4} batch {batch:>2}: {med * 1000:9.1f} ms  {batch / med:8.2f} posts/s  "
        f"peak +{C.fmt_mb(peak_bytes)} MB",
        flush=True,
    )
    return row


def bf16_units_line(units: tuple[str, ...]) -> str:
    """Which bf16 units this CPU reports, in words."""
    if "amx_bf16" in units:
        kind = "AMX (amx_bf16)" + (" and AVX-512 bf16" if "avx512_bf16" in units else "")
    elif "avx512_bf16" in units:
        kind = "AVX-512 bf16 (avx512_bf16), no AMX"
    else:
        kind = "neither AMX nor AVX-512 bf16 (bf16 would be emulated, slower than fp32)"
    return f"CPU bf16 units: {kind}"


def choose_precisions(requested: str, units: tuple[str, ...]) -> tuple[str, ...]:
    """The precisions to measure: ``auto`` is fp32 and bf16 where the CPU has bf16 units."""
    if requested == "auto":
        return ("fp32", "bf16") if units else ("fp32",)
    return {"both": ("fp32", "bf16"), "fp32": ("fp32",), "bf16": ("bf16",)}[requested]


def encoder_loss(outputs: tuple[torch.Tensor, torch.Tensor | None], _targets: Any) -> tuple[torch.Tensor, dict]:
    """A stand-in loss so the bare encoders can be trained for the baseline training rows."""
    text, vision = outputs
    loss = text.float().pow(2).mean() + (vision.float().pow(2).mean() if vision is not None else 0.0)
    return loss, {}


def module_profile(
    model: torch.nn.Module, config: Any, batch: int, repeats: int, max_depth: int = 3
) -> list[dict[str, Any]]:
    """Inclusive wall time (median over ``repeats`` forward passes) and FLOPs of the sub-modules
    down to ``max_depth`` dotted levels. A module called several times in one pass is summed; a
    module whose own forward is never called (e.g. a vision tower driven layer by layer) gets the
    sum of its called descendants."""
    inputs, _ = C.synthetic_batch(config, batch)
    model.eval()
    names = {m: n for n, m in model.named_modules() if n}
    children: dict[str, list[str]] = {"": []}
    for name in names.values():
        children.setdefault(name, [])
        children[name.rsplit(".", 1)[0] if "." in name else ""].append(name)
    started: dict[str, list[float]] = {}
    spent: dict[str, float] = {}

    def pre(module, _args):
        started.setdefault(names[module], []).append(time.perf_counter())

    def post(module, _args, _out):
        name = names[module]
        spent[name] = spent.get(name, 0.0) + time.perf_counter() - started[name].pop()

    handles = [m.register_forward_pre_hook(pre) for m in names] + [m.register_forward_hook(post) for m in names]
    runs: list[dict[str, float]] = []
    totals = []
    try:
        with torch.inference_mode():
            model(**inputs)  # warm-up
            for _ in range(repeats):
                spent.clear()
                start = time.perf_counter()
                model(**inputs)
                totals.append(time.perf_counter() - start)
                runs.append(dict(spent))
    finally:
        for h in handles:
            h.remove()
    _, flops_by_path = C.count_flops(lambda: model(**inputs))
    root = type(model).__name__
    flops = {k[len(root) + 1 :]: v for k, v in flops_by_path.items() if k.startswith(root + ".")}

    def effective(values: dict[str, float], name: str) -> float:
        return values[name] if name in values else sum(effective(values, c) for c in children[name])

    total_s, total_flops = C.median(totals), max(flops_by_path.get(root, 0), 1)
    rows = [dict(module="(whole forward)", seconds=total_s, time_share=1.0, gflops=total_flops / 1e9, flop_share=1.0)]
    glue_s, glue_flops = total_s, total_flops
    for name in names.values():
        if name.count(".") >= max_depth:
            continue
        seconds = C.median([effective(r, name) for r in runs])
        module_flops = effective(flops, name)
        if "." not in name:
            glue_s, glue_flops = glue_s - seconds, glue_flops - module_flops
        if seconds > 0 or module_flops > 0:
            rows.append(
                dict(
                    module=name,
                    seconds=seconds,
                    time_share=seconds / total_s,
                    gflops=module_flops / 1e9,
                    flop_share=module_flops / total_flops,
                )
            )
    rows.append(
        dict(
            module="(outside sub-modules: functional code, hooks)",
            seconds=glue_s,
            time_share=glue_s / total_s,
            gflops=glue_flops / 1e9,
            flop_share=glue_flops / total_flops,
        )
    )
    return rows


def print_profile(rows: list[dict[str, Any]], min_share: float = 0.01, what: str = "full-size QGN, batch 16") -> None:
    print(f"\nPer-module profile of one forward pass ({what}; inference; inclusive; modules >= {min_share:.0%}):")
    print(f"  {'module':<48} {'ms':>9} {'time':>6} {'GFLOP':>8} {'FLOPs':>6}")
    for r in rows:
        if r["time_share"] < min_share and r["flop_share"] < min_share:
            continue
        indent = "  " * r["module"].count(".")
        print(
            f"  {indent + r['module']:<48} {r['seconds'] * 1000:9.1f} {r['time_share']:6.1%} "
            f"{r['gflops']:8.2f} {r['flop_share']:6.1%}"
        )


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="essential rows only (< 2 min on 2 cores)")
    parser.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--profile", action="store_true", help="per-module profile even if the ratio meets the goal")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a field of the full-size QGNConfig, e.g. --set num_decoder_layers=1 (repeatable)",
    )
    parser.add_argument(
        "--precision",
        choices=["auto", "both", "fp32", "bf16"],
        default="auto",
        help="auto: fp32, and bf16 too where the CPU has AMX / AVX-512 bf16 units (default)",
    )
    parser.add_argument(
        "--variants",
        action="store_true",
        help="only print the forward-FLOP ratio QGN / encoders of a few depth / width variants",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.variants:
        print(f"{'full-size variant':<40} {'params':>10} {'forward FLOPs':>19} {'QGN / encoders':>15}")
        rows = flop_variants()
        if args.json:
            Path(args.json).write_text(json.dumps({"variants": rows}, indent=2) + "\n")
        return 0
    overrides = parse_overrides(args.overrides)
    quick = args.quick
    contention = C.CpuContention()
    big = dict(warmup=1, repeats=4) if quick else dict(warmup=2, repeats=5)  # batch 16, full size
    small = dict(warmup=2, repeats=10) if quick else dict(warmup=3, repeats=20)  # batch 1 or tiny model
    results: dict[str, Any] = {
        "mode": "quick" if quick else "full",
        "machine": C.machine_info(),
        "rows": [],
        "config_overrides": overrides,
    }
    info = results["machine"]
    print(
        f"torch {info['torch']}, transformers {info['transformers']}, {info['torch_threads']} threads, "
        f"{info['cpu_count']} CPUs: {info['cpu_model']}"
    )
    units = tuple(info["cpu_bf16_units"])
    precisions = results["precisions"] = choose_precisions(args.precision, units)
    print(bf16_units_line(units) + f"; measuring {' and '.join(precisions)}")
    peak = C.matmul_peak()
    print(f"measured fp32 matmul peak (2048^3): {peak / 1e9:.1f} GFLOP/s (measured again at the end)")
    peak_bf16 = C.matmul_peak(dtype=torch.bfloat16) if "bf16" in precisions else None
    if peak_bf16:
        print(
            f"measured bf16 matmul peak (2048^3): {peak_bf16 / 1e9:.1f} GFLOP/s "
            f"({peak_bf16 / peak:.1f} x fp32; measured again at the end)"
        )
    print()
    rows = results["rows"]

    # -- full-size: QGN vs the encoders alone
    full = C.full_size_config(**overrides)
    if overrides:
        print(f"full-size config with {overrides}")
    print("building the full-size models (random weights) ...", flush=True)
    qgn, criterion = C.build_qgn(full)
    encoders = C.Encoders(full)
    results["parameters"] = {"qgn_full": C.count_parameters(qgn), "encoders_full": C.count_parameters(encoders)}
    print(
        f"  QGN {C.count_parameters(qgn) / 1e6:.1f} M parameters, encoders {C.count_parameters(encoders) / 1e6:.1f} M"
    )
    time_of: dict[tuple[str, str, int, str], float] = {}
    best_of: dict[tuple[str, int, str], float] = {}
    for batch in (1, 16):
        setting = small if batch == 1 else big
        for row in bench_inference(
            {"qgn-full": qgn, "encoders-full": encoders}, full, batch, **setting, precisions=precisions
        ):
            rows.append(row)
            time_of[(row["model"], "inference", batch, row["precision"])] = row["median_s"]
            best_of[(row["model"], batch, row["precision"])] = row["best_s"]
    first = precisions[0]  # fp32, which the ratio goal is about; bf16 with --precision bf16 alone
    ratios = {
        f"batch_{b}": time_of[("qgn-full", "inference", b, first)] / time_of[("encoders-full", "inference", b, first)]
        for b in (1, 16)
    }
    results["inference_ratio"] = ratios
    results["inference_ratio_best"] = {
        f"batch_{b}": best_of[("qgn-full", b, first)] / best_of[("encoders-full", b, first)] for b in (1, 16)
    }
    if precisions == ("fp32", "bf16"):
        results["bf16_speedup"] = {
            f"{model}_batch_{b}": time_of[(model, "inference", b, "fp32")] / time_of[(model, "inference", b, "bf16")]
            for model in ("qgn-full", "encoders-full")
            for b in (1, 16)
        }

    # -- FLOPs per post (batch 16 / 16: the padded shape of every post is the same)
    inputs16, targets16 = C.synthetic_batch(full, 16)
    qgn.eval(), encoders.eval()
    qgn_flops, _ = C.count_flops(lambda: qgn(**inputs16))  # noqa: F821  (called before the del below; pyflakes reads closures at the end of the scope)
    enc_flops, _ = C.count_flops(lambda: encoders(**inputs16))  # noqa: F821  (called before the del below; pyflakes reads closures at the end of the scope)
    flops = {"qgn_forward_per_post": qgn_flops / 16, "encoders_forward_per_post": enc_flops / 16}
    batch16_times = {
        (label, p): (time_of[(label, "inference", 16, p)], best_of[(label, 16, p)])
        for label in ("qgn-full", "encoders-full")
        for p in precisions
    }
    if not quick:  # forward + backward of one training step (the optimizer step is not counted)
        qgn.train()

        def fwd_bwd():
            loss, _ = criterion(qgn(**inputs16), targets16)  # noqa: F821  (called before the del below; pyflakes reads closures at the end of the scope)
            loss.backward()

        train_flops, _ = C.count_flops(fwd_bwd)
        qgn.zero_grad(set_to_none=True)
        flops["qgn_train_per_post"] = train_flops / 16
    results["flops"] = flops

    # -- training rows
    if not quick:
        for batch in (1, 16):
            setting = small if batch == 1 else big
            for precision in precisions:
                rows.append(bench_training("qgn-full", qgn, criterion, full, batch, **setting, precision=precision))
                rows.append(
                    bench_training("encoders-full", encoders, encoder_loss, full, batch, **setting, precision=precision)
                )
    profile_needed = args.profile or ratios["batch_16"] > RATIO_GOAL
    if profile_needed:
        results["profile"] = module_profile(qgn, full, 16, repeats=3 if quick else 5)
    del qgn, criterion, encoders
    gc.collect()

    # -- tiny model (tests / demo)
    tiny = C.tiny_config()
    tiny_qgn, tiny_criterion = C.build_qgn(tiny)
    results["parameters"]["qgn_tiny"] = C.count_parameters(tiny_qgn)
    for batch in (1, 16):
        if not quick:
            rows.extend(bench_inference({"qgn-tiny": tiny_qgn}, tiny, batch, **small, precisions=precisions))
        for precision in precisions:
            rows.append(bench_training("qgn-tiny", tiny_qgn, tiny_criterion, tiny, batch, **small, precision=precision))

    # Peaks again at the end, the better of the two: a busy moment at the start would understate them.
    peak = results["matmul_peak_gflops"] = max(peak, C.matmul_peak()) / 1e9
    peaks = {"fp32": peak}
    if peak_bf16:
        peaks["bf16"] = results["matmul_peak_bf16_gflops"] = max(peak_bf16, C.matmul_peak(dtype=torch.bfloat16)) / 1e9
    for precision in precisions:
        suffix = "" if precision == "fp32" else "_bf16"
        for label, total in (("qgn", qgn_flops), ("encoders", enc_flops)):
            median_s, best_s = batch16_times[(f"{label}-full", precision)]
            flops[f"{label}_inference_achieved_gflops{suffix}"] = total / median_s / 1e9
            flops[f"{label}_inference_peak_fraction{suffix}"] = total / median_s / 1e9 / peaks[precision]
            flops[f"{label}_inference_peak_fraction_best{suffix}"] = total / best_s / 1e9 / peaks[precision]
    results["other_processes_cpu_share"] = share = contention.share()
    results["warnings"] = [w for w in [C.contention_warning(share, torch.get_num_threads())] if w]
    print_report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    print(f"qgn/encoders inference ratio: {ratios['batch_16']:.2f}")
    speedup = results.get("bf16_speedup", {}).get("qgn-full_batch_16")
    print(
        f"bf16/fp32 inference speed-up: {speedup:.2f}"
        if speedup
        else "bf16/fp32 inference speed-up: n/a (bf16 not measured: "
        + (
            "no bf16 units on this CPU; --precision both measures it emulated)"
            if not units
            else f"--precision {args.precision})"
        )
    )
    return 0


def print_report(results: dict[str, Any]) -> None:
    print(
        f"\n{'model':<14} {'mode':<9} {'prec':<4} {'batch':>5} {'ms/batch':>10} {'best ms':>10} {'posts/s':>9} "
        f"{'peak RSS +MB':>13}"
    )
    for r in results["rows"]:
        print(
            f"{r['model']:<14} {r['mode']:<9} {r['precision']:<4} {r['batch']:>5} {r['median_s'] * 1000:10.1f} "
            f"{r['best_s'] * 1000:10.1f} {r['posts_per_s']:9.2f} {r['peak_rss_mb']:13,.0f}"
        )
    ratios, flops, peak = results["inference_ratio"], results["flops"], results["matmul_peak_gflops"]
    print(
        f"\nQGN / encoders inference time (medians): batch 1 {ratios['batch_1']:.2f}, batch 16 {ratios['batch_16']:.2f} "
        f"(goal <= {RATIO_GOAL})"
    )
    print(
        f"forward FLOPs per post: QGN {flops['qgn_forward_per_post'] / 1e9:.2f} GFLOP, encoders "
        f"{flops['encoders_forward_per_post'] / 1e9:.2f} GFLOP "
        f"(QGN / encoders {flops['qgn_forward_per_post'] / flops['encoders_forward_per_post']:.2f})"
    )
    if "qgn_train_per_post" in flops:
        print(
            f"training FLOPs per post (forward + backward): {flops['qgn_train_per_post'] / 1e9:.2f} GFLOP "
            f"({flops['qgn_train_per_post'] / flops['qgn_forward_per_post']:.2f} x forward)"
        )
    if "qgn_inference_achieved_gflops" in flops:
        print(
            f"QGN inference at batch 16: {flops['qgn_inference_achieved_gflops']:.1f} GFLOP/s = "
            f"{flops['qgn_inference_peak_fraction']:.0%} of the measured fp32 matmul peak ({peak:.0f} GFLOP/s); "
            f"encoders alone {flops['encoders_inference_peak_fraction']:.0%}"
        )
    if "qgn_inference_achieved_gflops_bf16" in flops:
        print(
            f"QGN inference at batch 16 in bf16: {flops['qgn_inference_achieved_gflops_bf16']:.1f} GFLOP/s = "
            f"{flops['qgn_inference_peak_fraction_bf16']:.0%} of the measured bf16 matmul peak "
            f"({results['matmul_peak_bf16_gflops']:.0f} GFLOP/s); encoders alone "
            f"{flops['encoders_inference_peak_fraction_bf16']:.0%}"
        )
    for key, value in results.get("bf16_speedup", {}).items():
        model, batch = key.rsplit("_batch_", 1)
        print(f"bf16 / fp32 inference speed-up, {model}, batch {batch}: {value:.2f} x")
    if "profile" in results:
        print_profile(results["profile"])
    share = results.get("other_processes_cpu_share")
    if share is not None:
        print(f"\nCPU time used by other processes during the run: {share:.0%} of the machine")
    for warning in results.get("warnings", []):
        print(warning)


if __name__ == "__main__":
    sys.exit(main())
