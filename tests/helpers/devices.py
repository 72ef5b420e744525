"""Offload devices for tests: llama.cpp RPC servers (``mixdesk worker`` processes) as the
machine sees them, an engine that keeps what it was asked to load, and the comparison of
planned buffers with llama.cpp's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mixdesk.core.engine import Engine, LoadConfig, ModelInfo
from mixdesk.core.engine.protocol import BufferKind
from mixdesk.core.loading.service import LoadSetup
from mixdesk.core.machine.hardware import GIB, MIB, GpuInfo, HardwareInfo
from tests.helpers.mixdesk_workers import WorkerProcess

Servers = Callable[..., WorkerProcess]


def device_hardware(server: WorkerProcess) -> HardwareInfo:
    """The RPC device as its server reports it: the host's free memory, not its limit."""
    return HardwareInfo(
        ram_total_bytes=16 * GIB,
        ram_available_bytes=16 * GIB,
        physical_cores=2,
        logical_cores=2,
        gpus=[GpuInfo("RPC test device", "rpc", 8 * GIB, 8 * GIB, endpoint=server.endpoint)],
        gpu_offload=True,
    )


class CountingEngine(Engine):
    """The real engine, keeping every configuration it is asked to load."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.configs: list[LoadConfig] = []

    @property
    def loads(self) -> list[int]:
        """The GPU layer count of every load asked of it."""
        return [c.n_gpu_layers for c in self.configs]

    def load(
        self, config: LoadConfig, *, on_progress: Callable[[float], None] | None = None
    ) -> ModelInfo:
        self.configs.append(config)
        return super().load(config, on_progress=on_progress)


def rpc_hardware(*servers: WorkerProcess, free: int = 8 * GIB) -> HardwareInfo:
    """This machine as the planner sees it with ``servers`` as its offload devices."""
    return HardwareInfo(
        ram_total_bytes=16 * GIB,
        ram_available_bytes=16 * GIB,
        physical_cores=2,
        logical_cores=2,
        gpus=[
            GpuInfo(f"RPC test device {i}", "rpc", free, free, endpoint=s.endpoint)
            for i, s in enumerate(servers)
        ],
        gpu_offload=True,
    )


def mismatches(setup: LoadSetup, info: ModelInfo) -> list[str]:
    """Where the plan and llama.cpp's logged buffers disagree (empty: they agree)."""
    logged, plan, found = info.buffers, setup.plan, []
    if info.n_gpu_layers != setup.config.n_gpu_layers:
        found.append(
            f"n_gpu_layers {info.n_gpu_layers} loaded, {setup.config.n_gpu_layers} planned"
        )
    planned_names = {d.buffer_name for d in plan.devices}
    for b in logged.items:
        if b.device.startswith("RPC") and b.device not in planned_names and b.bytes > 0:
            found.append(f"{b.device} {b.kind} = {b.bytes} on a device the plan leaves empty")
    for d in plan.devices:
        # without mmap, the CPU's weights are its buffer plus what llama.cpp repacked
        weights = logged.size(d.buffer_name, BufferKind.MODEL) + (
            logged.size("CPU_REPACK", BufferKind.MODEL) if d.kind == "cpu" else 0
        )
        kv = logged.size(d.buffer_name, BufferKind.KV)
        compute = logged.size(d.buffer_name, BufferKind.COMPUTE)
        for what, planned, real, share in (
            ("weights", d.weights_bytes, weights, 0.01),
            ("KV", d.kv_bytes, kv, 0.01),
            ("compute", d.compute_bytes, compute, 0.03),
        ):
            if not close_enough(planned, real, share):
                found.append(
                    f"{d.buffer_name} {what}: planned {planned / MIB:.3f} MiB, "
                    f"llama.cpp {real / MIB:.3f} MiB"
                )
    return found


def close_enough(planned: int, logged: int, share: float) -> bool:
    # llama.cpp logs MiB with two decimals: up to 5243 bytes of rounding.
    return abs(planned - logged) <= max(share * logged, 6000)
