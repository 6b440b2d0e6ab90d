"""Shared helpers of the benchmark scripts: configs, synthetic batches, timers, FLOP and memory meters.

Nothing here downloads anything: the full-size architecture (BERT-base-cased shapes + CLIP
ViT-B/32 shapes) is built from transformers configs with random weights, which is all a speed
benchmark needs.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
# Run straight from a checkout (e.g. on a bare GPU machine) without `pip install -e .`.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from qgn.engine.precision import autocast_dtype, cpu_bf16_units  # noqa: E402
from qgn.modeling.configuration_qgn import QGNConfig  # noqa: E402

# Twitter-GMNER shapes: ~16 words -> ~24 sub-words; padded batches of 32 sub-words and 20 words.
NUM_SUBWORDS = 32
NUM_WORDS = 20


# ----------------------------------------------------------------------------- configs / models
def full_size_config(**overrides: Any) -> QGNConfig:
    """The paper's architecture: bert-base-cased shapes (vocab 28996) + CLIP ViT-B/32 at 224 px."""
    from transformers import BertConfig, CLIPVisionConfig

    return QGNConfig(
        text_config=BertConfig().to_dict(),
        vision_config=CLIPVisionConfig(patch_size=32, image_size=224).to_dict(),
        image_size=224,
        **overrides,
    )


def tiny_config(**overrides: Any) -> QGNConfig:
    """The tests' / demo's tiny model (64-wide, 4-layer encoders, 64 px images)."""
    return QGNConfig.tiny(vocab_size=1000, **overrides)


def model_classes() -> tuple[type, type]:
    """``(QGNModel, SetCriterion)``, with a readable message if the model code is missing."""
    try:
        from qgn.modeling.criterion import SetCriterion
        from qgn.modeling.modeling_qgn import QGNModel
    except ImportError as exc:  # the scripts are useless without the model: say why and stop
        raise SystemExit(f"cannot import the QGN model or criterion: {exc}") from exc
    return QGNModel, SetCriterion


