"""Turning llama.cpp's log and exit statuses into sentences."""

from __future__ import annotations

import signal

import pytest

from mixdesk.core.engine import diagnose
from mixdesk.errors import (
    CorruptModelError,
    DeviceOutOfMemoryCrashError,
    DeviceOutOfMemoryError,
    HostOutOfMemoryError,
    ModelLoadError,
    OutOfMemoryError,
)


def test_sigkill_is_explained_as_memory_pressure() -> None:
    err = diagnose.engine_death(-signal.SIGKILL, "", during="answering", model_path="/m/x.gguf")
    assert "killed (SIGKILL)" in str(err)
    assert "memory" in str(err)
    assert err.returncode == -signal.SIGKILL


def test_gpu_out_of_memory_in_the_log_wins() -> None:
    log = "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 9000.00 MiB on device 0: cudaMalloc failed: out of memory\n"
    err = diagnose.engine_death(
        -signal.SIGABRT, log, during="loading the model", model_path="m.gguf"
    )
    assert isinstance(err, DeviceOutOfMemoryCrashError)  # the load is retried with fewer layers
    assert "GPU ran out of memory" in str(err)
    assert "fewer GPU layers" in str(err)


def test_ram_kill_is_not_a_device_out_of_memory() -> None:
    """A SIGKILL (the kernel's OOM killer) is RAM, even when the log mentions a GPU failure."""
    log = "cudaMalloc failed: out of memory\n"
    err = diagnose.engine_death(-signal.SIGKILL, log, during="answering", model_path="m.gguf")
    assert not isinstance(err, DeviceOutOfMemoryCrashError)


@pytest.mark.parametrize(
    ("line", "device_oom", "device", "size"),
    [
        (
            "alloc_tensor_range: failed to allocate CUDA0 buffer of size 1293942784",
            True,
            "CUDA0",
            1293942784,
        ),
        (
            "failed to allocate RPC0[127.0.0.1:50052] buffer of size 350759424",
            True,
            "RPC0[127.0.0.1:50052]",
            350759424,
        ),
        ("alloc_tensor_range: failed to allocate CPU buffer of size 999", False, "", 0),
        ("failed to allocate CUDA_Host buffer of size 4096", False, "", 0),
        (
            "llama_model_load: error loading model: mmap failed: Cannot allocate memory",
            False,
            "",
            0,
        ),
    ],
)
def test_out_of_memory_is_typed_by_the_failed_buffer(
    line: str, device_oom: bool, device: str, size: int
) -> None:
    err = diagnose.load_failure("m.gguf", line + "\n")
    assert isinstance(err, DeviceOutOfMemoryError) is device_oom
    assert isinstance(err, HostOutOfMemoryError) is not device_oom
    if device_oom:
        assert isinstance(err, DeviceOutOfMemoryError)
        assert (err.device, err.requested_bytes) == (device, size)


@pytest.mark.parametrize(
    ("sig", "words"),
    [
        (signal.SIGSEGV, "segmentation fault"),
        (signal.SIGBUS, "SIGBUS"),
        (signal.SIGTERM, "SIGTERM"),
    ],
)
def test_other_signals(sig: signal.Signals, words: str) -> None:
    assert words in str(diagnose.engine_death(-sig, "", during="answering"))


def test_plain_exit_status() -> None:
    assert "exit status 3" in str(diagnose.engine_death(3, "", during="answering"))


def test_load_failures() -> None:
    oom = diagnose.load_failure(
        "/m/big.gguf", "llama_model_load: error loading model: unable to allocate CUDA0 buffer"
    )
    assert isinstance(oom, OutOfMemoryError)
    assert "big.gguf" in str(oom)
    header = diagnose.load_failure("a.gguf", "gguf_init_from_reader: failed to read tensor info\n")
    assert isinstance(header, CorruptModelError)
    assert "failed to read tensor info" in str(header)
    other = diagnose.load_failure("a.gguf", "llama_init_from_model: something new\n")
    assert type(other) is ModelLoadError
    assert "(something new)" in str(other)


def test_read_tail(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    log = tmp_path / "x.log"
    log.write_bytes(b"a" * 100 + b"\xff end")
    assert diagnose.read_tail(log, max_bytes=10).endswith("end")
    assert diagnose.read_tail(tmp_path / "missing.log") == ""
