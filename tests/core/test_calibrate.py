"""``mixdesk calibrate``: the fit recovers the coefficients that made the times, and the
command measures real llama.cpp runs and keeps what it fitted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mixdesk.core.loading.calibrate import Run, fit
from mixdesk.core.planning.speed import SpeedSource

TOKEN_S, LAYER_S, PROMPT_LAYER_S = 0.5e-3, 40e-6, 20e-6
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
    model = fit(runs, threads=2)
    assert model.source is SpeedSource.MEASURED and model.cpu_threads == 2
    assert model.token_s == pytest.approx(TOKEN_S, rel=0.05)
    assert model.layer_s == pytest.approx(LAYER_S, rel=0.05)
    for kind in ("Q2_K", "Q4_K", "Q6_K", "Q8_0"):
        assert model.cpu.eval_rate(kind) == pytest.approx(EVAL[kind], rel=0.05), kind
        assert model.cpu.prompt_rate(kind) == pytest.approx(PROMPT[kind], rel=0.10), kind


@pytest.mark.slow
def test_calibrate_measures_and_the_plan_says_measured(models: dict[str, Path]) -> None:
    """The whole command, on real llama.cpp runs: the coefficients are kept, and `mixdesk
    plan` then says its speed is measured on this machine, with an expected error."""
    env = dict(os.environ)

    def mixdesk(*args: str) -> dict[str, object]:
        done = subprocess.run(
            [sys.executable, "-m", "mixdesk", *args, "--json"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
        result: dict[str, object] = json.loads(done.stdout)
        return result

    before = mixdesk("plan", str(models["q4_k_m"]), "--ngl", "0")
    assert before["speed_source"] == "estimate"
    result = mixdesk("calibrate", "--threads", "2")
    assert isinstance(result["seconds"], float)
    assert float(str(result["check_measured_tps"])) > 0
    after = mixdesk("plan", str(models["q4_k_m"]), "--ngl", "0", "--threads", "2")
    assert after["speed_source"] == "measured"
    assert 0 < float(str(after["speed_error"])) < 1
