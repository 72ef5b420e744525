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
the cache folder (about a minute, once); the measuring takes about 30 s on two cores with a
loopback worker, 15 s without. The fitting is :mod:`.calibrate_fit`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from mixdesk.core.chat.template import ChatMessage
from mixdesk.core.engine.client import Engine
from mixdesk.core.engine.protocol import SamplingParams
from mixdesk.core.engine.quantize import FILE_TYPES
from mixdesk.core.gguf.profile import ModelProfile, profile_local
from mixdesk.core.loading.calibrate_fit import (
    MAX_CHECK_MISS,
    Run,
    contention,
    device_rates,
    expected_error,
    fit,
    fit_worker,
)
from mixdesk.core.loading.calibrate_models import (
    MEMORY_TYPES,
    Progress,
    Shapes,
    calibration_models,
)
from mixdesk.core.loading.choices import LoadChoices
from mixdesk.core.loading.model import resolve_file
from mixdesk.core.loading.service import plan_load
from mixdesk.core.machine.hardware import HardwareInfo
from mixdesk.core.planning.calibration import Calibration
from mixdesk.core.planning.placement import buffer_name, offload_devices
from mixdesk.core.planning.speed import (
    DeviceRates,
    SpeedModel,
    device_work,
    predict,
)

log = logging.getLogger(__name__)


#: The types measured on an RPC worker (each worker costs the time of its models): the
#: others take this CPU's rates at the worker's median ratio to them.
WORKER_TYPES = ("Q2_K", "Q4_K_M", "Q6_K", "Q8_0")
#: The large model measured on a worker (what memory adds there).
WORKER_MEMORY = "memory-Q4_K_M"
#: Words of the prompt before a large model's generation (its prompt speed is not used: a
#: short one saves seconds).
SHORT_PROMPT_WORDS = 20
#: The type model measured split between this CPU and a worker (its last half on the worker).
SPLIT_MODEL = "Q4_K_M"
#: Tokens generated per measurement (end-of-text ignored), and rounds per model.
EVAL_TOKENS = 48
ROUNDS = 2
#: Words at the end of the measuring prompt that differ between rounds.
TAIL_WORDS = 20
#: Words in the measuring prompt: about 512 tokens with the template's (3 tokens a word).
PROMPT_WORDS = 150
_WORDS = ("the", "of", "and", "to", "in", "is")


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
    #: Seconds the measuring took, and making the models first (0 when they were made).
    seconds: float = 0.0
    models_seconds: float = 0.0


def _cpu(hardware: HardwareInfo) -> HardwareInfo:
    return replace(hardware, gpus=[])


def measuring_prompt(round_no: int = 0, *, tail: int = 0) -> str:
    """The prompt speeds are measured with: about 512 tokens of the generated vocabulary
    (``round_no``: another prompt, every word moved; ``tail``: the same prompt but for its
    last :data:`TAIL_WORDS` words)."""
    words = [_WORDS[(i + round_no) % len(_WORDS)] for i in range(PROMPT_WORDS)]
    for i in range(PROMPT_WORDS - TAIL_WORDS, PROMPT_WORDS):
        words[i] = _WORDS[(i + round_no + tail) % len(_WORDS)]
    return " ".join(words)


def _measure(
    engine: Engine,
    path: Path,
    hardware: HardwareInfo,
    choices: LoadChoices,
    *,
    short: bool = False,
) -> tuple[float, float]:
    """(seconds per generated token, seconds per prompt token) of one load: a prompt of about
    512 tokens, then :data:`EVAL_TOKENS` tokens generated after it, as every answer is; then
    the same prompt with its last words changed (only they are read again, the rest stays in
    the KV cache) and the generation again, at the same depth: the faster of the two (another
    program can only make a round slower)."""
    setup = plan_load(resolve_file(path), hardware, choices, calibration=Calibration())
    engine.load(setup.config)
    # Sampled as answers are (not greedy): on a model of random weights greedy decoding
    # repeats a few tokens, so the same few experts stay in the caches and a token reads far
    # less memory than an answer's do (a loopback worker's rate came out 1.2-1.4x too fast).
    sampling = SamplingParams(max_tokens=EVAL_TOKENS, ignore_eos=True, seed=1)
    eval_s = prompt_s = math.inf
    for round_no in range(ROUNDS):
        prompt = measuring_prompt(tail=round_no)
        if short:  # a large model: its generation only (the depth moves its time by ~1%)
            prompt = " ".join(prompt.split()[-SHORT_PROMPT_WORDS:])
        stats = engine.chat([ChatMessage("user", prompt)], sampling).wait().stats
        if stats.eval_tps <= 0 or stats.prompt_tps <= 0:
            raise RuntimeError(f"no speed measured for {path.name}")
        eval_s = min(eval_s, 1.0 / stats.eval_tps)
        if round_no == 0:
            prompt_s = 1.0 / stats.prompt_tps
    return eval_s, prompt_s


