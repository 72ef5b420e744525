"""Where the layers go: llama.cpp's device order, the bytes of each slot, and a split of
the slots over the devices that fits each one's free memory."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from mixdesk.core.engine.protocol import BufferKind, Buffers
from mixdesk.core.gguf.profile import ModelProfile
from mixdesk.core.machine.hardware import MIB, GpuInfo, HardwareInfo
from mixdesk.core.planning.memory import (
    CPU_RUNTIME_OVERHEAD,
    GPU_MARGIN,
    RUNTIME_OVERHEAD,
    UBATCH,
    cpu_weights,
    output_layer_bytes,
)
from mixdesk.core.planning.types import DevicePlan, Fit, repeating_layers


def offload_devices(hardware: HardwareInfo) -> list[GpuInfo]:
    """The devices llama.cpp places layers on, in its order: RPC servers first, then local GPUs."""
    remote = [g for g in hardware.gpus if g.backend == "rpc"]
    local = sorted((g for g in hardware.gpus if g.backend != "rpc"), key=lambda g: g.index)
    return remote + local


def buffer_name(gpu: GpuInfo) -> str:
    """The name llama.cpp gives this device's buffers in its log (``CUDA0``, ``RPC0[host:port]``)."""
    if gpu.backend == "rpc":
        return f"RPC0[{gpu.endpoint}]"
    return f"{_BUFFER_PREFIX.get(gpu.backend, gpu.backend.upper())}{gpu.index}"


_BUFFER_PREFIX = {"cuda": "CUDA", "rocm": "ROCm", "vulkan": "Vulkan", "metal": "MTL"}


@dataclass(frozen=True)
class Costs:
    """Per-layer and per-device costs at one context length."""

    kv_layer: int
    compute: int
    #: The buffers llama.cpp reported in a dry run (its compute buffers are exact).
    measured: Buffers = field(default_factory=Buffers)
    #: More compute buffer on a GPU: op offload copies RAM-resident expert tensors there.
    gpu_extra: int = 0
    #: Runtime overheads measured on this machine, by device buffer name.
    overheads: Mapping[str, int] = field(default_factory=dict)

    def compute_on(self, name: str) -> int:
        """The compute buffer of device ``name``: measured if known, else the formula's."""
        found = self.measured.get(name, BufferKind.COMPUTE)
        return self.compute + self.gpu_extra if found is None else found


def slot_bytes(
    profile: ModelProfile, n_gpu: int, experts_ram: Mapping[int, int] | None = None
) -> list[tuple[int, int]]:
    """(weights, repeating layers) of each GPU slot, in llama.cpp's order: the last
    ``n_gpu - 1`` repeating layers (less their expert tensors kept in RAM: ``experts_ram``,
    bytes by layer), then the output layer."""
    n = profile.n_layers
    layers = repeating_layers(n_gpu, n)
    ram = experts_ram or {}
    slots = [(profile.layer_bytes[i] - ram.get(i, 0), 1) for i in range(n - layers, n)]
    if n_gpu > 0:
        slots.append((output_layer_bytes(profile), 0))
    return slots


def _device_plan(
    gpu: GpuInfo, slots: list[tuple[int, int]], costs: Costs, *, output: bool
) -> DevicePlan:
    used = bool(slots)
    layers = sum(k for _, k in slots)
    return DevicePlan(
        name=gpu.name,
        kind="gpu",
        total_bytes=gpu.total_bytes,
        free_bytes=gpu.free_bytes,
        weights_bytes=sum(b for b, _ in slots),
        kv_bytes=layers * costs.kv_layer,
        compute_bytes=costs.compute_on(buffer_name(gpu)) if used else 0,
        overhead_bytes=costs.overheads.get(
            buffer_name(gpu), RUNTIME_OVERHEAD.get(gpu.backend, 300 * MIB)
        )
        if used
        else 0,
        overhead_measured=buffer_name(gpu) in costs.overheads,
        margin_bytes=GPU_MARGIN if used else 0,
        layers=layers,
        output=output,
        buffer_name=buffer_name(gpu),
    )


def _proportional(gpus: list[GpuInfo], n_slots: int, costs: Costs) -> list[int]:
    """Slots per device in proportion to each device's room for layers (free memory less its
    fixed costs), rounded by largest remainder: the load spreads like llama.cpp's own default."""
    rooms = []
    for gpu in gpus:
        fixed = _device_plan(gpu, [(0, 0)], costs, output=False).used_bytes
        rooms.append(max(gpu.free_bytes - fixed, 0))
    total = sum(rooms)
    if total == 0:
        return [n_slots] + [0] * (len(gpus) - 1)
    exact = [n_slots * r / total for r in rooms]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(gpus)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: n_slots - sum(counts)]:
        counts[i] += 1
    return counts


