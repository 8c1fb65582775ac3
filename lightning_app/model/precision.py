"""The inference precision of ``lightning embed`` and ``lightning mteb``: ``auto`` picks bf16 where
the hardware multiplies bf16 natively and float32 elsewhere."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch

from lightning_app.errors import ConfigError

DEFAULT_PRECISION = "auto"
PRECISIONS = ("auto", "32", "32-true", "bf16-mixed", "bf16-true")
# CPU flags of native bf16 multiplication (Intel AMX, AVX512-BF16), as /proc/cpuinfo spells them.
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    return frozenset(word for line in text.splitlines() if line.startswith("flags")
                     for word in line.partition(":")[2].split())


def native_bf16(device_type: str) -> bool:
    """Whether ``device_type`` (cpu, cuda, ...) multiplies bf16 natively: a CUDA device of compute
    capability 8.0 or later (Ampere on), a CPU with AMX or AVX512-BF16; nothing else."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8
    if device_type == "cpu":
        return bool(BF16_CPU_FLAGS & cpu_flags())
    return False


def resolve_precision(precision: str | int, device_type: str, choices: tuple[str, ...] = PRECISIONS) -> str:
    """The precision to run at: ``auto`` is bf16-mixed where ``native_bf16`` and 32-true elsewhere;
    ``32`` is 32-true; the others as given. Anything outside ``choices`` is refused."""
    precision = str(precision)  # 32 from a YAML file or Python is "32"
    if precision not in choices:
        raise ConfigError(f"precision: expected one of {', '.join(choices)}, got {precision!r}")
    if precision == "auto":
        return "bf16-mixed" if native_bf16(device_type) else "32-true"
    return "32-true" if precision == "32" else precision


def accelerator_device(accelerator: str) -> str:
    """The torch device type a Lightning accelerator name runs on (auto: cuda when there is one)."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu" if accelerator in ("auto", "cpu") else accelerator


def autocast(precision: str, device_type: str):
    """bf16 autocast on ``device_type`` for bf16-mixed; no change for 32-true."""
    if precision == "bf16-mixed":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return nullcontext()
