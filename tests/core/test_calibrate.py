"""``mixdesk calibrate``: the fit recovers the coefficients that made the times, and the
command measures real llama.cpp runs and keeps what it fitted."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from mixdesk.core.engine.quantize import FILE_TYPES
from mixdesk.core.loading.calibrate import WORKER_MEMORY, WORKER_TYPES, calibrate
from mixdesk.core.loading.calibrate_fit import (
    MAX_CONTENTION,
    Run,
    contention,
    fit,
    fit_worker,
)
from mixdesk.core.loading.calibrate_models import MEMORY_TYPES, SHAPE, THIN, Shapes
from mixdesk.core.planning.speed import SpeedSource

TOKEN_S, LAYER_S, PROMPT_LAYER_S = 0.5e-3, 40e-6, 20e-6
#: A prompt token's cost whatever the layers (this machine: about 17 us).
PROMPT_TOKEN_S = 17e-6
#: What memory adds per byte for a model larger than the caches (1 / 40 GB/s).
MEMORY_S_PER_BYTE = 1 / 40e9
#: A dequantisation-bound type waits on memory more per byte than a bandwidth-bound one.
MEMORY_BY_TYPE = {"Q2_K": 1 / 12e9, "Q4_K": 1 / 25e9, "Q8_0": MEMORY_S_PER_BYTE}
#: What the type models below read per token (the median): the caches hold that much, so
#: memory costs only the bytes beyond it.
FREE = (17.8e6 + 26.9e6) / 2
#: The large models: label, type, bytes per token.
LARGE = (("memory-Q2_K", "Q2_K", 50e6), ("memory-Q4_K_M", "Q4_K", 85e6), ("memory", "Q8_0", 150e6))
EVAL = {"Q2_K": 3e9, "Q4_K": 9e9, "Q6_K": 11e9, "Q8_0": 14e9, "F32": 12e9}
PROMPT = {"Q2_K": 20e9, "Q4_K": 30e9, "Q6_K": 25e9, "Q8_0": 40e9, "F32": 15e9}


def _run(label: str, layers: int, eval_bytes: dict[str, float]) -> Run:
    weights = {t: b / 0.6 for t, b in eval_bytes.items()}
    eval_s = TOKEN_S + layers * LAYER_S + sum(b / EVAL[t] for t, b in eval_bytes.items())
    prompt_s = PROMPT_TOKEN_S + layers * PROMPT_LAYER_S
    prompt_s += sum(w / PROMPT[t] for t, w in weights.items())
    return Run(label, layers, eval_bytes, weights, eval_s, prompt_s)


def test_the_fit_recovers_the_coefficients() -> None:
    runs = [
        _run("thin-2", 2, {"F32": 0.5e6}),
        _run("thin-24", 24, {"F32": 6e6}),
        _run("thin-wide", 6, {"F32": 23e6}),
        _run("Q2_K", 6, {"Q2_K": 7e6, "Q6_K": 0.2e6, "F32": 0.1e6}),
        _run("Q4_K_M", 6, {"Q4_K": 15e6, "Q6_K": 2.7e6, "F32": 0.1e6}),
        _run("Q6_K", 6, {"Q6_K": 26e6, "Q8_0": 0.8e6, "F32": 0.1e6}),
        _run("Q8_0", 6, {"Q8_0": 34e6, "F32": 0.1e6}),
    ]
    for label, kind, nbytes in LARGE:
        large = _run(label, 8, {kind: nbytes, "F32": 0.5e6})
        memory_s = (nbytes + 0.5e6 - FREE) * MEMORY_BY_TYPE[kind]
        runs.append(replace(large, eval_s=large.eval_s + memory_s))
    model = fit(runs, threads=2)
    assert model.cpu.memory_s_per_byte == pytest.approx(MEMORY_S_PER_BYTE, rel=0.05)
    assert model.cpu.memory_cached_bytes == pytest.approx(FREE)
    # a model within the caches pays no memory time; a larger one for its bytes beyond them
    assert model.cpu.memory_time({"Q4_K": 15e6}) == 0.0
    assert model.cpu.memory_time({"Q4_K": 4 * FREE}) == pytest.approx(
        3 * FREE * MEMORY_BY_TYPE["Q4_K"], rel=0.05
    )
    for kind, memory_s in MEMORY_BY_TYPE.items():  # each large model's own type
        assert model.cpu.memory_cost(kind) == pytest.approx(memory_s, rel=0.05), kind
    # Q3_K (3.44 bits) lies between Q2_K (2.63) and Q4_K (4.5); F16 beyond Q8_0 takes Q8_0's
    between = MEMORY_BY_TYPE["Q2_K"] + (MEMORY_BY_TYPE["Q4_K"] - MEMORY_BY_TYPE["Q2_K"]) * (
        (3.4375 - 2.625) / (4.5 - 2.625)
    )
    assert model.cpu.memory_cost("Q3_K") == pytest.approx(between, rel=0.05)
    assert model.cpu.memory_cost("F16") == pytest.approx(MEMORY_S_PER_BYTE, rel=0.05)
    assert model.source is SpeedSource.MEASURED and model.cpu_threads == 2
    assert model.token_s == pytest.approx(TOKEN_S, rel=0.05)
    assert model.layer_s == pytest.approx(LAYER_S, rel=0.05)
    assert model.prompt_token_s == pytest.approx(PROMPT_TOKEN_S, rel=0.05)
    assert model.prompt_layer_s == pytest.approx(PROMPT_LAYER_S, rel=0.05)
    for kind in ("Q2_K", "Q4_K", "Q6_K", "Q8_0"):
        assert model.cpu.eval_rate(kind) == pytest.approx(EVAL[kind], rel=0.05), kind
        assert model.cpu.prompt_rate(kind) == pytest.approx(PROMPT[kind], rel=0.10), kind


#: Rates of a fast CPU (this machine's, measured): far above the defaults the fit starts from.
FAST = {"Q2_K": 17e9, "Q3_K": 12.8e9, "Q4_K": 26e9, "Q5_K": 21e9, "Q6_K": 24e9, "Q8_0": 26e9}


def test_the_fit_follows_a_chain_of_types_to_its_end() -> None:
    """The type models as llama.cpp quantises them: Q2_K's holds Q3_K, Q3_K_M's Q4_K,
    Q4_K_M's Q6_K. Starting from default rates, each link settles only after the next one has;
    a fixed three passes left Q2_K at its default (2.1 GB/s, eight times too slow)."""
    rates = {**FAST, "F32": 12e9}

    def run(label: str, eval_bytes: dict[str, float]) -> Run:
        eval_s = TOKEN_S + 6 * LAYER_S + sum(b / rates[t] for t, b in eval_bytes.items())
        weights = {t: b / 0.6 for t, b in eval_bytes.items()}
        prompt_s = 6 * PROMPT_LAYER_S + sum(w / 30e9 for w in weights.values())
        return Run(label, 6, eval_bytes, weights, eval_s, prompt_s)

    common = {"Q8_0": 0.84e6, "F32": 0.12e6}
    runs = [
        _run("thin-2", 2, {"F32": 0.5e6}),
        _run("thin-24", 24, {"F32": 6e6}),
        _run("thin-wide", 6, {"F32": 23e6}),
        run("Q2_K", {"Q2_K": 6.71e6, "Q3_K": 4.06e6, "Q5_K": 1.08e6, **common}),
        run("Q3_K_M", {"Q3_K": 8.79e6, "Q4_K": 5.31e6, "Q5_K": 1.08e6, **common}),
        run("Q4_K_M", {"Q4_K": 15.04e6, "Q6_K": 2.74e6, "Q5_K": 1.08e6, **common}),
        run("Q5_K_M", {"Q5_K": 19.46e6, "Q6_K": 2.74e6, **common}),
        run("Q6_K", {"Q6_K": 25.97e6, **common}),
        run("Q8_0", {"Q8_0": 34.47e6, "F32": 0.12e6}),
    ]
    model = fit(runs, threads=2)
    for kind, rate in FAST.items():
        assert model.cpu.eval_rate(kind) == pytest.approx(rate, rel=0.05), kind


def _runs_at(
    rates: dict[str, float], prompt: dict[str, float], memory_s: float, hop_s: float = 0.0
) -> list[Run]:
    """The type models and the large model as a device with these rates would run them."""
    shapes = {
        "Q2_K": (6, {"Q2_K": 7e6, "Q6_K": 0.2e6, "F32": 0.1e6}),
        "Q4_K_M": (6, {"Q4_K": 15e6, "Q6_K": 2.7e6, "F32": 0.1e6}),
        "Q6_K": (6, {"Q6_K": 26e6, "Q8_0": 0.8e6, "F32": 0.1e6}),
        "Q8_0": (6, {"Q8_0": 34e6, "F32": 0.1e6}),
        "memory": (8, {"Q8_0": 150e6, "F32": 0.5e6}),
    }
    runs = []
    for label, (layers, eval_bytes) in shapes.items():
        weights = {t: b / 0.6 for t, b in eval_bytes.items()}
        eval_s = TOKEN_S + layers * LAYER_S + hop_s
        eval_s += sum(b / rates[t] for t, b in eval_bytes.items())
        if label == "memory":
            eval_s += (sum(eval_bytes.values()) - FREE) * memory_s
        prompt_s = layers * PROMPT_LAYER_S + sum(w / prompt[t] for t, w in weights.items())
        runs.append(Run(label, layers, eval_bytes, weights, eval_s, prompt_s))
    return runs


def test_a_worker_is_fitted_type_by_type() -> None:
    """An RPC worker with one thread halves the dequantisation-bound types but not the
    memory-bound ones: one scale against this CPU (fitted on the large Q8_0 model) would
    promise its Q4_K 40% too fast (the loopback worker's miss in speed_truth); fitted type by
    type, each rate, its memory cost and the hop come back."""
    thin = [
        _run("thin-2", 2, {"F32": 0.5e6}),
        _run("thin-24", 24, {"F32": 6e6}),
        _run("thin-wide", 6, {"F32": 23e6}),
    ]
    worker = {"Q2_K": 1.5e9, "Q4_K": 4.5e9, "Q6_K": 5.5e9, "Q8_0": 10e9, "F32": 12e9}
    worker_prompt = {t: r / 2 for t, r in PROMPT.items()}
    hop_s, memory_s = 1.5e-3, 1 / 30e9
    on_worker = _runs_at(worker, worker_prompt, memory_s, hop_s)
    rates = fit_worker(thin, on_worker, hop_s, threads=2)
    assert rates.hop_s == hop_s
    assert rates.memory_s_per_byte == pytest.approx(memory_s, rel=0.05)
    for kind in ("Q2_K", "Q4_K", "Q6_K", "Q8_0"):
        assert rates.eval_rate(kind) == pytest.approx(worker[kind], rel=0.05), kind
        assert rates.prompt_rate(kind) == pytest.approx(worker_prompt[kind], rel=0.10), kind


def test_a_type_not_measured_on_a_worker_takes_the_cpus_rate_at_the_workers_ratio() -> None:
    """To save time a worker measures only some type models; the other types take this CPU's
    rates at the median ratio of the measured ones (not the defaults, which are for another
    machine)."""
    thin = [
        _run("thin-2", 2, {"F32": 0.5e6}),
        _run("thin-24", 24, {"F32": 6e6}),
        _run("thin-wide", 6, {"F32": 23e6}),
    ]
    cpu_runs = [*thin, *_runs_at(EVAL, PROMPT, 0.0, 0.0)]
    cpu = fit(cpu_runs, threads=2).cpu
    half = {t: r / 2 for t, r in EVAL.items()}
    on_worker = [r for r in _runs_at(half, PROMPT, 0.0, 1e-3) if r.label != "Q6_K"]
    rates = fit_worker(cpu_runs, on_worker, 1e-3, threads=2, cpu=cpu)
    assert rates.eval_rate("Q4_K") == pytest.approx(EVAL["Q4_K"] / 2, rel=0.05)
    assert rates.eval_rate("Q6_K") == pytest.approx(cpu.eval_rate("Q6_K") / 2, rel=0.05)
    assert rates.eval_rate("Q5_K") == pytest.approx(cpu.eval_rate("Q5_K") / 2, rel=0.05)


def test_contention_is_what_a_split_token_took_beyond_its_parts(tmp_path: Path) -> None:
    """A worker on this machine shares its cores with the app: a token split between them
    took longer than the two parts and the hop (the loopback rows of speed_truth); the
    measured split gives the extra per second of the shorter part, and the plan adds it."""
    from mixdesk.core.gguf.profile import profile_local
    from mixdesk.core.planning.speed import predict
    from mixdesk.core.planning.speed_defaults import default_speed_model
    from tests.helpers import model_factory as mf

    profile = profile_local(mf.mixtral_header_file(tmp_path, "Q4_K_M", legacy=True))
    base = default_speed_model([], 2)
    worker = replace(base.cpu, hop_s=1e-3)
    name = "RPC0[127.0.0.1:50052]"
    half = profile.n_layers // 2
    layers = {i: name for i in range(profile.n_layers - half, profile.n_layers)}

    def seconds(value: float) -> float:
        model = replace(base, devices={name: replace(worker, contention=value)})
        speed = predict(model, profile, layer_device=layers, output_device=name, threads=2)
        return 1.0 / speed.eval_tps

    measured = seconds(0.8)
    assert measured > seconds(0.0)  # the plan pays it
    found = contention(
        base, name, worker, profile, half_layers=half, measured_s=measured, threads=2
    )
    assert found == pytest.approx(0.8, abs=0.03)  # tok/s are rounded to 0.01
    # a worker elsewhere: a split as fast as its parts has none
    elsewhere = contention(
        base, name, worker, profile, half_layers=half, measured_s=seconds(0.0), threads=2
    )
    assert elsewhere == pytest.approx(0.0, abs=0.03)


THREADS = ("--threads", "2", "--json")

#: Small measuring models: the same code path, seconds instead of a minute to make.
SMALL = Shapes(
    main=replace(SHAPE, n_embd=128, n_ff=256, n_layers=2, n_head=4),
    thin={
        "thin-2": replace(THIN, n_layers=2),
        "thin-12": replace(THIN, n_layers=12),
        "thin-wide": replace(THIN, n_embd=128, n_ff=256, n_head=4, n_layers=3),
    },
    check=replace(SHAPE, n_embd=192, n_ff=384, n_layers=2, n_head=4),
    memory=replace(SHAPE, n_embd=256, n_ff=512, n_layers=2, n_head=4),
)


@pytest.mark.slow
def test_calibrate_measures_and_the_plan_says_measured(
    models: dict[str, Path], tmp_path: Path
) -> None:
    """Calibration on real llama.cpp runs (small models): the coefficients are kept, `mixdesk
    plan` then says its speed is measured on this machine with an expected error, and the
    window's Hardware tab says so too."""
    from mixdesk.core.engine import Engine
    from mixdesk.core.machine.hardware import GIB, HardwareInfo
    from mixdesk.core.planning.calibration import CalibrationStore

    def plan() -> dict[str, object]:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "mixdesk",
                "plan",
                str(models["q4_k_m"]),
                "--ngl",
                "0",
                *THREADS,
            ],
            capture_output=True,
            text=True,
            env=dict(os.environ),
            check=False,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        result: dict[str, object] = json.loads(done.stdout)
        return result

    assert plan()["speed_source"] == "estimate"
    cpu = HardwareInfo(4 * GIB, 4 * GIB, physical_cores=2, logical_cores=2)
    with Engine(log_dir=tmp_path) as engine:
        # small models are fixed-cost bound: their check is not the full-size one's judge
        result = calibrate(
            engine, cpu, tmp_path / "models", threads=2, shapes=SMALL, max_miss=float("inf")
        )
    assert {r.label for r in result.runs} == {*SMALL.thin, *FILE_TYPES, *MEMORY_TYPES}
    assert all(r.eval_s > 0 and r.prompt_s > 0 for r in result.runs)
    assert result.check_measured_tps > 0 and result.model.error >= 0.05
    CalibrationStore.default().record_speed_model(result.model)
    after = plan()
    assert after["speed_source"] == "measured"
    assert float(str(after["speed_error"])) == result.model.error


