"""docs/walkthrough.py drives the real window in a real X server (Xvfb) through what a new user
does, and fails when the window leaves the screen; here at 1024x700, the smaller size."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STEPS = (
    "first run offline",
    "open a model",
    "three turns",
    "edit the second",
    "regenerate",
    "stop an answer",
    "switch conversations",
    "delete, undo offered",
)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(
    shutil.which("Xvfb") is None and not Path("/usr/bin/Xvfb").exists(),
    reason="Xvfb is not installed (Debian: apt-get install xvfb)",
)
def test_the_walkthrough_stays_on_a_1024x700_screen(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "walkthrough.py"), "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    report = proc.stdout[-4000:] + proc.stderr[-4000:]
    done = [step for step in STEPS if f"ok   1024x700  {step}" in proc.stdout]
    assert done == list(STEPS), report  # every step ran as a user would expect
    assert "FAILED" not in proc.stdout, report  # and the window never left the screen
    assert proc.returncode == 0, report
    shots = sorted(p.name for p in tmp_path.glob("walk-*-1024x700.png"))
    assert len(shots) == 5, shots
