"""``--precision auto``: bf16 where the hardware multiplies bf16 natively, float32 elsewhere, whatever this machine is."""

from __future__ import annotations

import pytest
import torch

from lightning_app.errors import ConfigError
from lightning_app.model import precision
from lightning_app.model.precision import accelerator_device, cpu_flags, resolve_precision


@pytest.mark.parametrize("flags, expected", [({"avx512f", "amx_bf16", "amx_tile"}, "bf16-mixed"),
                                             ({"avx512f", "avx512_bf16"}, "bf16-mixed"),
                                             ({"avx2", "avx512f"}, "32-true"), (set(), "32-true")])
def test_auto_on_a_cpu_follows_its_bf16_flags(monkeypatch, flags, expected):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    assert resolve_precision("auto", "cpu") == expected


@pytest.mark.parametrize("capability, expected", [((8, 0), "bf16-mixed"), ((9, 0), "bf16-mixed"), ((7, 5), "32-true")])
def test_auto_on_cuda_follows_the_compute_capability(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args: capability)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"amx_bf16"}))  # the CPU does not decide
    assert accelerator_device("auto") == "cuda"
    assert resolve_precision("auto", "cuda") == expected


def test_auto_elsewhere_is_float32_and_explicit_choices_stay(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert resolve_precision("auto", "mps") == "32-true"
    assert [resolve_precision(p, "cpu") for p in ("32", 32, "32-true", "bf16-mixed", "bf16-true")] == [
        "32-true", "32-true", "32-true", "bf16-mixed", "bf16-true"]
    with pytest.raises(ConfigError, match="precision: expected one of auto, 32, 32-true, bf16-mixed, bf16-true, got '16'"):
        resolve_precision("16", "cpu")


def test_accelerator_names_map_to_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert [accelerator_device(a) for a in ("auto", "cpu", "gpu", "cuda", "mps")] == ["cpu", "cpu", "cuda", "cuda", "mps"]


def test_cpu_flags_reads_proc_cpuinfo_flags(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 amx_bf16\nmodel name\t: x\n")
    real_path = precision.Path
    monkeypatch.setattr(precision, "Path", lambda p: info if p == "/proc/cpuinfo" else real_path(p))
    assert {"fpu", "sse2", "amx_bf16"} <= cpu_flags() and "x" not in cpu_flags()
    monkeypatch.setattr(precision, "Path", lambda p: tmp_path / "missing")
    assert cpu_flags() == frozenset()
