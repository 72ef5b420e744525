"""The offload planner: how many layers go on the GPU, and what every device will hold.

Pure Python (no Qt, no llama_cpp): it runs on a header read from the Hub before anything is
downloaded. It counts what llama.cpp will allocate, the way llama.cpp allocates it:

- weights: the bytes of each tensor, per layer. ``n_gpu_layers = N`` counts the output layer
  first: the GPU gets the output layer plus the last ``N - 1`` repeating layers (llama.cpp's
  ``src/llama-model.cpp``: ``i_gpu_start = max(n_layer + 1 - N, 0)``), so N runs from 0 to
  ``n_layer + 1``; the token embeddings always stay in RAM. (Until 2024 llama.cpp gave the
  last N layers and the output only for N > n_layer; this module follows the installed one,
  and tests/core/test_offload_truth.py checks it on a real offload device.)
- KV cache: ``n_ctx x n_head_kv x (head_dim_k x size(type_k) + head_dim_v x size(type_v))``
  per layer, on the device of its layer (``offload_kqv``).
- compute buffer: the peak of llama.cpp's graph allocator for a 512-token batch. The formula
  below reproduces the sizes llama.cpp 0.3.36 logs for llama-architecture models (dense and
  mixture of experts) to within 1 MiB or 3% in 26 loads: a tiny model in F32, Q4_K_M and
  Q2_K and a mid-size one, contexts 512 to 8192, f16/q8_0/q4_0 KV caches, with and without
  flash attention (tests/core/test_planner_accuracy.py).
- per GPU a runtime overhead (the CUDA context and cuBLAS workspace, which the free-memory
  reading taken before loading does not include) and a safety margin.

With partial offload MixDesk turns llama.cpp's "op offload" off: it would copy the CPU
layers' weights (for Mixtral, hundreds of MiB per expert tensor) into VRAM for every prompt,
costing layers that make generation faster.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from mixdesk.core.gguf.profile import ModelProfile
from mixdesk.core.machine.hardware import MIB, GpuInfo, HardwareInfo, format_bytes

UBATCH = 512
DEFAULT_CTX = 4096
MIN_AUTO_CTX = 2048
GPU_MARGIN = 256 * MIB
#: The runtime's own use of a device that its free-memory reading before loading misses. An RPC
#: server reads free memory after its runtime started, so that reading already includes it.
RUNTIME_OVERHEAD = {
    "cuda": 300 * MIB,
    "rocm": 300 * MIB,
    "metal": 64 * MIB,
    "vulkan": 256 * MIB,
    "rpc": 0,
}
CPU_RUNTIME_OVERHEAD = 160 * MIB  # Python, llama.cpp and the engine process itself
_CONST = 10 * 1024  # graph inputs (token ids, positions)
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


def type_size(name: str) -> float:
    """Bytes per value of a ggml type (``"f16"`` -> 2, ``"q8_0"`` -> 34/32)."""
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[name.upper()]]
    return size / block


def pad_ctx(n_ctx: int) -> int:
    """The context length llama.cpp allocates (at least 256, a multiple of 256)."""
    return max(256, -(-n_ctx // 256) * 256)


def kv_bytes_per_layer(
    profile: ModelProfile, n_ctx: int, type_k: str = "f16", type_v: str = "f16"
) -> int:
    """KV cache bytes of one layer at context ``n_ctx``."""
    per_token = profile.n_head_kv * (
        profile.head_dim_k * type_size(type_k) + profile.head_dim_v * type_size(type_v)
    )
    return int(pad_ctx(n_ctx) * per_token)


def compute_buffer_bytes(
    profile: ModelProfile,
    n_ctx: int,
    *,
    flash_attn: bool,
    type_k: str = "f16",
    type_v: str = "f16",
    ubatch: int = UBATCH,
) -> int:
    """Peak of llama.cpp's compute buffer for one device running the whole graph.

    The terms are the tensors alive at the two peaks of a layer: the attention scores
    (``n_ctx x T x n_head`` floats, unless flash attention avoids them) with their mask, and
    the feed-forward block (three ``n_ff x experts_used x T`` activations). The coefficients
    were fitted to llama.cpp's logged sizes and checked against them.
    """
    k = pad_ctx(n_ctx)
    t = min(ubatch, n_ctx)
    e = profile.n_embd
    used = max(profile.n_expert_used, 1)
    et = e * t * 4
    ffn = 3 * profile.n_ff * used * t * 4 + 2 * et + e * used * t * 4
    logits = profile.vocab_size * t * 4 + 2 * et
    kv_t = profile.n_head_kv * profile.head_dim_k * t * 4
    if not flash_attn:
        attn = k * t * profile.n_head * 4 + 5 * et + 2 * kv_t
        return max(attn, ffn, logits) + k * t * 4 + _CONST
    mask = k * t * 2
    if type_k == "f16" and type_v == "f16":
        return max(ffn, logits) + mask + _CONST
    return max(ffn, logits) + max(mask - et, 0) + _CONST


@dataclass(frozen=True)
class DevicePlan:
    """What one device will hold."""

    name: str
    kind: str  # "gpu" or "cpu"
    total_bytes: int
    free_bytes: int
    weights_bytes: int = 0
    kv_bytes: int = 0
    compute_bytes: int = 0
    overhead_bytes: int = 0
    margin_bytes: int = 0
    #: Repeating layers on this device, and whether the output layer is here.
    layers: int = 0
    output: bool = False
    #: The device's name in llama.cpp's buffer log lines ("CUDA0", "RPC0[host:port]", "CPU").
    buffer_name: str = ""
    #: Whether ``overhead_bytes`` was measured on this machine (else a default).
    overhead_measured: bool = False
    #: For a worker (RPC device): the bytes a load sends it over the network (its weights;
    #: KV cache and compute buffers are allocated there), and the time that takes at the
    #: measured link speed (None: not measured).
    send_bytes: int = 0
    send_seconds: float | None = None

    @property
    def used_bytes(self) -> int:
        """Everything planned on this device, margin included."""
        return (
            self.weights_bytes
            + self.kv_bytes
            + self.compute_bytes
            + self.overhead_bytes
            + self.margin_bytes
        )


class Fit(str, Enum):
    """The plan's verdict (a ``str``: it compares and serialises as its value)."""

    FULL = "full"  # every layer and the output on the GPU
    PARTIAL = "partial"  # some layers on the GPU, the rest in RAM
    EXPERTS = "experts"  # every layer on the GPU, experts of the first K layers in RAM
    CPU = "cpu"  # nothing on a GPU
    NONE = "none"  # does not fit this machine

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class OffloadPlan:
    """The planner's answer."""

    n_gpu_layers: int
    n_layers: int
    n_ctx: int
    ctx_reduced_from: int | None
    fit: Fit
    shortfall_bytes: int
    devices: list[DevicePlan]
    flash_attn: bool
    type_k: str
    type_v: str
    op_offload: bool
    expected_tps: float
    #: Slots (layers, the output layer counting as one) per offload device, in llama.cpp's
    #: device order: its ``tensor_split``. Empty with one device.
    tensor_split: tuple[int, ...] = ()
    #: Whether the compute buffers come from a dry run of llama.cpp (else from the formula).
    compute_measured: bool = False
    #: "layers" or "experts" (all layers on the GPU, experts of the first K layers in RAM).
    strategy: str = "layers"
    #: K: layers whose expert tensors stay in RAM (the "experts" strategy).
    experts_in_ram: int = 0
    explanation: list[str] = field(default_factory=list)

    @property
    def gpu(self) -> DevicePlan | None:
        """The (first) GPU's share, if a GPU is used."""
        return next((d for d in self.devices if d.kind == "gpu"), None)

    @property
    def gpus(self) -> list[DevicePlan]:
        """Every offload device's share, in llama.cpp's device order."""
        return [d for d in self.devices if d.kind == "gpu"]

    @property
    def cpu(self) -> DevicePlan:
        """The CPU RAM share."""
        return next(d for d in self.devices if d.kind == "cpu")

    @property
    def repeating_layers_on_gpu(self) -> int:
        """Repeating layers on the GPU (``n_gpu_layers`` without the output layer)."""
        return repeating_layers(self.n_gpu_layers, self.n_layers)

    @property
    def output_on_gpu(self) -> bool:
        """Whether the output layer is on the GPU (whenever any layer is)."""
        return self.n_gpu_layers > 0

    @property
    def placement_words(self) -> str:
        """Where the layers go, in the words every front end uses ("18 of 32 layers + output on GPU")."""
        words = placement_words(self.n_gpu_layers, self.n_layers)
        if self.experts_in_ram:
            words += f", experts of {self.experts_in_ram} layers in RAM"
        return words


