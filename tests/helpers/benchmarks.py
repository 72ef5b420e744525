"""Running a benchmark script as a user does, and reading its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.goals import MISSED, OK, WITHIN_NOISE

ROOT = Path(__file__).resolve().parents[2]


def run_benchmark(
    script: str, *args: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
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
