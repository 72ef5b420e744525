"""Quantise a GGUF model with llama.cpp's own quantiser, in a child process.

Calibration (:mod:`mixdesk.core.loading.calibrate`) measures models of the quantisation types
that matter; they are generated on this machine (F32 weights written by
:mod:`mixdesk.core.gguf.synthetic`) and quantised here. It runs as its own process
(``python -m mixdesk.core.engine.quantize SRC DST TYPE THREADS``) because only the engine side
loads llama.cpp; the app process never does.
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

from mixdesk.errors import CalibrationError

#: The llama.cpp file types calibration makes (``LLAMA_FTYPE_MOSTLY_<TYPE>``).
FILE_TYPES = ("Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "F16")


class QuantizeError(CalibrationError):
    """llama.cpp's quantiser failed (making a measuring model)."""


def quantize(
    src: Path, dst: Path, file_type: str, *, threads: int = 1, timeout: float = 600
) -> Path:
    """Quantise ``src`` into ``dst`` as ``file_type`` (one of :data:`FILE_TYPES`) in a child.

    Raises:
        QuantizeError: the quantiser failed or took longer than ``timeout`` seconds.
    """
    if file_type not in FILE_TYPES:
        raise ValueError(f"unknown file type {file_type!r}")
    try:
        done = subprocess.run(
            [sys.executable, "-m", __name__, str(src), str(dst), file_type, str(threads)],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise QuantizeError(
            f"Making the measuring model {src.name} took over {timeout:.0f} s; try again when "
            "the machine is less busy."
        ) from None
    if done.returncode != 0 or not dst.exists():
        tail = done.stderr.decode("utf-8", "replace")[-500:]
        raise QuantizeError(
            f"llama.cpp could not make the measuring model {src.name} ({file_type}): "
            f"{tail.strip().splitlines()[-1] if tail.strip() else 'no message'}."
        )
    return dst


def _main(argv: list[str]) -> int:
    import llama_cpp

    src, dst, file_type, threads = argv
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{file_type}")
    params.nthread = int(threads)
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