def repeating_layers(n_gpu_layers: int, n_layers: int) -> int:
    """Repeating layers llama.cpp puts on the GPU for ``n_gpu_layers`` (the output layer comes first)."""
    return max(0, min(n_gpu_layers - 1, n_layers))


def placement_words(n_gpu_layers: int, n_layers: int) -> str:
    """``n_gpu_layers`` in words that name the output layer's place."""
    if n_gpu_layers <= 0:
        return f"all {n_layers} layers in RAM"
    if n_gpu_layers > n_layers:
        return f"all {n_layers} layers + output on GPU"
    return f"{repeating_layers(n_gpu_layers, n_layers)} of {n_layers} layers + output on GPU"


def output_layer_bytes(profile: ModelProfile) -> int:
    """The output layer's weights (a tied output reuses the token embeddings' bytes)."""
    return (profile.output_bytes or profile.token_embd_bytes) + profile.output_norm_bytes


def _gpu_share(profile: ModelProfile, n_gpu: int) -> tuple[int, int]:
    """(weights bytes on the GPU, repeating layers there) for ``n_gpu_layers = n_gpu``."""
    layers = repeating_layers(n_gpu, profile.n_layers)
    weights = sum(profile.layer_bytes[profile.n_layers - layers :]) if layers else 0
    if n_gpu > 0:
        weights += output_layer_bytes(profile)
    return weights, layers


