"""What this machine has: GPUs with their memory, RAM and CPU cores, and what llama.cpp can use.

NVIDIA GPUs are read through NVML (nvidia-ml-py, the driver's own library), with
``nvidia-smi`` as the fallback; AMD GPUs through the amdgpu driver's sysfs files (or
``rocm-smi``); Apple silicon shares RAM with its GPU (Metal may use about three quarters of
it). Each probe is best effort: one that fails reports nothing rather than an error, and
the log says why.

Everything can be overridden, so a user or a test can ask "what would a 16 GB V100 do":
``--vram 16GiB`` (or ``FREE/TOTAL``), ``--ram 64GiB``, ``--gpu none``, or the same in the
environment variable ``MIXDESK_HW`` (``vram=15860MiB/16160MiB,ram=64GiB,gpu=none``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import psutil

from mixdesk.errors import InvalidArgumentError

log = logging.getLogger(__name__)

MIB = 1 << 20
GIB = 1 << 30


#: A llama.cpp offload backend: a local GPU API, or "rpc" (a llama.cpp RPC server).
Backend = Literal["cuda", "rocm", "metal", "vulkan", "rpc"]


@dataclass(frozen=True)
class GpuInfo:
    """One GPU and its memory in bytes."""

    name: str
    backend: Backend
    total_bytes: int
    free_bytes: int
    index: int = 0
    #: "host:port" of an RPC server.
    endpoint: str = ""
    #: Measured bytes per second from this machine to an RPC server (0: not measured).
    link_bytes_per_s: float = 0.0
    #: The most an RPC server's cache of large tensors keeps (0 when it keeps none).
    cache_bytes: int = 0


@dataclass(frozen=True)
class HardwareInfo:
    """The machine as the offload planner sees it."""

    ram_total_bytes: int
    ram_available_bytes: int
    physical_cores: int
    logical_cores: int
    gpus: list[GpuInfo] = field(default_factory=list)
    #: Whether the installed llama.cpp build can offload to a GPU (None: unknown).
    gpu_offload: bool | None = None
    #: What was overridden ("vram", "ram", "gpu"), for messages.
    overridden: tuple[str, ...] = ()


def _nvml(nvml: Any = None) -> list[GpuInfo]:
    """GPUs from NVML. ``nvml`` is the pynvml module (tests pass a stand-in for the driver)."""
    if nvml is None:
        try:
            import pynvml

            nvml = pynvml
        except ImportError:
            return []
    try:
        nvml.nvmlInit()
    except Exception as err:  # noqa: BLE001 - no driver or no GPU: NVML raises its own error types
        log.info("NVML unavailable: %s", err)
        return []
    gpus = []
    try:
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            name = nvml.nvmlDeviceGetName(handle)
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                GpuInfo(
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    backend="cuda",
                    total_bytes=int(mem.total),
                    free_bytes=int(mem.free),
                    index=i,
                )
            )
    except Exception as err:  # noqa: BLE001
        log.info("NVML query failed: %s", err)
        return []
    finally:
        with contextlib.suppress(Exception):  # shutting down a library that may have failed
            nvml.nvmlShutdown()
    return gpus


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


def physical_cores() -> int:
    """The default thread count: physical cores (llama.cpp gains nothing from hyperthreads)."""
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def detect_gpus(
    *, ram_total: int = 0, ram_available: int = 0, nvml: ModuleType | None = None
) -> list[GpuInfo]:
    """Return the GPUs MixDesk can offload to (empty when none is found)."""
    return _nvml(nvml) or _nvidia_smi() or _amd_sysfs() or _apple_unified(ram_total, ram_available)


_BACKEND_LIBS = {
    "cuda": "ggml-cuda",
    "rocm": "ggml-hip",
    "metal": "ggml-metal",
    "vulkan": "ggml-vulkan",
}


def llama_gpu_backends() -> list[str]:
    """GPU backends the installed llama-cpp-python was built with, from its library files.

    Looks at the files only (llama_cpp is not imported into the app process). An empty list
    means a CPU-only build.
    """
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return []
    found = []
    for location in spec.submodule_search_locations:
        names = " ".join(p.name for p in Path(location).rglob("*ggml*") if p.is_file())
        found += [backend for backend, lib in _BACKEND_LIBS.items() if lib in names]
    if platform.system() == "Darwin" and platform.machine() == "arm64" and "metal" not in found:
        found.append("metal")  # Metal is compiled into the main library on Apple silicon
    return sorted(set(found))


def detect() -> HardwareInfo:
    """Probe this machine."""
    mem = psutil.virtual_memory()
    logical = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    physical = physical_cores()
    return HardwareInfo(
        ram_total_bytes=mem.total,
        ram_available_bytes=mem.available,
        physical_cores=physical,
        logical_cores=logical,
        gpus=detect_gpus(ram_total=mem.total, ram_available=mem.available),
        gpu_offload=bool(llama_gpu_backends()),
    )


_SIZE_RE = re.compile(r"^\s*([\d.]+)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1 << 10,
    "ki": 1 << 10,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1 << 20,
    "mi": 1 << 20,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1 << 30,
    "gi": 1 << 30,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1 << 40,
    "ti": 1 << 40,
}


def parse_size(text: str) -> int:
    """Parse a memory size such as "16GiB", "15860MiB", "16 GB" or "17179869184".

    Raises:
        InvalidArgumentError: not a size.
    """
    m = _SIZE_RE.match(text)
    if not m:
        raise InvalidArgumentError(
            f"'{text}' is not a memory size; write it like 16GiB or 15860MiB."
        )
    unit = (m.group(2) or "").lower()
    try:
        return int(float(m.group(1)) * _UNITS[unit])
    except (KeyError, ValueError):
        raise InvalidArgumentError(
            f"'{text}' is not a memory size; write it like 16GiB or 15860MiB."
        ) from None


@dataclass(frozen=True)
class Overrides:
    """What the user says the machine has, in place of what was detected."""

    vram: str | None = None  # "FREE" or "FREE/TOTAL"
    ram: str | None = None
    gpu: str | None = None  # "none" to ignore every GPU

    @classmethod
    def from_env(cls, text: str | None = None) -> Overrides:
        """Parse ``MIXDESK_HW`` ("vram=16GiB,ram=64GiB,gpu=none")."""
        text = os.environ.get("MIXDESK_HW", "") if text is None else text
        values: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            if not sep or key.strip() not in ("vram", "ram", "gpu"):
                raise InvalidArgumentError(
                    f"MIXDESK_HW has '{part}'; use vram=SIZE, ram=SIZE or gpu=none, separated by commas."
                )
            values[key.strip()] = value.strip()
        return cls(**values)

    def merged_with(self, other: Overrides) -> Overrides:
        """These overrides, with ``other``'s values where it sets them."""
        return Overrides(
            vram=other.vram or self.vram, ram=other.ram or self.ram, gpu=other.gpu or self.gpu
        )