def build_qgn(config: QGNConfig) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A randomly initialised QGN model and its criterion."""
    QGNModel, SetCriterion = model_classes()
    torch.manual_seed(0)
    return QGNModel(config), SetCriterion(config)


class Encoders(torch.nn.Module):
    """BERT + CLIP vision built from the QGN config's encoder configs: the baseline QGN adds to.

    forward(input_ids (B,S), attention_mask (B,S), pixel_values (B,3,H,H) | None) -> (text (B,S,Dt), vision (B,P+1,Dv))
    """

    def __init__(self, config: QGNConfig):
        super().__init__()
        from transformers import BertConfig, BertModel, CLIPVisionConfig, CLIPVisionModel

        self.text = BertModel(BertConfig(**config.text_config))
        self.vision = None if config.text_only else CLIPVisionModel(CLIPVisionConfig(**config.vision_config))

    def forward(self, input_ids, attention_mask, pixel_values=None, **_: Any):
        text = self.text(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.vision is None or pixel_values is None:
            return text, None
        return text, self.vision(pixel_values=pixel_values).last_hidden_state


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- synthetic batches
def synthetic_batch(
    config: QGNConfig,
    batch_size: int,
    num_subwords: int = NUM_SUBWORDS,
    num_words: int = NUM_WORDS,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Model inputs and targets shaped like a padded Twitter-GMNER batch (see the model contract).

    Post ``b`` has ``num_words - 2*(b % 3)`` words; half of its words (as many as fit) get two
    sub-words, so post 0 fills all ``num_subwords`` positions ([CLS] w... [SEP]) and the others
    are padded. Each post has 1-3 entities; every other entity has a box.

    Returns (inputs, targets): inputs = input_ids (B,S), attention_mask (B,S), word_index (B,S),
    word_mask (B,W), pixel_values (B,3,H,H) unless text-only; targets = B dicts (labels, start,
    end, boxes (T,4) cxcywh, has_box, entity_index).
    """
    gen = torch.Generator().manual_seed(seed)
    vocab = config.text_config["vocab_size"] if config.text_config else 28996
    cls_id, sep_id = (101, 102) if vocab > 200 else (2, 3)
    input_ids = torch.zeros(batch_size, num_subwords, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    word_index = torch.full_like(input_ids, -1)
    word_mask = torch.zeros(batch_size, num_words, dtype=torch.bool)
    targets = []
    for b in range(batch_size):
        n_words = max(2, num_words - 2 * (b % 3))
        doubled = min(n_words // 2, num_subwords - 2 - n_words)
        owners = []
        for w in range(n_words):
            owners.extend([w, w] if w < doubled else [w])
        owners = owners[: num_subwords - 2]
        length = len(owners) + 2
        input_ids[b, 0], input_ids[b, length - 1] = cls_id, sep_id
        input_ids[b, 1 : length - 1] = torch.randint(200 if vocab > 200 else 5, vocab, (length - 2,), generator=gen)
        attention_mask[b, :length] = 1
        word_index[b, 1 : length - 1] = torch.tensor(owners)
        word_mask[b, :n_words] = True
        targets.append(_targets(config, n_words, 1 + b % 3, gen))
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, word_index=word_index, word_mask=word_mask)
    if not config.text_only:
        inputs["pixel_values"] = torch.randn(
            batch_size, 3, config.input_image_size, config.input_image_size, generator=gen
        )
    return move(inputs, device), [move(t, device) for t in targets]


def _targets(config: QGNConfig, n_words: int, n_entities: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """``n_entities`` non-overlapping one-to-three-word entities; entities 0 and 2 have a box."""
    segment = n_words // n_entities  # one entity per segment keeps the spans apart
    starts = torch.arange(n_entities) * segment + torch.randint(0, max(1, segment - 3), (n_entities,), generator=gen)
    ends = starts + torch.randint(0, 3, (n_entities,), generator=gen)
    has_box = torch.arange(n_entities) % 2 == 0
    boxes = torch.rand(n_entities, 4, generator=gen) * torch.tensor([0.5, 0.5, 0.3, 0.3]) + torch.tensor(
        [0.25, 0.25, 0.1, 0.1]
    )
    boxes[~has_box] = 0.0
    return dict(
        labels=torch.randint(0, len(config.entity_types), (n_entities,), generator=gen),
        start=starts,
        end=ends,
        boxes=boxes,
        has_box=has_box,
        entity_index=torch.arange(n_entities),
    )


def move(tensors: dict[str, torch.Tensor], device: str | torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in tensors.items()}


# ----------------------------------------------------------------------------- timing
def time_calls(fn: Callable[[], Any], warmup: int, repeats: int, sync: Callable[[], None] | None = None) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
    return times


def autocast(precision: str, device_type: str = "cpu") -> torch.autocast:
    """Autocast for a precision name (``"bf16"``; ``"fp32"`` / ``"no"``: autocast off), as the
    trainer and predictor run it."""
    dtype = autocast_dtype(precision)
    return torch.autocast(device_type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def median(values: list[float]) -> float:
    return statistics.median(values)


def train_step_fn(
    model: torch.nn.Module,
    criterion: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: dict[str, torch.Tensor],
    targets: list[dict[str, torch.Tensor]],
    autocast_dtype: torch.dtype | None = None,
) -> Callable[[], float]:
    """One optimisation step (forward, criterion in fp32, backward, AdamW step) as a closure."""
    device_type = next(model.parameters()).device.type

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            outputs = model(**inputs)
        # The criterion works in fp32 even under autocast, as the training engine runs it.
        with torch.autocast(device_type, enabled=False):
            loss, _ = criterion(outputs, targets)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


# ----------------------------------------------------------------------------- FLOPs
def count_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """Total FLOPs of ``fn`` (matmuls, convolutions, attention; FlopCounterMode's convention of
    2 FLOPs per multiply-add) and the total per module name (nested names, inclusive).

    Call it with autograd on (not under no_grad / inference_mode): FlopCounterMode's module
    tracker hooks the backward of module inputs and fails on views made under no_grad.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    per_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    return counter.get_total_flops(), per_module


def matmul_peak(
    n: int = 2048, repeats: int = 10, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> float:
    """Measured FLOP/s of an ``n x n`` by ``n x n`` matmul (best of ``repeats``): this machine's
    practical peak at the current thread count."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else None
    times = time_calls(lambda: torch.mm(a, b), warmup=2, repeats=repeats, sync=sync)
    # The best, not the median: shared CPUs are noisy and a peak is what the hardware can reach.
    return 2 * n**3 / min(times)


# ----------------------------------------------------------------------------- memory
def _rss_bytes() -> int:
    """Current resident set size (Linux /proc; elsewhere the lifetime peak, the best available)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        import resource

        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def release_free_memory() -> None:
    """Collect garbage and return free heap pages to the OS (glibc only; a no-op elsewhere)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRSS:
    """Context manager: peak resident set size above the value at entry, sampled every 2 ms by a
    thread (torch kernels release the GIL, so the sampler keeps running during them).

    Freed heap memory is handed back to the OS at entry (glibc ``malloc_trim``) so that memory
    cached by earlier measurements is counted again; where that is unavailable the figure is a
    lower bound of the working set.
    """

    def __init__(self, interval_s: float = 0.002):
        self.interval_s, self.peak_delta = interval_s, 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_delta = max(self.peak_delta, _rss_bytes() - self._base)
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakRSS:
        release_free_memory()
        self._base = _rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_delta = max(self.peak_delta, _rss_bytes() - self._base)


# ----------------------------------------------------------------------------- machine
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    import transformers

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_bf16_units": list(cpu_bf16_units()),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_1m"] = os.getloadavg()[0]
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def fmt_mb(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:,.0f}"


class CpuContention:
    """Share of the machine's CPU time used by *other* processes (and stolen by the hypervisor)
    since construction: (busy time of all CPUs from /proc/stat - this process's CPU time) /
    (wall time x CPUs). Linux only; ``share()`` is None elsewhere."""

    def __init__(self) -> None:
        self._start = self._snapshot()

    @staticmethod
    def _snapshot() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as f:
                fields = [float(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        hz = os.sysconf("SC_CLK_TCK")
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
        own = os.times()
        return (sum(fields[:8]) - idle) / hz, own.user + own.system, time.perf_counter()

    def share(self) -> float | None:
        end = self._snapshot()
        if self._start is None or end is None:
            return None
        busy, own, wall = (e - s for e, s in zip(end, self._start))
        return max(0.0, busy - own) / max(wall * (os.cpu_count() or 1), 1e-9)


def contention_warning(share: float | None, threads: int, threshold: float = 0.15) -> str | None:
    """A warning line when other processes used more than ``threshold`` of the CPUs that this
    process's ``threads`` needed (CPUs beyond our thread count are free for them to use)."""
    cpus = os.cpu_count() or 1
    spare = max(0.0, 1.0 - threads / cpus)
    if share is None or share <= spare + threshold:
        return None
    return (
        f"WARNING: other processes used {share:.0%} of the CPUs during this run, so these timings "
        "are pessimistic and noisy (the FLOP counts are exact); rerun on an idle machine, or with "
        "--threads 1 on a shared one (torch's threads then do not wait on each other)"
    )