@pytest.mark.slow
def test_calibrate_measures_a_worker_type_by_type(tmp_path: Path) -> None:
    """With a loopback `mixdesk worker` (llama.cpp's RPC server, one thread), calibration
    measures every type model all on it and keeps the rates fitted on them, a hop and a
    memory cost."""
    from mixdesk.core.engine import Engine
    from mixdesk.core.planning.placement import buffer_name
    from tests.helpers.devices import device_hardware
    from tests.helpers.mixdesk_workers import start_worker

    worker = start_worker(tmp_path, "--no-cache")
    try:
        hardware = device_hardware(worker)
        with Engine(log_dir=tmp_path) as engine:
            result = calibrate(
                engine, hardware, tmp_path / "models", threads=2, shapes=SMALL, max_miss=math.inf
            )
    finally:
        worker.kill()
    name = buffer_name(hardware.gpus[0])
    assert [r.label for r in result.device_runs[name]] == [*WORKER_TYPES, WORKER_MEMORY]
    assert all(r.eval_s > 0 and r.prompt_s > 0 for r in result.device_runs[name])
    rates = result.model.devices[name]
    assert rates.hop_s >= 0 and rates.memory_s_per_byte >= 0
    assert 0 <= rates.contention <= MAX_CONTENTION
    # its rates are fitted on its own runs (type by type: tested on made-up runs above; these
    # small models are bound by the fixed costs, so their rates say little)
    fitted = fit_worker(result.runs, result.device_runs[name], rates.hop_s, 2, cpu=result.model.cpu)
    assert rates == replace(fitted, contention=rates.contention)


