"""The benchmarks run, print their figures and judge their goals (exit status 1 on a miss).

Here they run small (one round, few tokens), where the figures mean little: the tests check
that every goal is judged and that the exit status follows the verdicts; an impossible goal
(``--goal KEY=VALUE``) shows that a miss fails the run.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from benchmarks.goals import MISSED, OK, WITHIN_NOISE, Goal, judge
from tests.helpers.benchmarks import run_benchmark

ROOT = Path(__file__).resolve().parent.parent


def test_engine_speed_benchmark_judges_its_ratios() -> None:
    proc, result = run_benchmark(
        "engine_speed.py",
        *["--size", "tiny", "--rounds", "1", "--tokens", "16", "--llama-bench", "off"],
    )
    assert result["rounds"] == 1
    assert result["reference_eval_tps_median"] > 0
    assert result["engine_eval_tps_median"] > 0
    assert result["ipc_cpu_us_per_message"] > 0
    assert {g["key"] for g in result["goals"]} == {"eval_ratio", "delivered_ratio"}
    assert result["goals"][0]["value"] == result["eval_ratio_median"] > 0
    # without llama-bench its goal is skipped, in one sentence (tests/test_llama_bench.py)
    assert result["llama_bench_skipped"] in proc.stderr
    assert result["llama_bench_skipped"] == (
        "The comparison with llama-bench is off (--llama-bench off)."
    )


def test_download_speed_benchmark_judges_its_ratio() -> None:
    _, result = run_benchmark("download_speed.py", "--size-mb", "8", "--rounds", "1")
    (goal,) = result["goals"]
    assert (goal["key"], goal["goal"]) == ("ratio", 0.9)
    assert goal["value"] == result["ratio_median"] > 0


def test_convert_benchmark_fails_when_its_memory_goal_is_missed() -> None:
    proc, result = run_benchmark(
        "convert_legacy.py", "--small", "--rounds", "1", "--goal", "peak_rss_mb=1"
    )
    assert proc.returncode == 1
    assert 0 < result["convert_peak_rss_mb"] < 600
    assert f"[MISSED] converter peak RSS: {result['convert_peak_rss_mb']} MB (goal <= 1 MB)" in (
        proc.stderr
    )


def test_ui_responsiveness_benchmark_fails_when_a_goal_is_missed() -> None:
    proc, result = run_benchmark(
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


def test_kv_resume_benchmark_judges_resumed_answers() -> None:
    """Small, where a resumed prompt saves little: the figures are judged, the answers equal."""
    _, result = run_benchmark("kv_resume.py", "--size", "tiny", "--rounds", "1")
    goals = {g["key"]: g for g in result["goals"]}
    assert set(goals) == {"memory_ratio", "disk_ratio", "same_answer", "save_ms"}
    assert goals["same_answer"]["verdict"] == OK
    assert goals["memory_ratio"]["value"] == result["memory_ratio_median"] > 0
    assert goals["save_ms"]["value"] == result["save_gap_ms_max"] >= 0
    (turns,) = result["rounds_detail"]
    assert [turns[s]["reused_from"] for s in ("memory", "disk")] == ["memory", "disk"]
    assert turns["disk"]["reused"] == turns["disk"]["prompt_tokens"] - 1
