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
from mixdesk.core.loading.calibrate import Run, calibrate, fit, fit_worker
from mixdesk.core.loading.calibrate_models import MEMORY_TYPES, SHAPE, THIN, Shapes
from mixdesk.core.planning.speed import SpeedSource

TOKEN_S, LAYER_S, PROMPT_LAYER_S = 0.5e-3, 40e-6, 20e-6
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
    prompt_s = layers * PROMPT_LAYER_S + sum(w / PROMPT[t] for t, w in weights.items())
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
    assert model.cpu.memory_free_bytes == pytest.approx(FREE)
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
    for kind in ("Q2_K", "Q4_K", "Q6_K", "Q8_0"):
        assert model.cpu.eval_rate(kind) == pytest.approx(EVAL[kind], rel=0.05), kind
        assert model.cpu.prompt_rate(kind) == pytest.approx(PROMPT[kind], rel=0.10), kind


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
    assert [r.label for r in result.device_runs[name]] == [*FILE_TYPES, "memory"]
    assert all(r.eval_s > 0 and r.prompt_s > 0 for r in result.device_runs[name])
    rates = result.model.devices[name]
    assert rates.hop_s >= 0 and rates.memory_s_per_byte >= 0
    # its rates are fitted on its own runs (type by type: tested on made-up runs above; these
    # small models are bound by the fixed costs, so their rates say little)
    assert rates == fit_worker(result.runs, result.device_runs[name], rates.hop_s, threads=2)


def test_a_busy_machine_is_not_kept() -> None:
    """A fit that misses its own check by more than half is refused with one sentence (the
    speeds stay estimates rather than wrong figures); a close one sets the expected error."""
    from mixdesk.core.loading.calibrate import expected_error
    from mixdesk.errors import CalibrationNoisyError, user_message

    assert expected_error(100.0, 98.0) == 0.05
    assert expected_error(100.0, 80.0) == 0.5
    with pytest.raises(CalibrationNoisyError) as caught:
        expected_error(12.29, 464.44)  # a fit made while other programs ran
    assert "measure again" in user_message(caught.value)