def test_a_busy_machine_is_not_kept() -> None:
    """A fit that misses its own check by more than half is refused with one sentence (the
    speeds stay estimates rather than wrong figures); a close one sets the expected error."""
    from mixdesk.core.loading.calibrate_fit import expected_error
    from mixdesk.errors import CalibrationNoisyError, user_message

    assert expected_error(100.0, 98.0) == 0.05
    assert expected_error(100.0, 80.0) == 0.5
    with pytest.raises(CalibrationNoisyError) as caught:
        expected_error(12.29, 464.44)  # a fit made while other programs ran
    assert "measure again" in user_message(caught.value)


def test_memory_is_paid_on_the_weights_held_not_on_a_tokens_bytes() -> None:
    """A mixture-of-experts token reads a quarter of the experts, but the next token picks
    others: the working set is what the device holds. A device holding four times what the
    caches keep misses them for three quarters of every token's bytes, however few a token
    reads (a loopback worker holding half of the mid model read 20 MB a token, under the
    type models' 23 MB, and was promised no memory time at all)."""
    from mixdesk.core.planning.speed import DeviceRates

    rates = DeviceRates({"Q4_K": 20e9}, {"Q4_K": 50e9}, memory_s_per_byte=1e-10)
    rates = replace(rates, memory_cached_bytes=50e6)
    assert rates.memory_time({"Q4_K": 20e6}, held_bytes=200e6) == pytest.approx(0.75 * 20e6 * 1e-10)
    assert rates.memory_time({"Q4_K": 20e6}, held_bytes=40e6) == 0.0  # within the caches
    assert rates.memory_time({"Q4_K": 100e6}) == pytest.approx(0.5 * 100e6 * 1e-10)
