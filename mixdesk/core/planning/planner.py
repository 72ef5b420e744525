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
from mixdesk.core.machine.hardware import GpuInfo, HardwareInfo, format_bytes
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
from mixdesk.core.planning.speed import expected_tokens_per_second
from mixdesk.core.planning.types import OffloadPlan


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