def _cpu_weights(profile: ModelProfile, n_gpu: int, experts_in_ram: int = 0) -> int:
    """Weights left in RAM: the CPU layers, the token embeddings, the output unless offloaded,
    and the experts kept in RAM."""
    layers = repeating_layers(n_gpu, profile.n_layers)
    weights = sum(profile.layer_bytes[: profile.n_layers - layers]) + profile.token_embd_bytes
    first_gpu_layer = profile.n_layers - layers
    weights += sum(
        profile.layer_expert_bytes[first_gpu_layer : max(experts_in_ram, first_gpu_layer)]
    )
    if n_gpu <= 0:
        weights += profile.output_bytes + profile.output_norm_bytes
    return weights


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


def _largest_expert_tensor(profile: ModelProfile, experts_in_ram: int) -> int:
    """The biggest expert tensor (all experts of one kind in one layer) kept in RAM: op
    offload copies it to the GPU for a batch of 32+ tokens, so the GPU's compute buffer must
    hold it."""
    sizes: dict[tuple[int, str], int] = {}
    for t in profile.tensors:
        m = _EXPERT_TENSOR.match(t.name)
        if m and int(m.group(1)) < experts_in_ram:
            key = (int(m.group(1)), m.group(2))
            sizes[key] = sizes.get(key, 0) + t.nbytes
    return max(sizes.values(), default=0)


_EXPERT_TENSOR = re.compile(r"^blk\.(\d+)\.ffn_(gate|up|down|gate_up)(?:_exps|\.\d+)\.weight$")


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
class _Costs:
    """Per-layer and per-device costs at one context length."""

    kv_layer: int
    compute: int
    #: Compute buffers llama.cpp reported in a dry run, by buffer name (exact where present).
    measured: Mapping[str, int] = field(default_factory=dict)
    #: More compute buffer on a GPU: op offload copies RAM-resident expert tensors there.
    gpu_extra: int = 0
    #: Runtime overheads measured on this machine, by device buffer name.
    overheads: Mapping[str, int] = field(default_factory=dict)

    def compute_on(self, name: str) -> int:
        """The compute buffer of device ``name``: measured if known, else the formula's."""
        return self.measured.get(f"{name} compute", self.compute + self.gpu_extra)


