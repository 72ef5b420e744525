"""Hardware detection (with the GPU faked at its lowest layer: NVML's answers, nvidia-smi's output,
amdgpu's sysfs files) and the user's overrides."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mixdesk.core.machine import hardware
from mixdesk.core.machine.hardware import GIB, MIB, Overrides, apply_overrides, parse_size
from mixdesk.errors import InvalidArgumentError


class FakeNvml:
    """Stands in for the NVIDIA driver library: the answers NVML gives on a V100 machine."""

    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail
        self.shut = False

    def nvmlInit(self) -> None:  # noqa: N802 - NVML's names
        if self.fail:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return 1

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:  # noqa: N802
        return i

    def nvmlDeviceGetName(self, _h: int) -> bytes:  # noqa: N802
        return b"Tesla V100-SXM2-16GB"

    def nvmlDeviceGetMemoryInfo(self, _h: int) -> Any:  # noqa: N802
        return SimpleNamespace(total=16160 * MIB, free=15860 * MIB, used=300 * MIB)

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.shut = True


def test_nvml_gpus() -> None:
    nvml = FakeNvml()
    gpus = hardware.detect_gpus(nvml=nvml)  # type: ignore[arg-type]
    assert gpus == [hardware.GpuInfo("Tesla V100-SXM2-16GB", "cuda", 16160 * MIB, 15860 * MIB, 0)]
    assert nvml.shut


def test_nvidia_smi_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\necho '0, NVIDIA GeForce RTX 4090, 24564, 23000'\necho '1, NVIDIA GeForce RTX 3090, 24576, 1000'\n"
    )
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    gpus = hardware.detect_gpus(nvml=FakeNvml(fail=True))  # type: ignore[arg-type]
    assert [g.name for g in gpus] == ["NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 3090"]
    assert gpus[0].free_bytes == 23000 * MIB
    assert gpus[1].index == 1


def test_amd_sysfs(tmp_path: Path) -> None:
    dev = tmp_path / "card0" / "device"
    dev.mkdir(parents=True)
    (dev / "mem_info_vram_total").write_text(str(16 * GIB))
    (dev / "mem_info_vram_used").write_text(str(1 * GIB))
    (dev / "product_name").write_text("Radeon RX 6800\n")
    (tmp_path / "card1").mkdir()  # an integrated GPU without VRAM files
    gpus = hardware._amd_sysfs(tmp_path)
    assert gpus == [hardware.GpuInfo("Radeon RX 6800", "rocm", 16 * GIB, 15 * GIB, 0)]


def test_this_machine() -> None:
    hw = hardware.detect()
    assert hw.ram_total_bytes > 0
    assert hw.physical_cores >= 1
    assert hw.gpu_offload is False  # llama-cpp-python is built CPU-only here
    assert hardware.llama_gpu_backends() == []


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("16GiB", 16 * GIB),
        ("15860MiB", 15860 * MIB),
        ("16 GB", 16_000_000_000),
        ("1024", 1024),
        ("1.5gib", 3 * GIB // 2),
    ],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "16 parsecs", "", "-3GiB"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(InvalidArgumentError, match="not a memory size"):
        parse_size(text)


def test_overrides() -> None:
    base = hardware.HardwareInfo(
        ram_total_bytes=8 * GIB,
        ram_available_bytes=6 * GIB,
        physical_cores=2,
        logical_cores=2,
        gpus=[],
        gpu_offload=False,
    )
    v100 = apply_overrides(base, Overrides(vram="15860MiB/16160MiB", ram="64GiB"))
    assert v100.gpus[0].free_bytes == 15860 * MIB
    assert v100.gpus[0].total_bytes == 16160 * MIB
    assert v100.gpu_offload
    assert v100.ram_available_bytes == 64 * GIB
    assert v100.overridden == ("vram", "ram")
    none = apply_overrides(v100, Overrides(gpu="none"))
    assert none.gpus == []
    with pytest.raises(InvalidArgumentError, match="only choice is 'none'"):
        apply_overrides(base, Overrides(gpu="all"))
    with pytest.raises(InvalidArgumentError, match="cannot exceed"):
        apply_overrides(base, Overrides(vram="20GiB/16GiB"))


def test_environment_overrides() -> None:
    assert Overrides.from_env("vram=16GiB, ram=64GiB") == Overrides(vram="16GiB", ram="64GiB")
    assert Overrides.from_env("gpu=none").gpu == "none"
    with pytest.raises(InvalidArgumentError, match="MIXDESK_HW"):
        Overrides.from_env("vram16")
    merged = Overrides(vram="8GiB", ram="16GiB").merged_with(Overrides(vram="24GiB"))
    assert merged == Overrides(vram="24GiB", ram="16GiB")
