"""The speed model's defaults: what a machine runs at before ``mixdesk calibrate`` has
measured it (per-thread CPU rates per type for a desktop x86 core, a GPU's memory bandwidth),
checked against the published V100 + 8-thread Mixtral runs (benchmarks/speed_truth.py)."""

from __future__ import annotations

from dataclasses import replace

from mixdesk.core.machine.hardware import GpuInfo
from mixdesk.core.planning.speed import DeviceRates, SpeedModel

#: Bytes per second per CPU thread while generating, by type (a desktop x86 core with
#: AVX2: llama.cpp's K-quant dot products; Q2_K and Q3_K are dequantisation-bound, the
#: others nearer the memory bus). Checked against the published V100 + 8-thread Mixtral
#: runs (benchmarks/speed_truth.py).
_CPU_EVAL_PER_THREAD = {
    "Q2_K": 1.05e9,
    "Q3_K": 1.5e9,
    "Q4_0": 3.2e9,
    "Q4_K": 2.9e9,
    "Q5_K": 2.6e9,
    "Q6_K": 2.7e9,
    "Q8_0": 3.4e9,
    "F16": 2.6e9,
    "BF16": 2.2e9,
    "F32": 3.0e9,
}
#: The memory bus caps what threads add (a dual-channel desktop).
_CPU_BANDWIDTH = 25e9
#: Weights per second per CPU thread for prompt tokens (flops / 2).
_CPU_PROMPT_PER_THREAD = 12e9

#: Memory bandwidth by GPU name (GB/s); what generation on a GPU reads at.
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
#: The share of the bus llama.cpp's kernels reach while generating.
_GPU_EFFICIENCY = 0.6
#: Half-precision weights per second a GPU computes prompts at, per GB/s of bandwidth.
_GPU_PROMPT_PER_BANDWIDTH = 30.0
#: A token's round trip to a local GPU and back (launches, synchronisation, the copy).
_GPU_HOP_S = 0.25e-3
#: To an RPC worker: the network round trip and llama.cpp's RPC commands.
_RPC_HOP_S = 1.5e-3
#: Fixed per token and per layer (graph building, scheduling, barriers).
_TOKEN_S = 0.4e-3
_LAYER_S = 0.02e-3
_PROMPT_LAYER_S = 0.01e-3


def _gpu_bandwidth(gpu: GpuInfo) -> float:
    for key, gbs in _GPU_BANDWIDTH.items():
        if key.lower() in gpu.name.lower():
            return gbs * 1e9
    return 400e9


def default_speed_model(gpus: list[tuple[str, GpuInfo]], threads: int) -> SpeedModel:
    """The defaults for a machine with these offload devices (llama.cpp name, device) and
    ``threads`` CPU threads (an estimate until ``mixdesk calibrate`` measures this machine)."""
    cpu = DeviceRates(
        {t: min(_CPU_BANDWIDTH, threads * r) for t, r in _CPU_EVAL_PER_THREAD.items()},
        {t: threads * _CPU_PROMPT_PER_THREAD for t in _CPU_EVAL_PER_THREAD},
    )
    devices = {}
    for name, gpu in gpus:
        if gpu.backend == "rpc":  # a worker's device is unknown until measured: like this CPU
            devices[name] = replace(cpu, hop_s=_RPC_HOP_S)
            continue
        bandwidth = _gpu_bandwidth(gpu) * _GPU_EFFICIENCY
        devices[name] = DeviceRates(
            {t: bandwidth for t in _CPU_EVAL_PER_THREAD},
            {
                t: _gpu_bandwidth(gpu) / 1e9 * _GPU_PROMPT_PER_BANDWIDTH * 1e9
                for t in _CPU_EVAL_PER_THREAD
            },
            hop_s=_GPU_HOP_S,
        )
    return SpeedModel(
        cpu=cpu,
        cpu_threads=threads,
        devices=devices,
        token_s=_TOKEN_S,
        layer_s=_LAYER_S,
        prompt_layer_s=_PROMPT_LAYER_S,
    )
