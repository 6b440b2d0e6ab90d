"""Which floating-point precision to run in: fp32, or bf16 autocast where the hardware has it.

bf16 matrix products are several times faster than fp32 on GPUs since Ampere and on CPUs with
AMX or AVX-512 bf16 units; elsewhere PyTorch emulates them, slower than fp32. ``auto`` picks bf16
exactly where the units exist. The matcher, the losses and the post-processing always run in fp32.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import torch

from qgn.errors import QGNError

logger = logging.getLogger(__name__)

PRECISIONS = ("no", "fp32", "bf16", "fp16", "auto")  # "no" is accelerate's name for fp32
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@lru_cache(maxsize=1)
def cpu_bf16_units() -> tuple[str, ...]:
    """The bf16 units this CPU reports (``amx_bf16``, ``avx512_bf16``), from /proc/cpuinfo; ``()``
    where there are none or the system does not say (not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return tuple(flag for flag in CPU_BF16_FLAGS if flag in flags)
    except OSError:
        pass
    return ()


def bf16_supported(device_type: str) -> bool:
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        return bool(cpu_bf16_units())
    return False


def resolve_precision(requested: str, device_type: str, what: str = "running") -> str:
    """``"no"`` (fp32), ``"bf16"`` or ``"fp16"`` for ``requested`` on ``device_type``, logged.

    ``auto`` is bf16 where the device has bf16 units, else fp32. An explicit bf16 on a CPU without
    them, or fp16 on a CPU, falls back to fp32 with a warning that says why (emulated bf16 would be
    slower than fp32, and fp16 autocast on CPUs is not worth having)."""
    if requested not in PRECISIONS:
        raise QGNError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    units = ", ".join(cpu_bf16_units()) or "none"
    if requested in ("no", "fp32"):
        return "no"
    if requested == "auto":
        chosen = "bf16" if bf16_supported(device_type) else "no"
        where = (
            f"CPU bf16 units: {units}" if device_type == "cpu" else f"{device_type} bf16 support: {chosen == 'bf16'}"
        )
        logger.info(
            "precision auto: %s %s in %s (%s)", what, device_type.upper(), "bf16" if chosen == "bf16" else "fp32", where
        )
        return chosen
    if device_type == "cpu":
        if requested == "fp16":
            logger.warning(
                "fp16 asked for on the CPU: %s in fp32 (fp16 autocast is for GPUs; bf16 is the CPU's "
                "fast format where it has AMX or AVX-512 bf16)",
                what,
            )
            return "no"
        if not cpu_bf16_units():
            logger.warning(
                "bf16 asked for, but this CPU has no bf16 units (no amx_bf16 or avx512_bf16 in "
                "/proc/cpuinfo): %s in fp32, since emulated bf16 would be slower",
                what,
            )
            return "no"
    if requested == "bf16" and device_type == "cuda" and not bf16_supported("cuda"):
        raise QGNError("bf16 asked for, but this GPU does not support it; use fp16 or fp32")
    logger.info("%s on %s in %s", what, device_type.upper(), requested)
    return requested


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision, ``None`` for fp32."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
