"""Doctor checks: the GPU-build advice and hardware lines, and the answers check against
llama.cpp's own path (a real engine)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mixdesk.core.machine.hardware import GIB, GpuInfo, HardwareInfo, format_bytes
from mixdesk.core.onboarding import doctor

V100 = GpuInfo(
    name="Tesla V100-SXM2-16GB", backend="cuda", total_bytes=16 * GIB, free_bytes=15 * GIB
)


def _hw(*gpus: GpuInfo) -> HardwareInfo:
    return HardwareInfo(
        ram_total_bytes=64 * GIB,
        ram_available_bytes=60 * GIB,
        physical_cores=8,
        logical_cores=16,
        gpus=list(gpus),
    )


def test_cpu_only_build_with_a_gpu_gets_the_install_command() -> None:
    check = doctor._offload_check(False, _hw(V100))
    assert check.status == doctor.WARN
    assert "Tesla V100" in check.detail
    assert 'CMAKE_ARGS="-DGGML_CUDA=on"' in check.fix
    assert "--force-reinstall --no-cache-dir llama-cpp-python==" in check.fix


def test_backends_map_to_their_cmake_flags() -> None:
    assert "-DGGML_HIP=on" in doctor.gpu_build_command("rocm")
    assert "-DGGML_METAL=on" in doctor.gpu_build_command("metal")
    assert "-DGGML_VULKAN=on" in doctor.gpu_build_command("vulkan")


def test_offload_states() -> None:
    assert doctor._offload_check(True, _hw(V100)).status == doctor.OK
    assert doctor._offload_check(False, _hw()).status == doctor.OK
    assert doctor._offload_check(None, _hw()).status == doctor.WARN


def test_hardware_lines() -> None:
    checks = {c.name: c for c in doctor._hardware_checks(_hw(V100))}
    assert "15.00 GiB free of 16.00 GiB" in checks["gpu0"].detail
    assert checks["ram"].status == doctor.OK
    assert format_bytes(512 * 1024 * 1024) == "512.0 MiB"


def test_the_qt_check_runs_the_ui_selftest_in_a_child() -> None:
    """The doctor (Qt-free core) asks a child `mixdesk --qt-selftest` (mixdesk.ui) about Qt."""
    check = doctor._qt_check()
    assert (check.name, check.status, check.detail) == ("qt", doctor.OK, "Qt starts (offscreen)")


def test_the_answers_check_names_a_difference_from_llama_cpp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The doctor compares the engine's greedy answer with llama.cpp's own path: equal on this
    install; one token off (as a changed llama-cpp-python or a broken BOS rule would make it)
    is one FAIL sentence."""
    from mixdesk.core.engine import Engine

    real = doctor._reference_answer
    with Engine(log_dir=tmp_path) as engine:
        engine.start()
        good = doctor._answers_check(engine, tmp_path)
        assert good.status == doctor.OK, good.detail

        def without_bos(model: Path, *, builtin: str) -> dict[str, Any] | None:
            answer = real(model, builtin=builtin)
            assert answer is not None
            return {**answer, "prompt_tokens": answer["prompt_tokens"][1:]}

        monkeypatch.setattr(doctor, "_reference_answer", without_bos)
        bad = doctor._answers_check(engine, tmp_path)
    assert bad.status == doctor.FAIL
    assert "prompt tokens differ from llama.cpp's own path" in bad.detail
    assert bad.fix
