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

The "experts" strategy puts every layer on the GPU and keeps expert tensors in RAM one tensor
at a time until the rest fits (:mod:`.experts`, as llama.cpp's fit does); whether the first or
the last layers' experts go is the speed model's choice unless the user made it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from mixdesk.core.engine.protocol import Buffers
from mixdesk.core.gguf.profile import ModelProfile
from mixdesk.core.machine.hardware import GpuInfo, HardwareInfo
from mixdesk.core.planning.experts import (
    ExpertsInRam,
    count_for_layers,
    expert_tensors,
    fewest_that_fit,
    in_ram,
)
from mixdesk.core.planning.memory import (
    DEFAULT_CTX,
    MIN_AUTO_CTX,
    compute_buffer_bytes,
    kv_bytes_per_layer,
)
from mixdesk.core.planning.placement import (
    Costs,
    buffer_name,
    fit_of,
    offload_devices,
    place,
    slot_bytes,
    split_slots,
    with_links,
)
from mixdesk.core.planning.plan_speed import faster, plan_speed, with_defaults
from mixdesk.core.planning.speed import SpeedModel
from mixdesk.core.planning.types import (
    EXPERTS_ORDERS,
    ExpertsOrder,
    Fit,
    OffloadPlan,
    PlanFacts,
)


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
    expert_tensors_in_ram: int | None = None,
    experts_from: ExpertsOrder | None = None,
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
            layer on the GPU, expert tensors in RAM one at a time until the rest fits, as
            llama.cpp's fit does). With "experts" ``n_gpu_layers`` is always all of them.
        experts_in_ram: K whole layers' expert tensors in RAM, when the user fixed it.
        expert_tensors_in_ram: exactly this many expert tensors in RAM (a plan pinned by its
            dry run, or by Measure); it wins over ``experts_in_ram``.
        experts_from: whose experts go to RAM, the first or the last layers'; None: the
            faster by the speed model (both filled to the same margin).
        overheads: the runtime overhead measured per device on this machine
            (:mod:`mixdesk.core.planning.calibration`), by buffer name; else the defaults.
        speed_model: the speed model's coefficients measured on this machine; else defaults.
        threads: the CPU threads the load will use (default: the physical cores).
    """
    if strategy == "experts" and profile.is_moe and experts_from is None:
        each = [
            plan_offload(
                profile,
                hardware,
                n_ctx=n_ctx,
                type_k=type_k,
                type_v=type_v,
                flash_attn=flash_attn,
                n_gpu_layers=n_gpu_layers,
                gpu_offload_supported=gpu_offload_supported,
                measured_compute=measured_compute,
                strategy=strategy,
                experts_in_ram=experts_in_ram,
                expert_tensors_in_ram=expert_tensors_in_ram,
                experts_from=order,
                overheads=overheads,
                speed_model=speed_model,
                threads=threads,
            )
            for order in EXPERTS_ORDERS
        ]
        best = faster(each)
        return replace(best, facts=replace(best.facts, experts_order_fixed=False))
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
    order: ExpertsOrder = experts_from or "first"
    experts = strategy == "experts" and profile.is_moe
    pinned = expert_tensors_in_ram
    if experts and pinned is None and experts_in_ram is not None:
        pinned = count_for_layers(profile, order, max(0, min(experts_in_ram, n)))

    def costs_at(ctx: int, ram: ExpertsInRam) -> Costs:
        return Costs(
            kv_layer=kv_bytes_per_layer(profile, ctx, type_k, type_v),
            compute=compute_buffer_bytes(
                profile, ctx, flash_attn=flash_attn, type_k=type_k, type_v=type_v
            ),
            measured=measured_compute or Buffers(),
            gpu_extra=ram.largest,
            overheads=overheads or {},
        )

    def choose(ctx: int) -> _Choice:
        """The placement at context ``ctx``, with its score (layers all on the GPU)."""
        if not gpus:
            return _Choice(0, 0, ExpertsInRam(), [])
        if experts:
            return _choose_experts(profile, gpus, lambda ram: costs_at(ctx, ram), order, pinned)
        costs = costs_at(ctx, ExpertsInRam())
        if n_gpu_layers is not None:
            wanted = n + 1 if n_gpu_layers < 0 else min(n_gpu_layers, n + 1)
            counts, _ = split_slots(gpus, slot_bytes(profile, wanted), costs, fixed=True)
            return _Choice(wanted, wanted, ExpertsInRam(), counts)
        for candidate in range(n + 1, 0, -1):
            counts, fits = split_slots(gpus, slot_bytes(profile, candidate), costs, fixed=False)
            if fits:
                return _Choice(candidate, candidate, ExpertsInRam(), counts)
        return _Choice(0, 0, ExpertsInRam(), [0] * len(gpus))

    fixed_by_user = n_gpu_layers is not None or (experts and pinned is not None)
    # With flash attention and a quantised KV cache (q8_0) a 4096-token context costs little:
    # a long conversation keeps it rather than trade it for a single layer (issue 13).
    cheap_ctx = flash_attn and type_k != "f16" and type_v != "f16"
    (chosen, ctx), kept_ctx_over_layer = _best_context(
        contexts, choose, n_layers=n, stop_at_first=fixed_by_user, cheap_ctx=cheap_ctx
    )
    n_gpu, ram = chosen.n_gpu, chosen.ram
    devices = place(
        profile,
        hardware,
        gpus,
        chosen.counts,
        costs_at(ctx, ram),
        n_gpu=n_gpu,
        experts_ram=ram.bytes_by_layer(),
        ctx=ctx,
    )
    shortfall = sum(max(0, d.used_bytes - d.free_bytes) for d in devices)
    fit = fit_of(shortfall=shortfall, n_gpu=n_gpu, n_layers=n, experts=bool(ram.tensors))
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
        tensor_split=tuple(chosen.counts) if len(gpus) > 1 and n_gpu > 0 else (),
        compute_measured=bool(measured_compute),
        strategy="experts" if experts else "layers",
        experts_in_ram=ram.whole_layers,
        cpu_tensors=ram.names,
        experts_order=order,
        partial_layer=ram.partial,
    )
    if fit is not Fit.NONE:  # a setting that cannot load has no speed
        threads = threads or hardware.physical_cores
        names = [(buffer_name(g), g) for g in gpus]
        model = with_defaults(speed_model, names, threads, {d.buffer_name for d in plan.gpus})
        plan = replace(plan, speed=plan_speed(model, profile, plan, names, threads))
    per_layer = profile.layer_bytes[-1] if profile.layer_bytes else 0
    room = plan.gpu.free_bytes - plan.gpu.used_bytes if plan.gpu is not None else 0
    local = [g for g in hardware.gpus if g.backend != "rpc"]  # workers need no GPU build here
    facts = PlanFacts(
        model_bytes=profile.weights_bytes,
        layer_bytes=per_layer,
        experts_ram_bytes=ram.nbytes,
        experts_order_fixed=experts_from is not None,
        unused_gpu=local[0].name if local and not gpu_offload_supported else "",
        best_device=fastest.name if fastest is not None else "",
        best_device_free_bytes=fastest.free_bytes if fastest is not None else 0,
        layers_fixed=n_gpu_layers is not None,
        one_more_layer_short_bytes=max(0, per_layer - room)
        if fit is Fit.PARTIAL and n_gpu_layers is None
        else 0,
        kept_ctx_over=contexts[-1] if kept_ctx_over_layer else 0,
    )
    return replace(plan, devices=with_links(plan.devices, hardware), facts=facts)


@dataclass(frozen=True)
class _Choice:
    """A placement at one context: its score (layers wholly on the GPU, the output layer
    counting as one), ``n_gpu_layers``, the expert tensors in RAM and slots per device."""

    score: int
    n_gpu: int
    ram: ExpertsInRam
    counts: list[int]


def _choose_experts(
    profile: ModelProfile,
    gpus: list[GpuInfo],
    costs_of: Callable[[ExpertsInRam], Costs],
    order: ExpertsOrder,
    pinned: int | None,
) -> _Choice:
    """Every layer on the GPU, and the fewest expert tensors in RAM (in ``order``) with which
    the rest fits each device to its margin; exactly ``pinned`` of them when given."""
    n = profile.n_layers

    def split(count: int, fixed: bool) -> tuple[ExpertsInRam, list[int], bool]:
        ram = in_ram(profile, order, count)
        counts, fits = split_slots(
            gpus, slot_bytes(profile, n + 1, ram.bytes_by_layer()), costs_of(ram), fixed
        )
        return ram, counts, fits

    if pinned is not None:
        ram, counts, _ = split(pinned, True)
        return _Choice(n + 1 - len(ram.bytes_by_layer()), n + 1, ram, counts)
    count, fits = fewest_that_fit(len(expert_tensors(profile)), lambda c: split(c, False)[2])
    ram, counts, _ = split(count, not fits)
    return _Choice(n + 1 - len(ram.bytes_by_layer()) if fits else 0, n + 1, ram, counts)


def _best_context(
    contexts: list[int],
    choose: Callable[[int], _Choice],
    *,
    n_layers: int,
    stop_at_first: bool,
    cheap_ctx: bool,
) -> tuple[tuple[_Choice, int], bool]:
    """The context (largest first) whose placement scores best, with its placement, and
    whether a larger context was kept over a gain of one layer (``cheap_ctx``: a smaller
    context must then gain two layers or more)."""
    best: tuple[_Choice, int] | None = None
    kept = False
    for ctx in contexts:
        chosen = choose(ctx)
        if best is not None and cheap_ctx and chosen.score == best[0].score + 1:
            kept = True
        elif best is None or chosen.score > best[0].score:
            best = (chosen, ctx)
        if chosen.score > n_layers or stop_at_first:
            break
    assert best is not None
    return best, kept
