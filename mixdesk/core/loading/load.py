"""Loading a planned model (:mod:`.service` plans it): the engine loads it; an out-of-memory
on a GPU is tried again with fewer layers, every other choice of the user's kept; and each
answer's speed is kept for its setting."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from mixdesk.core.engine.protocol import (
    BufferKind,
    GenerationStats,
    ModelInfo,
)
from mixdesk.core.loading.choices import LoadChoices
from mixdesk.core.loading.service import LoadRequest, LoadSetup, make_plan, plan_load, speed_key
from mixdesk.core.machine.hardware import HardwareInfo
from mixdesk.core.planning.calibration import CalibrationStore
from mixdesk.errors import (
    DeviceOutOfMemoryCrashError,
    DeviceOutOfMemoryError,
)

if TYPE_CHECKING:
    from mixdesk.core.engine.like import EngineLike

log = logging.getLogger(__name__)


def with_gpu_layers(
    setup: LoadSetup, n_gpu_layers: int, hardware: HardwareInfo, *, engine: EngineLike | None = None
) -> LoadSetup:
    """The same load with another GPU layer count (the out-of-memory retry): every other
    choice of the user's (op offload, threads, KV type, batch...) and the context stay."""
    choices = _retry_choices(setup, n_gpu_layers)
    return plan_load(
        setup.model,
        hardware,
        choices,
        calibration=setup.calibration,
        profile=setup.profile,
        engine=engine,
    )


@dataclass(frozen=True)
class LoadOutcome:
    """A finished load: the model as llama.cpp reports it, the setup it loaded with, and a
    note for the user when MixDesk changed the plan (fewer GPU layers after an out-of-memory)."""

    info: ModelInfo
    setup: LoadSetup
    note: str = ""


#: Loads tried at most for one request (the first and two with fewer GPU layers).
MAX_LOAD_TRIES = 3


def load_model(
    engine: EngineLike,
    request: LoadRequest,
    *,
    on_progress: Callable[[float], None] | None = None,
    retry: bool = True,
    store: CalibrationStore | None = None,
) -> LoadOutcome:
    """Plan ``request`` and load it in ``engine``.

    When a GPU device runs out of memory (:class:`DeviceOutOfMemoryError`, never a RAM
    failure or a kill), the load is tried again with fewer GPU layers: as many fewer as the
    failed allocation needs beyond the device's free memory, at most :data:`MAX_LOAD_TRIES`
    loads in all.

    Raises:
        MixdeskError: the load failed (the last failure after retries).
    """
    if store is not None:  # what a load shows, the next plan uses
        engine.on_device_memory = store.record_overheads
    setup = request.setup(engine=engine)
    wanted = setup.config.n_gpu_layers
    for attempt in range(1, MAX_LOAD_TRIES + 1):
        try:
            info = engine.load(setup.config, on_progress=on_progress)
        except (DeviceOutOfMemoryError, DeviceOutOfMemoryCrashError) as err:
            fewer = fewer_gpu_layers(setup, err, request.hardware)
            if not retry or attempt == MAX_LOAD_TRIES or fewer is None:
                raise
            log.warning(
                "%s; retrying with %s GPU layers instead of %s",
                err,
                fewer,
                setup.config.n_gpu_layers,
            )
            setup = with_gpu_layers(setup, fewer, request.hardware, engine=engine)
            continue
        note = ""
        if setup.config.n_gpu_layers != wanted:
            note = (
                f"n_gpu_layers {wanted} did not fit in GPU memory, so MixDesk loaded "
                f"{setup.plan.placement_words}."
            )
        return LoadOutcome(info=info, setup=setup, note=note)
    raise AssertionError("unreachable")  # pragma: no cover


def fewer_gpu_layers(
    setup: LoadSetup,
    err: DeviceOutOfMemoryError | DeviceOutOfMemoryCrashError,
    hardware: HardwareInfo,
) -> int | None:
    """The GPU layer count to try after ``err``, or None when no GPU layer is left to drop.

    The failed allocation bounds the device's real room: what this load had already put there
    (the weights, for a KV cache failure; weights and KV cache, for a compute buffer) plus the
    buffer that did not fit. The new count is the largest one whose share of that device
    (weights, KV cache, compute) stays below that bound, at least one layer fewer.
    """
    current = setup.config.n_gpu_layers
    if current <= 0 or setup.config.cpu_tensors:
        return None  # (with experts in RAM, MixDesk does not guess a larger K: the user picks)
    plan = setup.plan
    device = next(
        (d for d in plan.gpus if d.buffer_name and err.device.startswith(d.buffer_name)),
        plan.gpu,
    )
    if device is None:
        return current - 1
    buffer = getattr(err, "buffer", "")
    already = 0 if buffer in ("", BufferKind.MODEL) else device.weights_bytes
    if buffer == BufferKind.COMPUTE:
        already += device.kv_bytes
    room = device.free_bytes
    if err.requested_bytes:
        room = min(room, already + err.requested_bytes)
    for n in range(current - 1, 0, -1):
        smaller = make_plan(
            setup.profile, hardware, _retry_choices(setup, n), calibration=setup.calibration
        )
        share = next((d for d in smaller.gpus if d.buffer_name == device.buffer_name), None)
        if share is None:
            return n
        need = share.weights_bytes + share.kv_bytes + max(share.compute_bytes, device.compute_bytes)
        if need < room:
            return n
    return 0


def _retry_choices(setup: LoadSetup, n_gpu_layers: int) -> LoadChoices:
    """The user's own choices with another layer count, for the context already chosen."""
    return replace(
        setup.choices,
        n_gpu_layers=n_gpu_layers,
        n_ctx=setup.config.n_ctx,
        strategy="layers",
        experts_in_ram=None,
        expert_tensors_in_ram=None,
        experts_from=None,
    )


#: Answers shorter than this say too little about the generation speed to keep it.
MIN_SPEED_TOKENS = 16


#: A prompt speed is kept only from prompts at least this long (short ones read slower per token).
MIN_PROMPT_TOKENS = 256


def record_answer_speed(
    store: CalibrationStore, outcome: LoadOutcome, stats: GenerationStats
) -> bool:
    """Keep the speed an answer ran at for its setting, so the next plan of the same setting
    quotes it as measured on this machine (llama.cpp's own counters). Returns whether it
    was kept; a failure to write is logged, never raised (an answer never fails for it)."""
    if stats.eval_tokens < MIN_SPEED_TOKENS or stats.eval_tps <= 0:
        return False
    setup = outcome.setup
    prompt_tps = stats.prompt_tps if stats.prompt_eval_tokens >= MIN_PROMPT_TOKENS else 0.0
    key = speed_key(setup.profile, setup.plan, outcome.info.n_threads)
    try:
        store.record_answer(key, stats.eval_tps, prompt_tps)
    except OSError:
        log.warning("could not keep the answer's speed", exc_info=True)
        return False
    return True
