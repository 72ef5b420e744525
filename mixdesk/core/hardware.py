"""What this machine has: GPUs with their memory, RAM and CPU cores.

NVIDIA GPUs are read through ``nvidia-smi`` (the driver's own tool, present wherever the
driver is); AMD GPUs through the amdgpu driver's sysfs files; Apple silicon shares RAM with
its GPU (Metal may use about three quarters of it). Each probe is best effort: a probe that
fails reports nothing rather than an error, and the log says why.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

MIB = 1 << 20
GIB = 1 << 30


@dataclass(frozen=True)
class GpuInfo:
    """One GPU and its memory in bytes."""

    name: str
    backend: str  # "cuda", "rocm", "metal"
    total_bytes: int
    free_bytes: int
    index: int = 0


@dataclass(frozen=True)
class HardwareInfo:
    """The machine as the offload planner sees it."""

    ram_total_bytes: int
    ram_available_bytes: int
    physical_cores: int
    logical_cores: int
    gpus: list[GpuInfo] = field(default_factory=list)


def _nvidia_smi(timeout: float = 5.0) -> list[GpuInfo]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [
                exe,
                "--query-gpu=index,name,memory.total,memory.free",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as err:
        log.info("nvidia-smi failed: %s", err)
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            continue
        try:
            gpus.append(
                GpuInfo(
                    name=parts[1],
                    backend="cuda",
                    total_bytes=int(parts[2]) * MIB,
                    free_bytes=int(parts[3]) * MIB,
                    index=int(parts[0]),
                )
            )
        except ValueError:
            log.info("unreadable nvidia-smi line: %r", line)
    return gpus


def _amd_sysfs(root: Path = Path("/sys/class/drm")) -> list[GpuInfo]:
    gpus = []
    for i, card in enumerate(sorted(root.glob("card[0-9]*"))):
        total_file = card / "device" / "mem_info_vram_total"
        used_file = card / "device" / "mem_info_vram_used"
        if not total_file.exists():
            continue
        try:
            total = int(total_file.read_text().strip())
            used = int(used_file.read_text().strip())
        except (OSError, ValueError):
            continue
        name_file = card / "device" / "product_name"
        name = name_file.read_text().strip() if name_file.exists() else f"AMD GPU ({card.name})"
        gpus.append(
            GpuInfo(
                name=name,
                backend="rocm",
                total_bytes=total,
                free_bytes=max(0, total - used),
                index=i,
            )
        )
    return gpus


def _apple_unified(ram_total: int, ram_available: int) -> list[GpuInfo]:
    if platform.system() != "Darwin" or platform.machine() != "arm64":
        return []
    # Metal's recommendedMaxWorkingSetSize is about 3/4 of RAM on Apple silicon.
    budget = ram_total * 3 // 4
    return [
        GpuInfo(
            name="Apple silicon GPU",
            backend="metal",
            total_bytes=budget,
            free_bytes=min(budget, ram_available),
        )
    ]


def detect_gpus(*, ram_total: int = 0, ram_available: int = 0) -> list[GpuInfo]:
    """Return the GPUs MixDesk can offload to (empty when none is found)."""
    return _nvidia_smi() or _amd_sysfs() or _apple_unified(ram_total, ram_available)


def detect() -> HardwareInfo:
    """Probe this machine."""
    mem = psutil.virtual_memory()
    logical = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    physical = psutil.cpu_count(logical=False) or logical
    return HardwareInfo(
        ram_total_bytes=mem.total,
        ram_available_bytes=mem.available,
        physical_cores=physical,
        logical_cores=logical,
        gpus=detect_gpus(ram_total=mem.total, ram_available=mem.available),
    )


def format_bytes(n: float) -> str:
    """Format a byte count the way users read memory sizes (GiB/MiB)."""
    if abs(n) >= GIB:
        return f"{n / GIB:.2f} GiB"
    return f"{n / MIB:.1f} MiB"