def apply_overrides(hw: HardwareInfo, overrides: Overrides) -> HardwareInfo:
    """Return ``hw`` with the user's overrides applied.

    Raises:
        InvalidArgumentError: an override is not a size, or ``gpu`` is not "none".
    """
    changed: list[str] = []
    gpus = list(hw.gpus)
    offload = hw.gpu_offload
    if overrides.gpu is not None:
        if overrides.gpu.lower() != "none":
            raise InvalidArgumentError(
                f"--gpu {overrides.gpu}: the only choice is 'none' (plan for the CPU only)."
            )
        gpus, offload = [], False
        changed.append("gpu")
    if overrides.vram is not None and overrides.gpu is None:
        free_text, _, total_text = overrides.vram.partition("/")
        free = parse_size(free_text)
        total = parse_size(total_text) if total_text else free
        if free > total:
            raise InvalidArgumentError(
                f"--vram {overrides.vram}: free memory cannot exceed the total."
            )
        base = (
            gpus[0]
            if gpus
            else GpuInfo(name="GPU", backend="cuda", total_bytes=total, free_bytes=free)
        )
        gpus = [
            replace(
                base,
                name=f"{base.name} ({format_bytes(total)}, as given)",
                total_bytes=total,
                free_bytes=free,
            )
        ]
        offload = True  # "what would this GPU do" assumes a GPU build
        changed.append("vram")
    ram_total, ram_free = hw.ram_total_bytes, hw.ram_available_bytes
    if overrides.ram is not None:
        ram_total = ram_free = parse_size(overrides.ram)
        changed.append("ram")
    return replace(
        hw,
        gpus=gpus,
        ram_total_bytes=ram_total,
        ram_available_bytes=ram_free,
        gpu_offload=offload,
        overridden=tuple(changed),
    )


def format_bytes(n: float) -> str:
    """Format a byte count the way users read memory sizes (GiB/MiB)."""
    if abs(n) >= GIB:
        return f"{n / GIB:.2f} GiB"
    return f"{n / MIB:.1f} MiB"


def format_rate(bytes_per_s: float) -> str:
    """A download or link speed in the units of the sizes beside it ("42.0 MiB/s",
    "1.10 GiB/s"): one unit system."""
    if abs(bytes_per_s) >= GIB:
        return f"{bytes_per_s / GIB:.2f} GiB/s"
    return f"{bytes_per_s / MIB:.1f} MiB/s"