def _slot_bytes(
    profile: ModelProfile, n_gpu: int, experts_in_ram: int = 0
) -> list[tuple[int, int]]:
    """(weights, repeating layers) of each GPU slot, in llama.cpp's order: the last
    ``n_gpu - 1`` repeating layers (less the experts of the first ``experts_in_ram`` layers,
    which stay in RAM), then the output layer."""
    n = profile.n_layers
    layers = repeating_layers(n_gpu, n)
    slots = [
        (profile.layer_bytes[i] - (profile.layer_expert_bytes[i] if i < experts_in_ram else 0), 1)
        for i in range(n - layers, n)
    ]
    if n_gpu > 0:
        slots.append((output_layer_bytes(profile), 0))
    return slots


def _device_plan(
    gpu: GpuInfo, slots: list[tuple[int, int]], costs: _Costs, *, output: bool
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


def _proportional(gpus: list[GpuInfo], n_slots: int, costs: _Costs) -> list[int]:
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
    gpus: list[GpuInfo], slots: list[tuple[int, int]], counts: list[int], costs: _Costs
) -> bool:
    start = 0
    for gpu, count in zip(gpus, counts, strict=True):
        plan = _device_plan(gpu, slots[start : start + count], costs, output=False)
        if count and plan.used_bytes > plan.free_bytes:
            return False
        start += count
    return True


