"""The fitting half of calibration (pure: unit-tested on made-up runs): the CPU's coefficients
from its measured runs, an RPC worker's from its own, a worker's contention with this machine,
and the expected error from the check model. :mod:`.calibrate` measures; this fits.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, replace

from mixdesk.core.gguf.profile import ModelProfile
from mixdesk.core.machine.hardware import GpuInfo
from mixdesk.core.planning.speed import (
    DeviceRates,
    SpeedModel,
    SpeedSource,
    Work,
    device_work,
    miss_share,
    predict,
)
from mixdesk.core.planning.speed_defaults import default_speed_model
from mixdesk.errors import CalibrationNoisyError

#: A check model further off than this from the fit's prediction: the measurements are
#: not kept (a busy machine), rather than every later speed being wrong.
MAX_CHECK_MISS = 0.5
#: The most a split token's contention can be measured at (per second of the shorter part).
MAX_CONTENTION = 3.0
#: The most passes the fit takes over the type models (it stops when the rates settle).
FIT_PASSES = 30


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
    #: The weight bytes the device held (0: as many as a token reads).
    held_bytes: float = 0.0

    @property
    def dominant(self) -> str:
        """The type the model is mostly made of (the most bytes a token reads)."""
        return max(self.eval_bytes, key=lambda t: self.eval_bytes[t])

    @property
    def held(self) -> float:
        """The weight bytes held (a token's bytes when not known)."""
        return self.held_bytes or sum(self.eval_bytes.values())


def fit(runs: list[Run], threads: int, *, start: DeviceRates | None = None) -> SpeedModel:
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
    first = start or defaults.cpu  # the rates the passes start from
    eval_rates = dict(first.eval_bytes_per_s)
    prompt_rates = dict(first.prompt_weights_per_s)
    token_s, layer_s, prompt_layer_s = defaults.token_s, defaults.layer_s, defaults.prompt_layer_s
    prompt_token_s = defaults.prompt_token_s
    if len(thin) >= 3:
        fixed = _fixed_costs(thin, defaults)
        token_s, layer_s, eval_rates["F32"] = fixed.token_s, fixed.layer_s, fixed.f32_bytes_per_s
        prompt_token_s, prompt_layer_s = fixed.prompt_token_s, fixed.prompt_layer_s
        prompt_rates["F32"] = fixed.f32_weights_per_s
    # Each type model holds a little of other types (Q2_K's holds Q3_K, Q3_K_M's Q4_K, ...):
    # a type's rate needs the others' first, so pass over them until the rates settle (a
    # chain of types takes a pass per link; three passes left Q2_K at its default).
    for _ in range(FIT_PASSES):
        before = (dict(eval_rates), dict(prompt_rates))
        for r in quants:
            kind = r.dominant
            others = {t: v for t, v in r.eval_bytes.items() if t != kind}
            left = r.eval_s - token_s - r.n_layers * layer_s - _cost(others, eval_rates)
            if left > 0:
                eval_rates[kind] = r.eval_bytes[kind] / left
            others = {t: v for t, v in r.prompt_weights.items() if t != kind}
            left = r.prompt_s - prompt_token_s - r.n_layers * prompt_layer_s
            left -= _cost(others, prompt_rates)
            if left > 0:
                prompt_rates[kind] = r.prompt_weights[kind] / left
        if _settled(before, (eval_rates, prompt_rates)):
            break
    # the type models stay in the caches (their time is their rates'); a larger model's
    # token misses them for the share of the weights it holds beyond that
    free = statistics.median(r.held for r in quants) if quants else 0.0
    memory_by_type = {}
    for memory in memory_runs:  # what is left of a large model's time is memory's
        left = memory.eval_s - token_s - memory.n_layers * layer_s
        left -= _cost(memory.eval_bytes, eval_rates)
        kind = memory.dominant
        share = miss_share(free, memory.eval_bytes, memory.held)
        beyond = sum(memory.eval_bytes.values()) * share
        memory_by_type[kind] = max(0.0, left / beyond) if beyond > 0 else 0.0
    memory_s_per_byte = memory_by_type.get("Q8_0", max(memory_by_type.values(), default=0.0))
    return SpeedModel(
        cpu=DeviceRates(
            eval_rates,
            prompt_rates,
            memory_s_per_byte=memory_s_per_byte,
            memory_by_type=memory_by_type,
            memory_cached_bytes=free if memory_runs else 0.0,
        ),
        cpu_threads=threads,
        token_s=token_s,
        layer_s=layer_s,
        prompt_layer_s=prompt_layer_s,
        prompt_token_s=prompt_token_s,
        source=SpeedSource.MEASURED,
        error=0.15,
    )


def _settled(
    before: tuple[Mapping[str, float], ...], after: tuple[Mapping[str, float], ...]
) -> bool:
    """Whether no rate moved by more than 0.1% in a pass."""
    return all(
        abs(new[t] - old.get(t, 0.0)) <= 1e-3 * new[t]
        for old, new in zip(before, after, strict=True)
        for t in new
    )


@dataclass(frozen=True)
class FixedCosts:
    """What the thin models say: the costs that do not depend on the weights, and F32's
    rates (their few weights are F32)."""

    token_s: float
    layer_s: float
    f32_bytes_per_s: float
    prompt_token_s: float
    prompt_layer_s: float
    f32_weights_per_s: float


def _fixed_costs(thin: list[Run], defaults: SpeedModel) -> FixedCosts:
    """The fixed costs from the thin runs: least squares over ``t = per token + layers x
    per layer + F32 amount / rate``, for generation and for prompts alike."""
    import numpy as np

    def solve(amounts: list[float], times: list[float]) -> tuple[float, float, float]:
        a = np.array([[1.0, r.n_layers, x] for r, x in zip(thin, amounts, strict=True)])
        (per_token, per_layer, per_unit), *_ = np.linalg.lstsq(a, np.array(times), rcond=None)
        return float(per_token), float(per_layer), float(per_unit)

    token_s, layer_s, per_byte = solve(
        [r.eval_bytes.get("F32", 0.0) for r in thin], [r.eval_s for r in thin]
    )
    prompt_token_s, prompt_layer_s, per_weight = solve(
        [r.prompt_weights.get("F32", 0.0) for r in thin], [r.prompt_s for r in thin]
    )
    cpu = defaults.cpu
    return FixedCosts(
        token_s=max(0.0, token_s),
        layer_s=max(0.0, layer_s),
        f32_bytes_per_s=1.0 / per_byte if per_byte > 0 else cpu.eval_rate("F32"),
        prompt_token_s=max(0.0, prompt_token_s),
        prompt_layer_s=max(0.0, prompt_layer_s),
        f32_weights_per_s=1.0 / per_weight if per_weight > 0 else cpu.prompt_rate("F32"),
    )


def _cpu_cost(model: SpeedModel, work: Work) -> float:
    """Seconds a token's ``eval_bytes`` take at the CPU's rates, memory included."""
    memory = model.cpu.memory_time(work.eval_bytes, work.held_bytes)
    return _cost(work.eval_bytes, model.cpu.eval_bytes_per_s) + memory


def _cost(amounts: Mapping[str, float], rates: Mapping[str, float]) -> float:
    return sum(v / rates.get(t, min(rates.values())) for t, v in amounts.items())


def device_rates(
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
    all_cpu_s = _cpu_cost(model, everything)
    half_map = {i: name for i in range(n - half_layers, n)}
    split = device_work(profile, half_map, name)
    cpu_part_s = _cpu_cost(model, split["CPU"]) if "CPU" in split else 0.0
    dev_part_s = _cpu_cost(model, split[name])
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
            memory_cached_bytes=model.cpu.memory_cached_bytes,
        )
    flat = sum(everything.eval_bytes.values()) / max(full_s - fixed - hop, 1e-9)
    return DeviceRates(
        {t: flat for t in model.cpu.eval_bytes_per_s},
        {t: r * scale for t, r in model.cpu.prompt_weights_per_s.items()},
        hop_s=hop,
    )


def fit_worker(
    cpu_runs: list[Run],
    on_worker: list[Run],
    hop_s: float,
    threads: int,
    cpu: DeviceRates | None = None,
) -> DeviceRates:
    """An RPC worker's rates from the type models and the large model measured all on it
    (``on_worker``; pure: unit-tested on made-up runs): fitted as this CPU's are
    (:func:`fit`), with this machine's fixed costs (its thin runs in ``cpu_runs``) and each
    token's hop to the worker and back (``hop_s``) taken off first.

    With this CPU's rates (``cpu``), the passes start from them scaled by how much slower
    the worker ran the same models, and a type with no model of its own on the worker
    (:data:`WORKER_TYPES` leaves some out, for time) takes this CPU's rate at the median of
    the measured types' ratios."""
    thin = [r for r in cpu_runs if r.label.startswith("thin")]
    less_hop = [replace(r, eval_s=max(r.eval_s - hop_s, 1e-9)) for r in on_worker]
    start = None
    if cpu is not None:
        by_label = {r.label: r for r in cpu_runs}
        pairs = [(by_label[r.label], r) for r in less_hop if r.label in by_label]
        slower = statistics.median(w.eval_s / c.eval_s for c, w in pairs) if pairs else 1.0
        start = _scaled(cpu, 1.0 / slower, 1.0 / slower)
    fitted = fit(thin + less_hop, threads, start=start).cpu
    if cpu is not None:
        measured = {r.dominant for r in on_worker if not r.label.startswith("memory")}
        guessed = _scaled(
            cpu,
            statistics.median(fitted.eval_rate(t) / cpu.eval_rate(t) for t in measured),
            statistics.median(fitted.prompt_rate(t) / cpu.prompt_rate(t) for t in measured),
        )
        fitted = replace(
            fitted,
            eval_bytes_per_s=_measured_else(
                measured, fitted.eval_bytes_per_s, guessed.eval_bytes_per_s
            ),
            prompt_weights_per_s=_measured_else(
                measured, fitted.prompt_weights_per_s, guessed.prompt_weights_per_s
            ),
        )
    return replace(fitted, hop_s=hop_s)


def _measured_else(
    measured: set[str], fitted: Mapping[str, float], guessed: Mapping[str, float]
) -> dict[str, float]:
    """``fitted``'s rate for the measured types, ``guessed``'s for the others."""
    return {t: fitted[t] if t in measured else guessed[t] for t in fitted}


def _scaled(rates: DeviceRates, eval_factor: float, prompt_factor: float) -> DeviceRates:
    return replace(
        rates,
        eval_bytes_per_s={t: r * eval_factor for t, r in rates.eval_bytes_per_s.items()},
        prompt_weights_per_s={t: r * prompt_factor for t, r in rates.prompt_weights_per_s.items()},
    )


def contention(
    model: SpeedModel,
    name: str,
    rates: DeviceRates,
    profile: ModelProfile,
    *,
    half_layers: int,
    measured_s: float,
    threads: int,
) -> float:
    """The worker ``name``'s contention (:attr:`DeviceRates.contention`; pure: unit-tested)
    from ``profile`` measured at ``measured_s`` per token with its last ``half_layers`` layers
    and the output on the worker: what the split token took beyond the two parts and the hop,
    per second of the shorter part."""
    layer_device = {i: name for i in range(profile.n_layers - half_layers, profile.n_layers)}

    def seconds(value: float) -> float:
        probe = replace(model, devices={name: replace(rates, contention=value)})
        speed = predict(
            probe, profile, layer_device=layer_device, output_device=name, threads=threads
        )
        return 1.0 / speed.eval_tps

    base = seconds(0.0)
    shorter = seconds(1.0) - base
    if shorter <= 0:
        return 0.0
    return round(min(MAX_CONTENTION, max(0.0, (measured_s - base) / shorter)), 3)


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
