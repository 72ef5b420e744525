"""How fast a placement should generate: bytes read per token over each device's memory
bandwidth (an estimate; issue 20 replaces it with a calibrated model)."""

from __future__ import annotations

from mixdesk.core.gguf.profile import ModelProfile
from mixdesk.core.machine.hardware import GpuInfo
from mixdesk.core.planning.memory import output_layer_bytes
from mixdesk.core.planning.types import repeating_layers

#: Rough effective memory bandwidth by GPU name (GB/s), for the speed estimate only.
_GPU_BANDWIDTH = {
    "H200": 4800,
    "H100": 3350,
    "A100": 1935,
    "V100": 900,
    "A6000": 768,
    "A10": 600,
    "L4": 300,
    "T4": 320,
    "4090": 1008,
    "4080": 717,
    "4070": 504,
    "4060": 272,
    "3090": 936,
    "3080": 760,
    "3070": 448,
    "3060": 360,
    "2080": 448,
    "7900": 960,
    "6900": 512,
    "Apple": 400,
}


_CPU_BANDWIDTH = 25e9  # a dual-channel desktop, as measured by generation speeds


_EFFICIENCY = 0.6


def _gpu_bandwidth(gpu: GpuInfo) -> float:
    for key, gbs in _GPU_BANDWIDTH.items():
        if key.lower() in gpu.name.lower():
            return gbs * 1e9
    return 400e9


def _active_bytes(profile: ModelProfile, layers: range) -> float:
    """Bytes read per generated token for ``layers``: all dense weights, a share of experts."""
    share = profile.n_expert_used / profile.n_expert if profile.n_expert else 1.0
    return sum(profile.layer_bytes[i] - profile.layer_expert_bytes[i] * (1 - share) for i in layers)


def expected_tokens_per_second(
    profile: ModelProfile, n_gpu: int, gpu: GpuInfo | None, *, experts_in_ram: int = 0
) -> float:
    """A memory-bandwidth estimate of generation speed (an estimate, not a measurement)."""
    n = profile.n_layers
    gpu_layers = repeating_layers(n_gpu, n) if gpu else 0
    cpu_bytes = _active_bytes(profile, range(0, n - gpu_layers))
    gpu_bytes = _active_bytes(profile, range(n - gpu_layers, n))
    if gpu and experts_in_ram:  # the experts read per token of those layers come from RAM
        share = profile.n_expert_used / profile.n_expert if profile.n_expert else 1.0
        moved = sum(profile.layer_expert_bytes[:experts_in_ram]) * share
        cpu_bytes += moved
        gpu_bytes -= moved
    out = output_layer_bytes(profile)
    if gpu and n_gpu > 0:
        gpu_bytes += out
    else:
        cpu_bytes += out
    seconds = cpu_bytes / _CPU_BANDWIDTH
    if gpu and gpu_bytes:
        seconds += gpu_bytes / _gpu_bandwidth(gpu)
    return round(_EFFICIENCY / seconds, 1) if seconds > 0 else 0.0
