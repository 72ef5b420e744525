"""The benchmarks still run (their speed goals are measured by running them, not here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_engine_speed_benchmark_runs_on_the_tiny_model() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "engine_speed.py"),
            "--size",
            "tiny",
            "--rounds",
            "1",
            "--tokens",
            "16",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["rounds"] == 1
    assert result["reference_eval_tps_median"] > 0
    assert result["engine_eval_tps_median"] > 0
    assert result["eval_ratio_median"] > 0
    assert result["ipc_cpu_us_per_message"] > 0


def _bench(*args: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, *args, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def test_download_speed_benchmark_runs() -> None:
    result = _bench(
        str(ROOT / "benchmarks" / "download_speed.py"), "--size-mb", "8", "--rounds", "1"
    )
    assert isinstance(result["ratio_median"], float)
    assert result["ratio_median"] > 0


def test_convert_benchmark_runs() -> None:
    result = _bench(str(ROOT / "benchmarks" / "convert_legacy.py"), "--small", "--rounds", "1")
    assert isinstance(result["convert_peak_rss_mb"], int)
    assert 0 < result["convert_peak_rss_mb"] < 600


def test_ui_responsiveness_benchmark_runs() -> None:
    result = _bench(
        str(ROOT / "benchmarks" / "ui_responsiveness.py"), "--rounds", "1", "--tokens", "200"
    )
    assert isinstance(result["longest_stall_ms"], int)
    assert isinstance(result["cold_start_s_median"], float)
    assert result["cold_start_s_median"] > 0
    assert isinstance(result["ratio_median"], float)
