"""Turning llama.cpp's log and exit statuses into sentences."""

from __future__ import annotations

import signal

import pytest

from mixdesk.core.engine import diagnose
from mixdesk.errors import CorruptModelError, ModelLoadError, OutOfMemoryError


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
    assert "ran out of memory" in str(err)
    assert "fewer layers on the GPU" in str(err)


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