def _run(label: str, profile: ModelProfile, eval_s: float, prompt_s: float) -> Run:
    work = device_work(profile, {}, "CPU")["CPU"]
    return Run(
        label,
        profile.n_layers,
        work.eval_bytes,
        work.prompt_weights,
        eval_s,
        prompt_s,
        held_bytes=float(work.held_bytes),
    )


def _measure_worker(
    engine: Engine,
    paths: Mapping[str, Path],
    hardware: HardwareInfo,
    choices: LoadChoices,
    *,
    model: SpeedModel,
    cpu_runs: list[Run],
    name: str,
) -> tuple[DeviceRates, list[Run]]:
    """An RPC worker (the one offload device of ``hardware``, llama.cpp's ``name``) measured
    like this CPU: its type models and a large model all on it, the hop, and a model split
    between the two; its rates and its runs."""
    threads = model.cpu_threads
    all_on = replace(choices, n_gpu_layers=-1)
    on_worker = [
        _run(label, profile_local(paths[label]), *_measure(engine, paths[label], hardware, all_on))
        for label in WORKER_TYPES
    ]
    large = profile_local(paths[WORKER_MEMORY])
    large_s = _measure(engine, paths[WORKER_MEMORY], hardware, all_on, short=True)
    on_worker.append(_run(WORKER_MEMORY, large, *large_s))
    # the hop: a thin model (fixed costs, next to no weights) on the worker against the same
    # on this CPU (a large model all and half on it would give it as the small difference of
    # large times: milliseconds off on a loopback worker)
    thin = min((r for r in cpu_runs if r.label.startswith("thin")), key=lambda r: r.n_layers)
    thin_s, _ = _measure(engine, paths[thin.label], hardware, all_on)
    rates = fit_worker(cpu_runs, on_worker, max(0.0, thin_s - thin.eval_s), threads, model.cpu)
    # a token that takes turns between this CPU and the worker: what the two parts cost each
    # other beyond their sum (a worker sharing this machine's cores)
    split = profile_local(paths[SPLIT_MODEL])
    half = split.n_layers // 2
    split_s, _ = _measure(
        engine, paths[SPLIT_MODEL], hardware, replace(choices, n_gpu_layers=half + 1)
    )
    found = contention(
        model, name, rates, split, half_layers=half, measured_s=split_s, threads=threads
    )
    return replace(rates, contention=found), on_worker


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
    made = time.perf_counter()
    choices = LoadChoices(n_gpu_layers=0, n_ctx=1024, n_threads=threads)
    labels = [*shapes.thin, *FILE_TYPES, *MEMORY_TYPES]
    runs = []
    for i, label in enumerate(labels):
        if on_progress is not None:
            on_progress(f"measuring {label}", i / (len(labels) + 2))
        short = label in MEMORY_TYPES
        eval_s, prompt_s = _measure(engine, paths[label], _cpu(hardware), choices, short=short)
        runs.append(_run(label, profile_local(paths[label]), eval_s, prompt_s))
    model = fit(runs, threads)
    devices = {}
    device_runs: dict[str, list[Run]] = {}
    for gpu in offload_devices(hardware):
        name = buffer_name(gpu)
        only = replace(hardware, gpus=[gpu])
        if on_progress is not None:
            on_progress(f"measuring {gpu.name}", len(labels) / (len(labels) + 2))
        all_on = replace(choices, n_gpu_layers=-1)
        if gpu.backend != "rpc":
            shape = profile_local(paths["memory"])
            full_s, _ = _measure(engine, paths["memory"], only, all_on)
            half = shape.n_layers // 2
            half_choices = replace(choices, n_gpu_layers=half + 1)
            half_s, _ = _measure(engine, paths["memory"], only, half_choices)
            rates = device_rates(
                model, shape, gpu, name, full_s=full_s, half_s=half_s, half_layers=half
            )
        else:
            rates, device_runs[name] = _measure_worker(
                engine, paths, only, choices, model=model, cpu_runs=runs, name=name
            )
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
        seconds=round(time.perf_counter() - made, 1),
        models_seconds=round(made - started, 1),
    )
