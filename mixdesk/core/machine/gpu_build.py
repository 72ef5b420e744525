"""GPU support from the app: rebuild llama-cpp-python for this machine's GPU, in the background.

A source setup rebuilds through the bootstrap's own ``gpu`` step (the same flags, the same
wheel cache keyed by version, backend, CUDA toolkit and GPU architectures, the same checks),
so the app and ``bash packaging/bootstrap.sh`` never disagree. The frozen bundle has no pip
and no compiler: there the answer is the CUDA variant of the bundle.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from mixdesk import paths
from mixdesk.errors import MixdeskError

#: Where the CUDA bundle comes from (a release step; see the README's "GPU builds").
CUDA_BUNDLE_HINT = (
    "This bundle was built for the CPU. For an NVIDIA GPU use the CUDA bundle "
    "(MixDesk-linux-x86_64-cuda.tar.gz, built with `bash packaging/build_bundle.sh --cuda` "
    "and CUDA 12.x for GPU architectures 70;75;80;86;89, so a V100 is covered)."
)


class GpuBuildError(MixdeskError):
    """Installing GPU support failed; the sentence names the missing piece."""


def bootstrap_script() -> Path | None:
    """The source checkout's bootstrap script (None in a frozen bundle or a plain install)."""
    if getattr(sys, "frozen", False):
        return None
    script = Path(__file__).resolve().parents[3] / "packaging" / "bootstrap.sh"
    return script if script.is_file() and shutil.which("bash") else None


def build_log_path() -> Path:
    """Where the last GPU build's output goes."""
    return paths.log_dir() / "gpu-build.log"


def install_gpu_support(
    *, on_line: Callable[[str], None] | None = None, cancel: threading.Event | None = None
) -> Path:
    """Rebuild llama-cpp-python for this machine's GPU (minutes); returns the build log.

    Raises:
        GpuBuildError: no source setup, a missing toolkit, or a failed build: one sentence.
    """
    script = bootstrap_script()
    if script is None:
        raise GpuBuildError(CUDA_BUNDLE_HINT)
    log_path = build_log_path()
    paths.ensure_dir(log_path.parent)
    venv = Path(sys.prefix)
    env = {**os.environ, "MIXDESK_VENV": str(venv)}
    last = ""
    with (
        log_path.open("w", encoding="utf-8") as log,
        subprocess.Popen(
            [shutil.which("bash") or "/bin/bash", str(script), "gpu"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        ) as proc,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            log.flush()
            if line.startswith("bootstrap: "):
                last = line.removeprefix("bootstrap: ").strip()
                if on_line is not None:
                    on_line(last)
            if cancel is not None and cancel.is_set():
                proc.terminate()
        code = proc.wait()
    if code != 0:
        why = last if code == 3 and last else f"the build failed (exit status {code})"
        raise GpuBuildError(f"GPU support was not installed: {why} The build log: {log_path}")
    return log_path
