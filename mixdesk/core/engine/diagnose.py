"""Read llama.cpp's log and the engine's exit status, and say in one sentence what went wrong.

The patterns are llama.cpp's own messages (checked against the version bundled with
llama-cpp-python 0.3.36); an unknown failure still gets a sentence with the log's last
error line.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Sequence
from pathlib import Path

from mixdesk.core.engine.protocol import Buffer, BufferKind, Buffers
from mixdesk.errors import (
    CorruptModelError,
    DeviceOutOfMemoryCrashError,
    DeviceOutOfMemoryError,
    EngineCrashedError,
    HostOutOfMemoryError,
    LegacyLayoutError,
    ModelLoadError,
    OutOfMemoryError,
    UnsupportedArchitectureError,
    WorkerLostError,
)

_OOM = re.compile(
    r"out of memory|failed to allocate|unable to allocate|cudaMalloc failed|"
    r"ErrorOutOfDeviceMemory|std::bad_alloc|Cannot allocate memory|mmap failed",
    re.IGNORECASE,
)
_ALLOC = re.compile(r"^(\S*).*failed to allocate (\S+) buffer of size (\d+)", re.MULTILINE)
_DEVICE_OOM = re.compile(
    r"cudaMalloc failed|CUDA error: out of memory|ErrorOutOfDeviceMemory|hipMalloc failed"
)
#: Buffers in RAM: a failure there is the host's memory, never the GPU's.
_HOST_BUFFER = re.compile(r"^(CPU\w*|\w*_Host)$")
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
        return out_of_memory(name, log_text)
    detail = ""
    if found := _ERROR_LINE.findall(log_text):
        detail = f" ({found[-1].strip()})"
    return ModelLoadError(f"llama.cpp could not load {name}{detail}; the log has the details.")


def out_of_memory(name: str, log_text: str) -> OutOfMemoryError:
    """The typed out-of-memory error for a failed allocation in ``log_text``.

    A failed buffer on an offload device (``CUDA0``, ``RPC0[host:port]``) or a CUDA/Vulkan
    out-of-memory line is a :class:`DeviceOutOfMemoryError` (fewer GPU layers may fit); a
    CPU, ``CPU_Mapped`` or ``CUDA_Host`` buffer, a failed mmap or a C++ bad_alloc is RAM.
    """
    allocs = _ALLOC.findall(with_worker_names(log_text))
    where, device, size = (
        (allocs[-1][0], allocs[-1][1], int(allocs[-1][2])) if allocs else ("", "", 0)
    )
    # Which buffer: weights are allocated while loading tensors, then the KV cache, then the
    # compute buffers by the graph allocator.
    buffer = "compute" if "gallocr" in where else "KV" if "kv" in where.lower() else "model"
    amount = f" (llama.cpp could not allocate {size / 2**30:.2f} GiB on {device})" if allocs else ""
    if (device and not _HOST_BUFFER.match(device)) or (not device and _DEVICE_OOM.search(log_text)):
        return DeviceOutOfMemoryError(
            f"{name} does not fit in GPU memory with these settings{amount}; put fewer layers "
            "on the GPU or use a smaller context.",
            device=device,
            buffer=buffer if allocs else "",
            requested_bytes=size,
        )
    return HostOutOfMemoryError(
        f"There is not enough RAM to load {name} with these settings{amount}; close other "
        "programs, use a smaller context, or pick a smaller quantisation."
    )


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


#: llama.cpp's RPC client ends its process when a server goes away or cannot be reached.
_RPC_LOST = re.compile(
    r"Remote RPC server crashed or returned malformed response|"
    r"Failed to connect to (\S+)|RPC handshake failed for (\S+)"
)


def worker_lost(
    returncode: int | None, log_text: str, *, during: str, workers: Sequence[str]
) -> WorkerLostError | None:
    """The engine's death as a worker that went away, when llama.cpp's log says so.

    llama.cpp does not say which server died; the first of ``workers`` that no longer
    answers MixDesk's handshake is named.
    """
    found = _RPC_LOST.search(with_worker_names(log_text))
    if found is None:
        return None
    from mixdesk.core.machine.rpc_worker import gone

    endpoint = found.group(1) or found.group(2) or ""
    if workers and endpoint not in workers:  # a relay's address whose line left the log's tail
        endpoint = next(iter(gone(workers)), "")
    who = f"The worker at {endpoint}" if endpoint else "A worker"
    return WorkerLostError(
        f"{who} went away while {during}, which ended the engine; load the model again "
        "without that worker, or restart `mixdesk worker` there.",
        returncode=returncode,
        log_tail=log_text[-4000:],
        endpoint=endpoint,
    )


def engine_death(
    returncode: int | None,
    log_text: str,
    *,
    during: str,
    model_path: str | None = None,
    workers: Sequence[str] = (),
) -> EngineCrashedError:
    """Explain why the engine process ended.

    Args:
        returncode: the process's exit status (negative: killed by that signal).
        log_text: the end of the engine's log (llama.cpp's stderr).
        during: what the engine was doing, e.g. "loading the model" or "answering".
        model_path: the model it had loaded, if any.
        workers: the workers (``host:port``) the engine was using.
    """
    lost = worker_lost(returncode, log_text, during=during, workers=workers)
    if lost is not None:
        return lost
    name = Path(model_path).name if model_path else "the model"
    assertion = _ASSERT.search(log_text)
    oom = out_of_memory(name, log_text) if _OOM.search(log_text) else None
    if isinstance(oom, DeviceOutOfMemoryError) and _signal_name(returncode or 0) != "SIGKILL":
        return DeviceOutOfMemoryCrashError(
            f"The engine stopped while {during}: the GPU ran out of memory; reload the model "
            "with fewer GPU layers or a smaller context.",
            returncode=returncode,
            log_tail=log_text[-4000:],
            device=oom.device,
            requested_bytes=oom.requested_bytes,
        )
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
_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")


#: Written by the engine's relay (rpc_relay.relay_for) before llama.cpp connects.
_RELAY = re.compile(r"mixdesk: llama\.cpp reaches the worker (\S+) through (127\.0\.0\.1:\d+)")


def with_worker_names(log_text: str) -> str:
    """``log_text`` with each relay address llama.cpp was given replaced by its worker's."""
    relays = {local: endpoint for endpoint, local in _RELAY.findall(log_text)}
    for local, endpoint in relays.items():
        log_text = re.sub(rf"(?<![\d.]){re.escape(local)}(?!\d)", endpoint, log_text)
    return log_text