def _split(
    gpus: list[GpuInfo], slots: list[tuple[int, int]], costs: _Costs, fixed: bool
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


def plan_offload(
    profile: ModelProfile,
    hardware: HardwareInfo,
    *,
    n_ctx: int | None = None,
    type_k: str = "f16",
    type_v: str = "f16",
    flash_attn: bool = False,
    n_gpu_layers: int | None = None,
    gpu_offload_supported: bool | None = None,
    measured_compute: Mapping[str, int] | None = None,
    strategy: str = "layers",
    experts_in_ram: int | None = None,
    overheads: Mapping[str, int] | None = None,
) -> OffloadPlan:
    """Plan how to load ``profile`` on ``hardware``.

    Args:
        profile: the model.
        hardware: GPUs and RPC devices (with free memory), RAM. Layers are split over every
            offload device, as llama.cpp does, in its device order.
        n_ctx: a context length the user fixed; None lets the planner choose (4096, or the
            model's own if smaller, shrinking to 2048 if that puts more layers on the GPU).
        type_k, type_v, flash_attn: KV cache types and attention kind.
        n_gpu_layers: a layer count the user fixed (the plan then reports its cost); -1: all.
        gpu_offload_supported: whether the installed llama.cpp build can offload (default:
            what ``hardware`` says, and yes when it does not know).
        measured_compute: buffer sizes from a dry run of this load (``Engine.dry_run``):
            each device's compute buffer is then llama.cpp's own figure, not the formula's.
        strategy: "layers" (whole layers on the GPU, the rest in RAM) or "experts" (every
            layer on the GPU, the expert tensors of the first K layers in RAM: what llama.cpp's
            ``--n-cpu-moe K`` does). With "experts" ``n_gpu_layers`` is always all of them.
        experts_in_ram: K for the "experts" strategy when the user fixed it.
        overheads: the runtime overhead measured per device on this machine
            (:mod:`mixdesk.core.planning.calibration`), by buffer name; else the defaults.
    """
    if gpu_offload_supported is None:
        gpu_offload_supported = hardware.gpu_offload is not False
    if type_v != "f16":
        flash_attn = True  # llama.cpp requires it for a quantised V cache
    n = profile.n_layers
    gpus = [
        g
        for g in offload_devices(hardware)
        if gpu_offload_supported or g.backend == "rpc"  # RPC needs no GPU build
    ]
    train = profile.context_length or DEFAULT_CTX
    auto_ctx = n_ctx is None
    contexts = (
        [n_ctx]
        if n_ctx is not None
        else sorted({min(DEFAULT_CTX, train), min(MIN_AUTO_CTX, train)}, reverse=True)
    )

    experts = strategy == "experts" and profile.is_moe

    def costs_at(ctx: int, k: int = 0) -> _Costs:
        return _Costs(
            kv_layer=kv_bytes_per_layer(profile, ctx, type_k, type_v),
            compute=compute_buffer_bytes(
                profile, ctx, flash_attn=flash_attn, type_k=type_k, type_v=type_v
            ),
            measured=measured_compute or {},
            gpu_extra=_largest_expert_tensor(profile, k) if k else 0,
            overheads=overheads or {},
        )

    def choose(ctx: int) -> tuple[int, int, int, list[int]]:
        """(score, n_gpu_layers, experts in RAM, slots per device) at context ``ctx``."""
        if not gpus:
            return 0, 0, 0, []
        if experts:
            if experts_in_ram is not None:
                k = max(0, min(experts_in_ram, n))
                counts, _ = _split(gpus, _slot_bytes(profile, n + 1, k), costs_at(ctx, k), True)
                return n + 1 - k, n + 1, k, counts
            for k in range(n + 1):
                counts, fits = _split(gpus, _slot_bytes(profile, n + 1, k), costs_at(ctx, k), False)
                if fits:
                    return n + 1 - k, n + 1, k, counts
            counts, _ = _split(gpus, _slot_bytes(profile, n + 1, n), costs_at(ctx, n), True)
            return 0, n + 1, n, counts
        costs = costs_at(ctx)
        if n_gpu_layers is not None:
            wanted = n + 1 if n_gpu_layers < 0 else min(n_gpu_layers, n + 1)
            counts, _ = _split(gpus, _slot_bytes(profile, wanted), costs, fixed=True)
            return wanted, wanted, 0, counts
        for candidate in range(n + 1, 0, -1):
            counts, fits = _split(gpus, _slot_bytes(profile, candidate), costs, fixed=False)
            if fits:
                return candidate, candidate, 0, counts
        return 0, 0, 0, [0] * len(gpus)

    fixed_by_user = n_gpu_layers is not None or (experts and experts_in_ram is not None)
    # With flash attention and a quantised KV cache (q8_0) a 4096-token context costs little:
    # a long conversation keeps it rather than trade it for a single layer (issue 13).
    cheap_ctx = flash_attn and type_k != "f16" and type_v != "f16"
    (_score, ctx, n_gpu, k, counts), kept_ctx_over_layer = _best_context(
        contexts, choose, n_layers=n, stop_at_first=fixed_by_user, cheap_ctx=cheap_ctx
    )
    costs = costs_at(ctx, k)
    devices = _place(profile, hardware, gpus, counts, costs, n_gpu=n_gpu, k=k, ctx=ctx)
    shortfall = sum(max(0, d.used_bytes - d.free_bytes) for d in devices)
    fit = _fit(shortfall=shortfall, n_gpu=n_gpu, n_layers=n, k=k)
    fastest = max(gpus, key=lambda g: g.free_bytes) if gpus else None
    plan = OffloadPlan(
        n_gpu_layers=n_gpu,
        n_layers=n,
        n_ctx=ctx,
        ctx_reduced_from=contexts[0] if auto_ctx and ctx < contexts[0] else None,
        fit=fit,
        shortfall_bytes=shortfall,
        devices=devices,
        flash_attn=flash_attn,
        type_k=type_k,
        type_v=type_v,
        # Partial layer offload turns op offload off (it would copy the CPU layers' weights
        # to the GPU for every prompt); with experts in RAM it is what makes prompts fast.
        op_offload=fit in ("full", "experts") or (fit == "none" and experts),
        expected_tps=expected_tokens_per_second(profile, n_gpu, fastest, experts_in_ram=k),
        tensor_split=tuple(c for c in counts) if len(gpus) > 1 and n_gpu > 0 else (),
        compute_measured=bool(measured_compute),
        strategy="experts" if experts else "layers",
        experts_in_ram=k,
    )
    plan = _explain(
        plan, profile, hardware, fastest, gpu_offload_supported, user_ngl=n_gpu_layers is not None
    )
    if not kept_ctx_over_layer:
        return plan
    lines = list(plan.explanation)
    lines.append(
        f"Context {ctx} tokens kept rather than one more layer at {contexts[-1]}: with "
        f"flash attention and a {type_k} KV cache it costs little, and long conversations "
        "need the room.",
    )
    return replace(plan, explanation=lines)


def _best_context(
    contexts: list[int],
    choose: Callable[[int], tuple[int, int, int, list[int]]],
    *,
    n_layers: int,
    stop_at_first: bool,
    cheap_ctx: bool,
) -> tuple[tuple[int, int, int, int, list[int]], bool]:
    """The context (largest first) whose placement scores best: (score, ctx, n_gpu, k,
    counts), and whether a larger context was kept over a gain of one layer (``cheap_ctx``:
    a smaller context must then gain two layers or more)."""
    best: tuple[int, int, int, int, list[int]] | None = None
    kept = False
    for ctx in contexts:
        score, n_gpu, k, counts = choose(ctx)
        if best is not None and cheap_ctx and score == best[0] + 1:
            kept = True
        elif best is None or score > best[0]:
            best = (score, ctx, n_gpu, k, counts)
        if score > n_layers or stop_at_first:
            break
    assert best is not None
    return best, kept


def _place(
    profile: ModelProfile,
    hardware: HardwareInfo,
    gpus: list[GpuInfo],
    counts: list[int],
    costs: _Costs,
    *,
    n_gpu: int,
    k: int,
    ctx: int,
) -> list[DevicePlan]:
    """Every device's share: each offload device's block of slots, then the CPU's."""
    n = profile.n_layers
    slots = _slot_bytes(profile, n_gpu, k)
    devices: list[DevicePlan] = []
    start = 0
    for gpu, count in zip(gpus, counts, strict=True):
        block = slots[start : start + count]
        start += count
        if block:
            devices.append(_device_plan(gpu, block, costs, output=start == len(slots)))
    full_offload = n_gpu > n and k == 0
    on_cpu = n - repeating_layers(n_gpu, n)
    devices.append(
        DevicePlan(
            name="CPU RAM",
            kind="cpu",
            total_bytes=hardware.ram_total_bytes,
            free_bytes=hardware.ram_available_bytes,
            weights_bytes=_cpu_weights(profile, n_gpu, k),
            kv_bytes=on_cpu * costs.kv_layer,
            # With everything offloaded the CPU keeps only the graph's inputs and logits.
            compute_bytes=costs.measured.get(
                "CPU compute",
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


def _fit(*, shortfall: int, n_gpu: int, n_layers: int, k: int) -> Fit:
    """The plan's verdict."""
    if shortfall:
        return Fit.NONE
    if n_gpu > n_layers and k == 0:
        return Fit.FULL
    if n_gpu > 0 and k:
        return Fit.EXPERTS
    return Fit.PARTIAL if n_gpu > 0 else Fit.CPU


def _explain(
    plan: OffloadPlan,
    profile: ModelProfile,
    hardware: HardwareInfo,
    gpu: GpuInfo | None,
    offload_ok: bool,
    *,
    user_ngl: bool,
) -> OffloadPlan:
    lines: list[str] = []
    n = plan.n_layers
    size = format_bytes(profile.weights_bytes)
    local = [g for g in hardware.gpus if g.backend != "rpc"]  # workers need no GPU build here
    if local and not offload_ok:
        lines.append(
            f"{local[0].name} is not used: this llama.cpp build is CPU-only (see `mixdesk doctor`)."
        )
    where = gpu.name if gpu is not None and len(plan.gpus) <= 1 else f"{len(plan.gpus)} devices"
    if gpu is None:
        lines.append(f"No usable GPU: all {n} layers ({size}) run from CPU RAM.")
    elif plan.fit == "full":
        used = sum(d.used_bytes for d in plan.gpus)
        free = sum(d.free_bytes for d in plan.gpus)
        lines.append(
            f"All {n} layers and the output layer fit on {where}: {format_bytes(used)} "
            f"of {format_bytes(free)} free VRAM, margin included."
        )
    elif plan.experts_in_ram:
        k = plan.experts_in_ram
        in_ram = format_bytes(sum(profile.layer_expert_bytes[:k]))
        lines.append(
            f"All {n} layers and the output layer go on {where}, except the expert tensors of "
            f"the first {k} layers ({in_ram}), which stay in CPU RAM (llama.cpp's --n-cpu-moe {k})."
        )
    elif plan.n_gpu_layers > 0:
        layers = plan.repeating_layers_on_gpu
        per_layer = profile.layer_bytes[-1] if profile.layer_bytes else 0
        lines.append(
            f"n_gpu_layers {plan.n_gpu_layers}: the output layer and {layers} of {n} layers "
            f"({format_bytes(per_layer)} each) go on {where}; the other {n - layers} layers "
            "stay in CPU RAM."
        )
        if not user_ngl and plan.gpu is not None:
            room = plan.gpu.free_bytes - plan.gpu.used_bytes
            lines.append(
                f"One more layer would need {format_bytes(per_layer - room)} more VRAM than is free."
            )
    elif not user_ngl:
        lines.append(
            f"Not even one layer fits in the {format_bytes(gpu.free_bytes)} free on {gpu.name}: CPU only."
        )
    for d in plan.gpus:
        if d.layers or d.output:
            how = (
                "measured on this machine"
                if d.overhead_measured
                else "a default until a load measures it"
            )
            lines.append(f"Runtime overhead on {d.name}: {format_bytes(d.overhead_bytes)} ({how}).")
    if len(plan.gpus) > 1:
        shares = "; ".join(
            f"{d.name}: {d.layers} layers{' + output' if d.output else ''}, {format_bytes(d.used_bytes)}"
            for d in plan.gpus
        )
        lines.append(f"Split over {len(plan.gpus)} devices in llama.cpp's order ({shares}).")
    if plan.ctx_reduced_from:
        lines.append(
            f"The context was reduced from {plan.ctx_reduced_from} to {plan.n_ctx} tokens to fit more "
            "layers; set a context length to keep it."
        )
    if plan.fit == "none":
        lines.append(
            f"This will not fit: {format_bytes(plan.shortfall_bytes)} more memory is needed than is available."
        )
    plan, network = _network(plan, hardware)
    lines += network
    return replace(plan, explanation=lines)


def _network(plan: OffloadPlan, hardware: HardwareInfo) -> tuple[OffloadPlan, list[str]]:
    """What loading sends to each worker (RPC device), and how long that takes at the link
    speed measured when the worker was added; the plan's devices carry the figures."""
    links = {buffer_name(g): g for g in hardware.gpus if g.backend == "rpc"}
    devices, lines = [], []
    for d in plan.devices:
        link = links.get(d.buffer_name)
        if link is None or d.kind != "gpu":
            devices.append(d)
            continue
        rate = link.link_bytes_per_s
        seconds = d.weights_bytes / rate if rate > 0 else None
        devices.append(replace(d, send_bytes=d.weights_bytes, send_seconds=seconds))
        estimate = (
            f"about {seconds:.1f} s at the {rate / 1e6:,.0f} MB/s measured"
            if seconds is not None
            else "link speed not measured"
        )
        cache = (
            f"; it keeps tensors over 10 MiB in its cache (up to {format_bytes(link.cache_bytes)}), "
            "so loading this model again sends only their hashes"
            if link.cache_bytes
            else "; it keeps no cache, so every load sends all of it"
        )
        lines.append(
            f"Loading sends {format_bytes(d.weights_bytes)} of weights to the worker at "
            f"{link.endpoint} ({estimate}){cache}."
        )
    if lines:
        lines.append(
            "While answering, only activations and llama.cpp's commands cross the network "
            "(kilobytes per token), so a worker's link speed matters for loading, hardly for "
            "answering; its latency adds a little to every token."
        )
    return replace(plan, devices=devices), lines
