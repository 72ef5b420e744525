"""Machines the tests plan for (no test imports another test module for them)."""

from __future__ import annotations

from mixdesk.core.machine.hardware import GIB, MIB, GpuInfo, HardwareInfo

#: The seed article's machine: one V100 (16 GB) with 64 GiB of RAM.
V100 = HardwareInfo(
    ram_total_bytes=64 * GIB,
    ram_available_bytes=56 * GIB,
    physical_cores=8,
    logical_cores=16,
    gpus=[GpuInfo("Tesla V100-SXM2-16GB", "cuda", 16160 * MIB, 15860 * MIB)],
    gpu_offload=True,
)


GPU_8GIB = HardwareInfo(
    ram_total_bytes=16 * GIB,
    ram_available_bytes=12 * GIB,
    physical_cores=2,
    logical_cores=2,
    gpus=[GpuInfo("Test GPU", "cuda", 8 * GIB, 8 * GIB)],
    gpu_offload=True,
)


#: What ``mixdesk plan --vram 16GiB --threads 8`` plans for: a GPU of unknown make with 16 GiB
#: (the seed article's V100 as the terminal is told about it).
GPU_16GIB = HardwareInfo(
    ram_total_bytes=64 * GIB,
    ram_available_bytes=56 * GIB,
    physical_cores=2,
    logical_cores=2,
    gpus=[GpuInfo("GPU (16.00 GiB, as given)", "cuda", 16 * GIB, 16 * GIB)],
    gpu_offload=True,
)
