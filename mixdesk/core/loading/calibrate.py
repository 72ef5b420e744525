"""``mixdesk calibrate``: measure this machine and fit the speed model's coefficients.

What is measured (llama.cpp's own counters, in the engine process, at the user's thread count):

- two thin models (64-wide, 2 and 24 layers, almost no weights): the fixed cost per token and
  per layer, for generation and for prompts;
- one Mixtral-shaped model per quantisation type that matters (Q2_K, Q3_K_M, Q4_K_M, Q5_K_M,
  Q6_K, Q8_0, F16): a 512-token prompt, then 64 generated tokens with end-of-text ignored (as
  llama-bench does). Each type's throughput is what is left of the time per token after the
  fixed costs and the other types' bytes, divided by its own bytes;
- three models larger than the caches (Q2_K, Q4_K_M, Q8_0, of a shape of their own): what
  memory adds per byte beyond those rates, by type (Q2_K's dequantisation waits on memory
  more per byte than Q8_0's reads; the types between take a value between by bits);
- each offload device with the large model all on it and half on it: its throughput
  relative to the CPU's and the cost of a hop to it; an RPC worker (a CPU somewhere else,
  with threads of its own) is then measured like this CPU, every type's model all on it,
  because its rates relative to this CPU's differ by type (one worker thread halves Q4_K's
  dequantisation but not Q8_0's memory-bound reads);
- a validation model of another shape, predicted before it is measured: the expected error.

The models are generated on this machine once (F32 weights, quantised by llama.cpp) and kept in
the cache folder; the measuring takes about 45 s on two cores.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from mixdesk.core.chat.template import ChatMessage
from mixdesk.core.engine.client import Engine
from mixdesk.core.engine.protocol import SamplingParams
from mixdesk.core.engine.quantize import FILE_TYPES
from mixdesk.core.gguf.profile import ModelProfile, profile_local
from mixdesk.core.loading.calibrate_models import (
    MEMORY_TYPES,
    Progress,
    Shapes,
    calibration_models,
)
from mixdesk.core.loading.choices import LoadChoices
from mixdesk.core.loading.model import resolve_file
from mixdesk.core.loading.service import plan_load
from mixdesk.core.machine.hardware import GpuInfo, HardwareInfo
from mixdesk.core.planning.calibration import Calibration
from mixdesk.core.planning.placement import buffer_name, offload_devices
from mixdesk.core.planning.speed import (
    DeviceRates,
    SpeedModel,
    SpeedSource,
    device_work,
    predict,
)
from mixdesk.core.planning.speed_defaults import default_speed_model
from mixdesk.errors import CalibrationNoisyError

log = logging.getLogger(__name__)


#: A check model further off than this from the fit's prediction: the measurements are
#: not kept (a busy machine), rather than every later speed being wrong.
MAX_CHECK_MISS = 0.5
#: Tokens generated per measurement (end-of-text ignored), and rounds per model.
EVAL_TOKENS = 48
ROUNDS = 2
#: Words in the measuring prompt: about 512 tokens with the template's (3 tokens a word).
PROMPT_WORDS = 150
_WORDS = ("the", "of", "and", "to", "in", "is")


@dataclass(frozen=True)
class Run:
    """One measured model: what a token costs each type, and the time it took."""

    label: str
    n_layers: int
    #: Per type on the CPU: bytes read per generated token and weights per prompt token.
    eval_bytes: Mapping[str, float]
    prompt_weights: Mapping[str, float]
    #: Seconds per generated token and per prompt token (llama.cpp's counters).
    eval_s: float
    prompt_s: float


@dataclass(frozen=True)
class CalibrationResult:
    """What ``mixdesk calibrate`` found."""

    model: SpeedModel
    runs: list[Run] = field(default_factory=list)
    #: The validation model: predicted and measured eval tok/s.
    #: Each RPC worker's runs (its type models and the large model all on it), by device.
    device_runs: dict[str, list[Run]] = field(default_factory=dict)
    check_predicted_tps: float = 0.0
    check_measured_tps: float = 0.0
    seconds: float = 0.0


def _cpu(hardware: HardwareInfo) -> HardwareInfo:
    return replace(hardware, gpus=[])


def measuring_prompt(round_no: int = 0) -> str:
    """The prompt speeds are measured with: about 512 tokens of the generated vocabulary."""
    return " ".join(_WORDS[(i + round_no) % len(_WORDS)] for i in range(PROMPT_WORDS))


def _measure(
    engine: Engine, path: Path, hardware: HardwareInfo, choices: LoadChoices
) -> tuple[float, float]:
    """(seconds per generated token, seconds per prompt token) of one load: the faster of
    :data:`ROUNDS` rounds (another program can only make a round slower), each with a prompt of
    its own (a repeated prompt would be read from the cache, not evaluated)."""
    setup = plan_load(resolve_file(path), hardware, choices, calibration=Calibration())
    engine.load(setup.config)
    sampling = SamplingParams(
        max_tokens=EVAL_TOKENS, ignore_eos=True, seed=1, temperature=0.0, top_k=1
    )
    eval_s = prompt_s = math.inf
    for round_no in range(ROUNDS):
        prompt = measuring_prompt(round_no)
        stats = engine.chat([ChatMessage("user", prompt)], sampling).wait().stats
        if stats.eval_tps <= 0 or stats.prompt_tps <= 0:
            raise RuntimeError(f"no speed measured for {path.name}")
        eval_s = min(eval_s, 1.0 / stats.eval_tps)
        prompt_s = min(prompt_s, 1.0 / stats.prompt_tps)
    return eval_s, prompt_s


def _run(label: str, profile: ModelProfile, eval_s: float, prompt_s: float) -> Run:
    work = device_work(profile, {}, "CPU")["CPU"]
    return Run(label, profile.n_layers, work.eval_bytes, work.prompt_weights, eval_s, prompt_s)


def fit(runs: list[Run], threads: int) -> SpeedModel:
    """The CPU's coefficients from measured runs (pure: unit-tested on made-up runs).

    The thin F32 runs give the fixed costs and the F32 throughput (least squares over
    ``t = token_s + layers x layer_s + bytes / rate``); each quantisation run then gives its
    dominant type's throughput from what is left of its time, the other types at their
    current estimates (three passes, so they settle).
    """
    defaults = default_speed_model([], threads)
    thin = [r for r in runs if r.label.startswith("thin")]
    quants = [r for r in runs if not r.label.startswith(("thin", "memory"))]
    memory_runs = [r for r in runs if r.label.startswith("memory")]
    eval_rates = dict(defaults.cpu.eval_bytes_per_s)
    prompt_rates = dict(defaults.cpu.prompt_weights_per_s)
    token_s, layer_s, prompt_layer_s = defaults.token_s, defaults.layer_s, defaults.prompt_layer_s
    if len(thin) >= 3:
        token_s, layer_s, eval_rates["F32"], prompt_layer_s, prompt_rates["F32"] = _fixed_costs(
            thin, defaults
        )
    for _ in range(3):
        for r in quants:
            kind = max(r.eval_bytes, key=lambda t: r.eval_bytes[t])
            others = {t: v for t, v in r.eval_bytes.items() if t != kind}
            left = r.eval_s - token_s - r.n_layers * layer_s - _cost(others, eval_rates)
            if left > 0:
                eval_rates[kind] = r.eval_bytes[kind] / left
            others = {t: v for t, v in r.prompt_weights.items() if t != kind}
            left = r.prompt_s - r.n_layers * prompt_layer_s - _cost(others, prompt_rates)
            if left > 0:
                prompt_rates[kind] = r.prompt_weights[kind] / left
    # the type models' working set stays in the caches: memory costs the bytes beyond it
    free = statistics.median(sum(r.eval_bytes.values()) for r in quants) if quants else 0.0
    memory_by_type = {}
    for memory in memory_runs:  # what is left of a large model's time is memory's
        left = memory.eval_s - token_s - memory.n_layers * layer_s
        left -= _cost(memory.eval_bytes, eval_rates)
        kind = max(memory.eval_bytes, key=lambda t: memory.eval_bytes[t])
        beyond = sum(memory.eval_bytes.values()) - free
        memory_by_type[kind] = max(0.0, left / beyond) if beyond > 0 else 0.0
    memory_s_per_byte = memory_by_type.get("Q8_0", max(memory_by_type.values(), default=0.0))
    return SpeedModel(
        cpu=DeviceRates(
            eval_rates,
            prompt_rates,
            memory_s_per_byte=memory_s_per_byte,
            memory_by_type=memory_by_type,
            memory_free_bytes=free if memory_runs else 0.0,
        ),
        cpu_threads=threads,
        token_s=token_s,
        layer_s=layer_s,
        prompt_layer_s=prompt_layer_s,
        source=SpeedSource.MEASURED,
        error=0.15,
    )


def _fixed_costs(thin: list[Run], defaults: SpeedModel) -> tuple[float, float, float, float, float]:
    """(token_s, layer_s, F32 bytes/s, prompt layer_s, F32 weights/s) from the thin runs."""
    import numpy as np

    f32 = [r.eval_bytes.get("F32", 0.0) for r in thin]
    a = np.array([[1.0, r.n_layers, b] for r, b in zip(thin, f32, strict=True)])
    (token_s, layer_s, per_byte), *_ = np.linalg.lstsq(
        a, np.array([r.eval_s for r in thin]), rcond=None
    )
    w = [r.prompt_weights.get("F32", 0.0) for r in thin]
    p = np.array([[r.n_layers, x] for r, x in zip(thin, w, strict=True)])
    (prompt_layer_s, per_weight), *_ = np.linalg.lstsq(
        p, np.array([r.prompt_s for r in thin]), rcond=None
    )
    cpu = defaults.cpu
    return (
        max(0.0, float(token_s)),
        max(0.0, float(layer_s)),
        1.0 / float(per_byte) if per_byte > 0 else cpu.eval_rate("F32"),
        max(0.0, float(prompt_layer_s)),
        1.0 / float(per_weight) if per_weight > 0 else cpu.prompt_rate("F32"),
    )


def _cpu_cost(model: SpeedModel, eval_bytes: Mapping[str, float]) -> float:
    """Seconds a token's ``eval_bytes`` take at the CPU's rates, memory included."""
    memory = model.cpu.memory_time(eval_bytes)
    return _cost(eval_bytes, model.cpu.eval_bytes_per_s) + memory


def _cost(amounts: Mapping[str, float], rates: Mapping[str, float]) -> float:
    return sum(v / rates.get(t, min(rates.values())) for t, v in amounts.items())


def _device_rates(
    model: SpeedModel,
    profile: ModelProfile,
    gpu: GpuInfo,
    name: str,
    *,
    full_s: float,
    half_s: float,
    half_layers: int,
) -> DeviceRates:
    """An offload device's rates from the large model all on it (``full_s`` per token) and
    its last ``half_layers`` layers on it (``half_s``): relative to the CPU's rates for an RPC
    worker (what is behind it is unknown), flat over types for a local GPU (memory-bound)."""
    n = profile.n_layers
    fixed = model.token_s + n * model.layer_s
    everything = device_work(profile, {i: "CPU" for i in range(n)}, "CPU")["CPU"]
    all_cpu_s = _cpu_cost(model, everything.eval_bytes)
    half_map = {i: name for i in range(n - half_layers, n)}
    split = device_work(profile, half_map, name)
    cpu_part_s = _cpu_cost(model, split["CPU"].eval_bytes) if "CPU" in split else 0.0
    dev_part_s = _cpu_cost(model, split[name].eval_bytes)
    # full: fixed + all_cpu_s / s + hop; half: fixed + cpu_part_s + dev_part_s / s + hop
    gain = (all_cpu_s - dev_part_s) / max(full_s - half_s + cpu_part_s, 1e-9)
    scale = gain if gain > 0 and math.isfinite(gain) else 1.0
    hop = max(0.0, full_s - fixed - all_cpu_s / scale)
    if gpu.backend == "rpc":
        return DeviceRates(
            {t: r * scale for t, r in model.cpu.eval_bytes_per_s.items()},
            {t: r * scale for t, r in model.cpu.prompt_weights_per_s.items()},
            hop_s=hop,
            memory_s_per_byte=model.cpu.memory_s_per_byte / scale,
            memory_by_type={t: v / scale for t, v in model.cpu.memory_by_type.items()},
            memory_free_bytes=model.cpu.memory_free_bytes,
        )
    flat = sum(everything.eval_bytes.values()) / max(full_s - fixed - hop, 1e-9)
    return DeviceRates(
        {t: flat for t in model.cpu.eval_bytes_per_s},
        {t: r * scale for t, r in model.cpu.prompt_weights_per_s.items()},
        hop_s=hop,
    )


def fit_worker(
    cpu_runs: list[Run], on_worker: list[Run], hop_s: float, threads: int
) -> DeviceRates:
    """An RPC worker's rates from the type models and the large model measured all on it
    (``on_worker``; pure: unit-tested on made-up runs): fitted as this CPU's are
    (:func:`fit`), with this machine's fixed costs (its thin runs in ``cpu_runs``) and each
    token's hop to the worker and back (``hop_s``, from the large model all and half on it)
    taken off first."""
    thin = [r for r in cpu_runs if r.label.startswith("thin")]
    less_hop = [replace(r, eval_s=max(r.eval_s - hop_s, 1e-9)) for r in on_worker]
    fitted = fit(thin + less_hop, threads).cpu
    return replace(fitted, hop_s=hop_s)


def expected_error(
    predicted_tps: float, measured_tps: float, max_miss: float = MAX_CHECK_MISS
) -> float:
    """The expected relative error of the fitted model, from how far it missed a model of
    another shape (twice the miss, at least 5%).

    Raises:
        CalibrationNoisyError: it missed by more than ``max_miss``.
    """
    miss = abs(predicted_tps / measured_tps - 1) if measured_tps > 0 else math.inf
    if miss > max_miss:
        raise CalibrationNoisyError(
            f"The measurements disagree with each other (a check model ran at "
            f"{measured_tps:.1f} tok/s where they predicted {predicted_tps:.1f}): the machine "
            "was probably busy. Close other programs and measure again; the speeds stay "
            "estimates until then."
        )
    return round(max(0.05, 2 * miss), 3)


def calibrate(
    engine: Engine,
    hardware: HardwareInfo,
    models_dir: Path,
    *,
    threads: int | None = None,
    shapes: Shapes | None = None,
    on_progress: Progress | None = None,
    max_miss: float = MAX_CHECK_MISS,
) -> CalibrationResult:
    """Measure this machine (its CPU at ``threads`` and every offload device in
    ``hardware``) and fit the speed model; the caller keeps it
    (:meth:`~mixdesk.core.planning.calibration.CalibrationStore.record_speed_model`).

    Raises:
        MixdeskError: a measuring load failed (the engine's typed errors).
        QuantizeError: a measuring model could not be made.
    """
    started = time.perf_counter()
    threads = threads or hardware.physical_cores
    shapes = shapes or Shapes()
    paths = calibration_models(models_dir, threads=threads, shapes=shapes, on_progress=on_progress)
    choices = LoadChoices(n_gpu_layers=0, n_ctx=1024, n_threads=threads)
    labels = [*shapes.thin, *FILE_TYPES, *MEMORY_TYPES]
    runs = []
    for i, label in enumerate(labels):
        if on_progress is not None:
            on_progress(f"measuring {label}", i / (len(labels) + 2))
        eval_s, prompt_s = _measure(engine, paths[label], _cpu(hardware), choices)
        runs.append(_run(label, profile_local(paths[label]), eval_s, prompt_s))
    model = fit(runs, threads)
    devices = {}
    device_runs: dict[str, list[Run]] = {}
    shape = profile_local(paths["memory"])
    for gpu in offload_devices(hardware):
        name = buffer_name(gpu)
        only = replace(hardware, gpus=[gpu])
        if on_progress is not None:
            on_progress(f"measuring {gpu.name}", len(labels) / (len(labels) + 2))
        all_on = replace(choices, n_gpu_layers=-1)
        full_s, full_prompt_s = _measure(engine, paths["memory"], only, all_on)
        half = shape.n_layers // 2
        half_s, _ = _measure(engine, paths["memory"], only, replace(choices, n_gpu_layers=half + 1))
        rates = _device_rates(
            model, shape, gpu, name, full_s=full_s, half_s=half_s, half_layers=half
        )
        if gpu.backend == "rpc":
            on_worker = [
                _run(
                    label,
                    profile_local(paths[label]),
                    *_measure(engine, paths[label], only, all_on),
                )
                for label in FILE_TYPES
            ]
            on_worker.append(_run("memory", shape, full_s, full_prompt_s))
            # the hop: a thin model (fixed costs, next to no weights) on the worker against
            # the same on this CPU; what the large model all and half on it would say is
            # the small difference of large times (milliseconds off on a loopback worker)
            thin = min((r for r in runs if r.label in shapes.thin), key=lambda r: r.n_layers)
            thin_s, _ = _measure(engine, paths[thin.label], only, all_on)
            rates = fit_worker(runs, on_worker, max(0.0, thin_s - thin.eval_s), threads)
            device_runs[name] = on_worker
        devices[name] = rates
    model = replace(model, devices=devices)
    if on_progress is not None:
        on_progress("checking the fit", (len(labels) + 1) / (len(labels) + 2))
    check = profile_local(paths["check"])
    predicted = predict(model, check, layer_device={}, output_device="CPU", threads=threads)
    eval_s, _ = _measure(engine, paths["check"], _cpu(hardware), choices)
    measured_tps = 1.0 / eval_s
    model = replace(model, error=expected_error(predicted.eval_tps, measured_tps, max_miss))
    return CalibrationResult(
        model=model,
        runs=runs,
        device_runs=device_runs,
        check_predicted_tps=predicted.eval_tps,
        check_measured_tps=round(measured_tps, 2),
        seconds=round(time.perf_counter() - started, 1),
    )
