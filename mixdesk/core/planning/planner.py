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

from collections.abc import Callable, Mapping
from dataclasses import replace

from mixdesk.core.engine.protocol import Buffers
from mixdesk.core.gguf.profile import ModelProfile
from mixdesk.core.machine.hardware import GpuInfo, HardwareInfo
from mixdesk.core.planning.memory import (
    DEFAULT_CTX,
    MIN_AUTO_CTX,
    compute_buffer_bytes,
    kv_bytes_per_layer,
    largest_expert_tensor,
)
from mixdesk.core.planning.placement import (
    Costs,
    buffer_name,
    fit_of,
    offload_devices,
    place,
    slot_bytes,
    split_slots,
)
from mixdesk.core.planning.speed import (
    Speed,
    SpeedModel,
    SpeedSource,
    default_speed_model,
    predict,
)
from mixdesk.core.planning.types import DevicePlan, Fit, OffloadPlan, PlanFacts


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
    measured_compute: Buffers | None = None,
    strategy: str = "layers",
    experts_in_ram: int | None = None,
    overheads: Mapping[str, int] | None = None,
    speed_model: SpeedModel | None = None,
    threads: int | None = None,
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
        speed_model: the speed model's coefficients measured on this machine; else defaults.
        threads: the CPU threads the load will use (default: the physical cores).
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

    def costs_at(ctx: int, k: int = 0) -> Costs:
        return Costs(
            kv_layer=kv_bytes_per_layer(profile, ctx, type_k, type_v),
            compute=compute_buffer_bytes(
                profile, ctx, flash_attn=flash_attn, type_k=type_k, type_v=type_v
            ),
            measured=measured_compute or Buffers(),
            gpu_extra=largest_expert_tensor(profile, k) if k else 0,
            overheads=overheads or {},
        )

    def choose(ctx: int) -> tuple[int, int, int, list[int]]:
        """(score, n_gpu_layers, experts in RAM, slots per device) at context ``ctx``."""
        if not gpus:
            return 0, 0, 0, []
        if experts:
            if experts_in_ram is not None:
                k = max(0, min(experts_in_ram, n))
                counts, _ = split_slots(gpus, slot_bytes(profile, n + 1, k), costs_at(ctx, k), True)
                return n + 1 - k, n + 1, k, counts
            for k in range(n + 1):
                counts, fits = split_slots(
                    gpus, slot_bytes(profile, n + 1, k), costs_at(ctx, k), False
                )
                if fits:
                    return n + 1 - k, n + 1, k, counts
            counts, _ = split_slots(gpus, slot_bytes(profile, n + 1, n), costs_at(ctx, n), True)
            return 0, n + 1, n, counts
        costs = costs_at(ctx)
        if n_gpu_layers is not None:
            wanted = n + 1 if n_gpu_layers < 0 else min(n_gpu_layers, n + 1)
            counts, _ = split_slots(gpus, slot_bytes(profile, wanted), costs, fixed=True)
            return wanted, wanted, 0, counts
        for candidate in range(n + 1, 0, -1):
            counts, fits = split_slots(gpus, slot_bytes(profile, candidate), costs, fixed=False)
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
    devices = place(profile, hardware, gpus, counts, costs, n_gpu=n_gpu, k=k, ctx=ctx)
    shortfall = sum(max(0, d.used_bytes - d.free_bytes) for d in devices)
    fit = fit_of(shortfall=shortfall, n_gpu=n_gpu, n_layers=n, k=k)
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
        speed=None,
        tensor_split=tuple(c for c in counts) if len(gpus) > 1 and n_gpu > 0 else (),
        compute_measured=bool(measured_compute),
        strategy="experts" if experts else "layers",
        experts_in_ram=k,
    )
    if fit is not Fit.NONE:  # a setting that cannot load has no speed
        threads = threads or hardware.physical_cores
        names = [(buffer_name(g), g) for g in gpus]
        model = _with_defaults(speed_model, names, threads, {d.buffer_name for d in plan.gpus})
        plan = replace(plan, speed=_speed(model, profile, plan, names, threads))
    per_layer = profile.layer_bytes[-1] if profile.layer_bytes else 0
    room = plan.gpu.free_bytes - plan.gpu.used_bytes if plan.gpu is not None else 0
    local = [g for g in hardware.gpus if g.backend != "rpc"]  # workers need no GPU build here
    facts = PlanFacts(
        model_bytes=profile.weights_bytes,
        layer_bytes=per_layer,
        experts_ram_bytes=sum(profile.layer_expert_bytes[:k]),
        unused_gpu=local[0].name if local and not gpu_offload_supported else "",
        best_device=fastest.name if fastest is not None else "",
        best_device_free_bytes=fastest.free_bytes if fastest is not None else 0,
        layers_fixed=n_gpu_layers is not None,
        one_more_layer_short_bytes=max(0, per_layer - room)
        if fit is Fit.PARTIAL and n_gpu_layers is None
        else 0,
        kept_ctx_over=contexts[-1] if kept_ctx_over_layer else 0,
    )
    return replace(plan, devices=_with_links(plan.devices, hardware), facts=facts)


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


def _with_defaults(
    measured: SpeedModel | None,
    names: list[tuple[str, GpuInfo]],
    threads: int,
    used: set[str],
) -> SpeedModel:
    """The measured coefficients, with defaults for any offload device not measured; the
    speed is then an estimate if the plan uses such a device."""
    defaults = default_speed_model(names, threads)
    if measured is None:
        return defaults
    missing = used - set(measured.devices)
    if not missing:
        return measured
    devices = {**defaults.devices, **measured.devices}
    return replace(
        measured,
        devices=devices,
        source=SpeedSource.ESTIMATE,
        error=max(measured.error, defaults.error),
    )


def _speed(
    model: SpeedModel,
    profile: ModelProfile,
    plan: OffloadPlan,
    names: list[tuple[str, GpuInfo]],
    threads: int,
) -> Speed:
    """The speed model's prediction for the plan's placement."""
    n = profile.n_layers
    layer_device: dict[int, str] = {}
    first = n - plan.repeating_layers_on_gpu
    by_name = {d.buffer_name: d for d in plan.gpus}
    layer = first
    output_device = "CPU"
    for name, _gpu in names:
        device = by_name.get(name)
        if device is None:
            continue
        for i in range(layer, layer + device.layers):
            layer_device[i] = name
        layer += device.layers
        if device.output:
            output_device = name
    return predict(
        model,
        profile,
        layer_device=layer_device,
        output_device=output_device,
        experts_in_ram=plan.experts_in_ram,
        threads=threads,
        op_offload=plan.op_offload,
    )


def _with_links(devices: list[DevicePlan], hardware: HardwareInfo) -> list[DevicePlan]:
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