def _fits(
    gpus: list[GpuInfo], slots: list[tuple[int, int]], counts: list[int], costs: Costs
) -> bool:
    start = 0
    for gpu, count in zip(gpus, counts, strict=True):
        plan = _device_plan(gpu, slots[start : start + count], costs, output=False)
        if count and plan.used_bytes > plan.free_bytes:
            return False
        start += count
    return True


def split_slots(
    gpus: list[GpuInfo], slots: list[tuple[int, int]], costs: Costs, fixed: bool
) -> tuple[list[int], bool]:
    """Slots per device (contiguous, in device order) and whether all of them fit.

    First in proportion to each device's room; when that does not fit, each device in turn
    takes as many of the remaining slots as fit its free memory (for contiguous blocks in a
    fixed order this finds a split whenever one exists). What is left over goes to the last
    device when the count was fixed by the user.
    """
    counts = _proportional(gpus, len(slots), costs)
    if _fits(gpus, slots, counts, costs):
        return counts, True
    counts = []
    start = 0
    for i, gpu in enumerate(gpus):
        take = 0
        for k in range(len(slots) - start, 0, -1):
            plan = _device_plan(gpu, slots[start : start + k], costs, output=False)
            if plan.used_bytes <= plan.free_bytes:
                take = k
                break
        if i == len(gpus) - 1 and fixed:
            take = len(slots) - start
        counts.append(take)
        start += take
    return counts, start == len(slots)


def place(
    profile: ModelProfile,
    hardware: HardwareInfo,
    gpus: list[GpuInfo],
    counts: list[int],
    costs: Costs,
    *,
    n_gpu: int,
    experts_ram: Mapping[int, int],
    ctx: int,
) -> list[DevicePlan]:
    """Every device's share: each offload device's block of slots, then the CPU's
    (``experts_ram``: bytes of expert tensors kept in RAM, by layer)."""
    n = profile.n_layers
    slots = slot_bytes(profile, n_gpu, experts_ram)
    devices: list[DevicePlan] = []
    start = 0
    for gpu, count in zip(gpus, counts, strict=True):
        block = slots[start : start + count]
        start += count
        if block:
            devices.append(_device_plan(gpu, block, costs, output=start == len(slots)))
    full_offload = n_gpu > n and not experts_ram
    on_cpu = n - repeating_layers(n_gpu, n)
    devices.append(
        DevicePlan(
            name="CPU RAM",
            kind="cpu",
            total_bytes=hardware.ram_total_bytes,
            free_bytes=hardware.ram_available_bytes,
            weights_bytes=cpu_weights(profile, n_gpu, experts_ram),
            kv_bytes=on_cpu * costs.kv_layer,
            # With everything offloaded the CPU keeps only the graph's inputs and logits.
            compute_bytes=_or(
                costs.measured.get("CPU", BufferKind.COMPUTE),
                profile.vocab_size * 4 + 4 * profile.n_embd * min(UBATCH, ctx) * 4
                if full_offload
                else costs.compute,
            ),
            overhead_bytes=CPU_RUNTIME_OVERHEAD,
            layers=on_cpu,
            output=n_gpu == 0,
            buffer_name="CPU",
        )
    )
    return devices


def _or(measured: int | None, formula: int) -> int:
    return formula if measured is None else measured


def fit_of(*, shortfall: int, n_gpu: int, n_layers: int, experts: bool) -> Fit:
    """The plan's verdict (``experts``: some expert tensors stay in RAM)."""
    if shortfall:
        return Fit.NONE
    if n_gpu > n_layers and not experts:
        return Fit.FULL
    if n_gpu > 0 and experts:
        return Fit.EXPERTS
    return Fit.PARTIAL if n_gpu > 0 else Fit.CPU


def with_links(devices: list[DevicePlan], hardware: HardwareInfo) -> list[DevicePlan]:
    """Each worker's (RPC device's) share with what loading sends it, and how long that takes
    at the link speed measured when the worker was added."""
    links = {buffer_name(g): g for g in hardware.gpus if g.backend == "rpc"}
    found = []
    for d in devices:
        link = links.get(d.buffer_name)
        if link is None or d.kind != "gpu":
            found.append(d)
            continue
        rate = link.link_bytes_per_s
        found.append(
            replace(
                d,
                send_bytes=d.weights_bytes,
                send_seconds=d.weights_bytes / rate if rate > 0 else None,
                endpoint=link.endpoint,
                link_bytes_per_s=rate,
                cache_bytes=link.cache_bytes,
            )
        )
    return found
