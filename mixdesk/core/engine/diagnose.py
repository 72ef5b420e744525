"""Read llama.cpp's log and the engine's exit status, and say in one sentence what went wrong.

The patterns are llama.cpp's own messages (checked against the version bundled with
llama-cpp-python 0.3.36); an unknown failure still gets a sentence with the log's last
error line.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

from mixdesk.errors import (
    CorruptModelError,
    EngineCrashedError,
    LegacyLayoutError,
    ModelLoadError,
    OutOfMemoryError,
    UnsupportedArchitectureError,
)

_OOM = re.compile(
    r"out of memory|failed to allocate|unable to allocate|cudaMalloc failed|"
    r"ErrorOutOfDeviceMemory|std::bad_alloc|Cannot allocate memory|mmap failed",
    re.IGNORECASE,
)
_ALLOC_SIZE = re.compile(r"failed to allocate \w+ buffer of size (\d+)")
_ARCH = re.compile(r"unknown model architecture: '([^']*)'")
_LEGACY = re.compile(
    r"tensor 'blk\.\d+\.ffn_\w+_exps\.weight' not found|missing tensor 'blk\.\d+\.ffn_\w+_exps"
)
_BOUNDS = re.compile(r"data is not within the file bounds|model is corrupted or incomplete")
_HEADER = re.compile(r"gguf_init_from\w*: (.*)")
_ASSERT = re.compile(r"(GGML_ASSERT\(.*?\) failed|GGML_ABORT.*|fatal error.*)")
_ERROR_LINE = re.compile(r"(?:error loading model|llama_init_from_model): (.*)")


def read_tail(path: Path, max_bytes: int = 16_384) -> str:
    """Return the last ``max_bytes`` of a log file as text ("" if it cannot be read)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def load_failure(model_path: str, log_text: str) -> ModelLoadError:
    """Turn a failed (non-fatal) load's log into the matching error."""
    name = Path(model_path).name
    if m := _ARCH.search(log_text):
        return UnsupportedArchitectureError(
            f"{name} uses the model architecture '{m.group(1)}', which this llama.cpp build "
            "does not support; update llama-cpp-python or pick another model."
        )
    if _LEGACY.search(log_text):
        return LegacyLayoutError(
            f"{name} stores Mixtral's experts in the old per-expert layout that current "
            f"llama.cpp no longer loads; convert it with `mixdesk convert {name} OUT.gguf`."
        )
    if _BOUNDS.search(log_text):
        return CorruptModelError(
            f"{name} is incomplete or damaged (its tensor data ends early); download it again."
        )
    if m := _HEADER.search(log_text):
        return CorruptModelError(
            f"{name} has a damaged GGUF header ({m.group(1).strip()}); download it again."
        )
    if _OOM.search(log_text):
        sizes = [int(n) for n in _ALLOC_SIZE.findall(log_text)]
        amount = f" (llama.cpp could not allocate {sizes[-1] / 2**30:.1f} GiB)" if sizes else ""
        return OutOfMemoryError(
            f"There is not enough memory to load {name} with these settings{amount}; put fewer "
            "layers on the GPU, use a smaller context, or pick a smaller quantisation."
        )
    detail = ""
    if found := _ERROR_LINE.findall(log_text):
        detail = f" ({found[-1].strip()})"
    return ModelLoadError(f"llama.cpp could not load {name}{detail}; the log has the details.")


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def engine_death(
    returncode: int | None, log_text: str, *, during: str, model_path: str | None = None
) -> EngineCrashedError:
    """Explain why the engine process ended.

    Args:
        returncode: the process's exit status (negative: killed by that signal).
        log_text: the end of the engine's log (llama.cpp's stderr).
        during: what the engine was doing, e.g. "loading the model" or "answering".
        model_path: the model it had loaded, if any.
    """
    name = Path(model_path).name if model_path else "the model"
    assertion = _ASSERT.search(log_text)
    if assertion and returncode is not None and returncode < 0:
        cause = f"llama.cpp aborted ({assertion.group(1).strip()[:160]})"
        advice = (
            f"{name} is probably broken or unsupported; download it again or pick another model."
            if during == "loading the model"
            else "start a new answer; if it happens again, reload the model with fewer GPU layers."
        )
    elif _OOM.search(log_text):
        cause = "it ran out of memory"
        advice = "put fewer layers on the GPU, use a smaller context, or close other programs."
    elif returncode is not None and returncode < 0:
        sig = _signal_name(returncode)
        if sig == "SIGKILL":
            cause = "it was killed (SIGKILL), most often by the system when memory runs out"
            advice = "close other programs or use a smaller model or context, then try again."
        elif sig == "SIGSEGV":
            cause = "llama.cpp crashed (segmentation fault)"
            advice = f"{name} may be broken; try again, or pick another model."
        elif sig == "SIGBUS":
            cause = "the model file changed or vanished while in use (SIGBUS)"
            advice = "leave the file in place while it is loaded, then load it again."
        else:
            cause = f"it was stopped by {sig}"
            advice = "start it again."
    else:
        cause = f"it exited unexpectedly (exit status {returncode})"
        advice = "start it again; the engine log has the details."
    return EngineCrashedError(
        f"The engine stopped while {during}: {cause}; {advice}",
        returncode=returncode,
        log_tail=log_text[-4000:],
    )


_BUFFER = re.compile(r"(\S+)\s+(model|KV|compute|output|RS)\s+buffer size\s*=\s*([\d.]+) MiB")


def buffer_sizes(log_text: str) -> dict[str, int]:
    """The buffers llama.cpp reports while loading, in bytes: ``{"CPU_REPACK model": ..., "CUDA0 KV": ...}``.

    These log lines are llama.cpp's own accounting (ground truth for the planner). Only the
    lines from the last load in ``log_text`` are read (a new load starts at ``load_tensors``).
    """
    start = log_text.rfind("llama_model_load")
    found: dict[str, int] = {}
    for device, kind, mib in _BUFFER.findall(log_text[max(start, 0) :]):
        found[f"{device} {kind}"] = round(float(mib) * 2**20)
    return found