def _last_load(log_text: str) -> str:
    """The part of the log written by the last model load."""
    start = log_text.rfind("llama_model_load")
    return log_text[max(start, 0) :]


def buffer_sizes(log_text: str) -> Buffers:
    """The buffers llama.cpp reports while loading, in bytes, summed per device and kind
    (``CPU_Mapped`` model, ``RPC0[127.0.0.1:50052]`` KV, ``CUDA0`` compute...).

    These log lines are llama.cpp's own accounting (ground truth for the planner). A split
    model logs one ``CPU_Mapped`` buffer per file, hence the sums; two RPC servers are both
    called ``RPC0``, so their names keep the endpoint. Only the last load in ``log_text`` is read.
    """
    found: dict[tuple[str, BufferKind], int] = {}
    for device, kind, mib in _BUFFER.findall(_last_load(with_worker_names(log_text))):
        key = (device, BufferKind(kind))
        found[key] = found.get(key, 0) + round(float(mib) * 2**20)
    return Buffers(tuple(Buffer(device, kind, size) for (device, kind), size in found.items()))


def offloaded_layers(log_text: str) -> int:
    """llama.cpp's ``n_gpu_layers`` as it applied it (0 when nothing went to a GPU)."""
    found = _OFFLOADED.findall(_last_load(log_text))
    return int(found[-1][0]) if found else 0
