"""The benchmarks run, print their figures and judge their goals (exit status 1 on a miss).

Here they run small (one round, few tokens), where the figures mean little: the tests check
that every goal is judged and that the exit status follows the verdicts; an impossible goal
(``--goal KEY=VALUE``) shows that a miss fails the run.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.goals import MISSED, OK, WITHIN_NOISE, Goal, judge

ROOT = Path(__file__).resolve().parent.parent


def _bench(script: str, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    verdicts = [g["verdict"] for g in result["goals"]]
    assert verdicts and set(verdicts) <= {OK, WITHIN_NOISE, MISSED}
    assert proc.returncode == (1 if MISSED in verdicts else 0), proc.stderr[-2000:]
    for goal in result["goals"]:  # each goal's line, with its figure, on stderr
        assert f"[{goal['verdict']}] {goal['what']}: {goal['value']:g}" in proc.stderr
    return proc, result


def test_engine_speed_benchmark_judges_its_ratios() -> None:
    _, result = _bench("engine_speed.py", "--size", "tiny", "--rounds", "1", "--tokens", "16")
    assert result["rounds"] == 1
    assert result["reference_eval_tps_median"] > 0
    assert result["engine_eval_tps_median"] > 0
    assert result["ipc_cpu_us_per_message"] > 0
    assert {g["key"] for g in result["goals"]} == {"eval_ratio", "delivered_ratio"}
    assert result["goals"][0]["value"] == result["eval_ratio_median"] > 0


def test_download_speed_benchmark_judges_its_ratio() -> None:
    _, result = _bench("download_speed.py", "--size-mb", "8", "--rounds", "1")
    (goal,) = result["goals"]
    assert (goal["key"], goal["goal"]) == ("ratio", 0.9)
    assert goal["value"] == result["ratio_median"] > 0


def test_convert_benchmark_fails_when_its_memory_goal_is_missed() -> None:
    proc, result = _bench(
        "convert_legacy.py", "--small", "--rounds", "1", "--goal", "peak_rss_mb=1"
    )
    assert proc.returncode == 1
    assert 0 < result["convert_peak_rss_mb"] < 600
    assert f"[MISSED] converter peak RSS: {result['convert_peak_rss_mb']} MB (goal <= 1 MB)" in (
        proc.stderr
    )


def test_ui_responsiveness_benchmark_fails_when_a_goal_is_missed() -> None:
    proc, result = _bench(
        "ui_responsiveness.py", "--rounds", "1", "--tokens", "200", "--goal", "stall_ms=-1"
    )
    assert proc.returncode == 1
    goals = {g["key"]: g for g in result["goals"]}
    assert set(goals) == {"stall_ms", "cold_start_s", "ratio"}
    assert goals["stall_ms"]["verdict"] == MISSED
    assert goals["stall_ms"]["value"] == result["longest_stall_ms"] >= 0
    assert goals["cold_start_s"]["value"] == result["cold_start_s_median"] > 0
    assert goals["ratio"]["value"] == result["ratio_median"] > 0


@pytest.mark.parametrize(
    ("value", "verdict"), [(0.97, OK), (0.95, OK), (0.93, WITHIN_NOISE), (0.91, MISSED)]
)
def test_a_ratio_goal_tolerates_only_the_noise(value: float, verdict: str) -> None:
    goal = Goal("ratio", "ratio", value, 0.95, True, noise=0.03)
    assert goal.verdict == verdict
    out = io.StringIO()
    rows, status = judge([goal], [], out=out)
    assert (rows[0]["verdict"], status) == (verdict, int(verdict == MISSED))
    assert out.getvalue() == f"[{verdict}] ratio: {value:g} (goal >= 0.95, fails below 0.92)\n"


def test_a_limit_goal_fails_past_it() -> None:
    assert Goal("stall_ms", "stall", 49, 50, False).verdict == OK
    assert Goal("stall_ms", "stall", 51, 50, False).verdict == MISSED
