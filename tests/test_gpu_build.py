"""GPU support: the bootstrap's CUDA detection (stub nvidia-smi/nvcc on PATH) and the app's
"Install GPU support", which runs the real bootstrap step and names the missing piece."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from mixdesk.core.machine import gpu_build
from mixdesk.core.machine.hardware import GIB, GpuInfo, HardwareInfo
from tests.helpers.window import make_window

ROOT = Path(__file__).resolve().parent.parent
BASH = shutil.which("bash") or "/bin/bash"


def stub(directory: Path, name: str, text: str) -> None:
    """An executable ``name`` in ``directory`` that prints ``text`` (for nvidia-smi, the
    GPU's name when asked for names, its compute capability otherwise)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\n{text}\n")
    path.chmod(0o755)


def machine_with(
    tmp_path: Path, *, nvcc: str | None, capability: str = "7.0", cpu_flags: str = "avx2 fma"
) -> dict[str, str]:
    """An environment whose PATH has a stub NVIDIA driver (a V100 by default) and nvcc, on a
    CPU with ``cpu_flags`` (a stand-in /proc/cpuinfo)."""
    bin_dir = tmp_path / "bin"
    cpuinfo = tmp_path / "cpuinfo"
    tmp_path.mkdir(parents=True, exist_ok=True)
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 {cpu_flags}\n")
    stub(
        bin_dir,
        "nvidia-smi",
        f'case "$*" in *name*) echo "Tesla V100-SXM2-16GB";; *) echo "{capability}";; esac',
    )
    if nvcc is not None:
        stub(bin_dir, "nvcc", f'echo "Cuda compilation tools, release {nvcc}, V{nvcc}.1"')
    return {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin", "MIXDESK_CPUINFO": str(cpuinfo)}


def flags(env: dict[str, str]) -> list[str]:
    proc = subprocess.run(
        [BASH, str(ROOT / "packaging" / "bootstrap.sh"), "llama-flags"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    return proc.stdout.splitlines()


def test_nvidia_gpu_and_nvcc_build_cuda_keyed_by_toolkit_and_architecture(tmp_path: Path) -> None:
    key, cmake = flags(machine_with(tmp_path, nvcc="12.4"))
    assert "-DGGML_CUDA=on" in cmake and "-DCMAKE_CUDA_ARCHITECTURES=70" in cmake
    assert "-DGGML_RPC=ON" in cmake
    assert key == "cuda12.4-sm70-rpc"  # the wheel cache folder: a CPU wheel never comes back


def test_a_cpu_with_amx_builds_without_ggml_amx_kernels(tmp_path: Path) -> None:
    """ggml's AMX kernels crash on Q4_K models (seen on a Xeon with amx_int8): a CPU with AMX
    builds without them, under its own wheel key (a cached AMX wheel never comes back)."""
    env = machine_with(tmp_path, nvcc=None, cpu_flags="avx512f amx_bf16 amx_tile amx_int8")
    key, cmake = flags(env)
    assert key == "cpu-rpc-noamx"
    assert "-DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'" in cmake
    key, cmake = flags(machine_with(tmp_path / "cuda", nvcc="12.4", cpu_flags="amx_tile"))
    assert key == "cuda12.4-sm70-rpc-noamx" and "-DGGML_CUDA=on" in cmake


@pytest.mark.parametrize(("nvcc", "capability"), [(None, "8.6"), ("13.0", "7.0")])
def test_no_usable_toolkit_builds_for_the_cpu(
    tmp_path: Path, nvcc: str | None, capability: str
) -> None:
    key, cmake = flags(machine_with(tmp_path, nvcc=nvcc, capability=capability))
    assert key == "cpu-rpc" and "CUDA" not in cmake


@pytest.mark.parametrize(
    ("nvcc", "words"),
    [
        (
            None,
            "the CUDA toolkit (nvcc) is not installed; for a V100 (Tesla V100-SXM2-16GB) "
            "install CUDA 12.x, as CUDA 13 no longer supports Volta.",
        ),
        ("13.0", "CUDA 13 no longer supports Volta (Tesla V100-SXM2-16GB); install CUDA 12.x"),
    ],
)
def test_install_gpu_support_names_the_missing_piece(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nvcc: str | None, words: str
) -> None:
    for key, value in machine_with(tmp_path, nvcc=nvcc).items():
        monkeypatch.setenv(key, value)
    with pytest.raises(gpu_build.GpuBuildError) as caught:
        gpu_build.install_gpu_support()
    assert words in str(caught.value)
    assert str(gpu_build.build_log_path()) in str(caught.value)


def test_window_installs_gpu_support_in_the_background(
    qtbot: QtBot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in machine_with(tmp_path, nvcc=None).items():
        monkeypatch.setenv(key, value)
    idle_gpu = HardwareInfo(
        ram_total_bytes=16 * GIB,
        ram_available_bytes=12 * GIB,
        physical_cores=2,
        logical_cores=2,
        gpus=[GpuInfo("Tesla V100-SXM2-16GB", "cuda", 16 * GIB, 15 * GIB)],
        gpu_offload=False,
    )
    window = make_window(qtbot, tmp_path, idle_gpu)
    window.set_hardware(idle_gpu)
    bar = window.banner
    assert bar.install.isVisible()
    with qtbot.waitSignal(bar.install.clicked, timeout=1000):
        bar.install.click()
    assert bar.busy.isVisible() and not bar.install.isEnabled()  # building, off the GUI thread
    qtbot.waitUntil(lambda: bar.task is None, timeout=60_000)
    assert "the CUDA toolkit (nvcc) is not installed" in bar.banner.text()
    assert bar.install.isEnabled() and bar.show_log.isVisible()
    window.close()
