"""``mixdesk doctor``: can MixDesk run here, and how well?

Each check gives ok / warn / fail, a detail line and, where something can be done, the fix
(for a CPU-only llama-cpp-python on a machine with a GPU: the exact command that installs a
GPU build). The end-to-end check writes a tiny Mixtral-architecture model, loads it in a
real engine process and streams tokens from it.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mixdesk import __version__, paths
from mixdesk.core import hardware
from mixdesk.core.hardware import HardwareInfo, format_bytes
from mixdesk.errors import user_message

OK, WARN, FAIL = "ok", "warn", "fail"

_PACKAGES = (
    "llama-cpp-python",
    "huggingface-hub",
    "PySide6-Essentials",
    "platformdirs",
    "psutil",
    "gguf",
    "numpy",
    "jinja2",
)
_MODULES = {
    "llama-cpp-python": "llama_cpp",
    "huggingface-hub": "huggingface_hub",
    "PySide6-Essentials": "PySide6",
}
_CMAKE_FLAGS = {
    "cuda": "-DGGML_CUDA=on",
    "rocm": "-DGGML_HIP=on",
    "metal": "-DGGML_METAL=on",
    "vulkan": "-DGGML_VULKAN=on",
}


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report."""

    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""


@dataclass
class DoctorReport:
    """All checks; MixDesk can run when none failed."""

    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether MixDesk can run on this machine."""
        return all(c.status != FAIL for c in self.checks)


def self_command() -> list[str]:
    """The command that runs ``mixdesk`` itself (also inside a frozen bundle)."""
    if getattr(sys, "frozen", False):
        return [sys.executable]
    return [sys.executable, "-m", "mixdesk"]


def gpu_build_command(backend: str) -> str:
    """Return the command that installs a llama-cpp-python build for ``backend``."""
    flag = _CMAKE_FLAGS.get(backend, _CMAKE_FLAGS["cuda"])
    try:
        version = importlib.metadata.version("llama-cpp-python")
        spec = f"llama-cpp-python=={version}"
    except importlib.metadata.PackageNotFoundError:
        spec = "llama-cpp-python"
    return (
        f'CMAKE_ARGS="{flag}" {sys.executable} -m pip install --force-reinstall '
        f"--no-cache-dir {spec}"
    )


def _versions() -> Check:
    found, missing = [], []
    for name in _PACKAGES:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            # a frozen bundle may carry the package without its metadata: importing it decides
            module = _MODULES.get(name, name.replace("-", "_"))
            try:
                imported = importlib.import_module(module)
            except ImportError:
                missing.append(name)
            else:
                found.append(f"{name} {getattr(imported, '__version__', 'bundled')}")
    py = platform.python_version()
    detail = f"MixDesk {__version__}, Python {py}; " + ", ".join(found)
    if missing:
        return Check(
            "versions",
            FAIL,
            detail + f"; missing: {', '.join(missing)}",
            f"{sys.executable} -m pip install mixdesk",
        )
    return Check("versions", OK, detail)


def _hardware_checks(hw: HardwareInfo) -> list[Check]:
    checks = [
        Check(
            "ram",
            OK if hw.ram_total_bytes >= 8 * hardware.GIB else WARN,
            f"{format_bytes(hw.ram_total_bytes)} total, {format_bytes(hw.ram_available_bytes)} available",
            ""
            if hw.ram_total_bytes >= 8 * hardware.GIB
            else "Mixtral needs at least 16 GiB of RAM plus VRAM.",
        ),
        Check("cpu", OK, f"{hw.physical_cores} physical cores, {hw.logical_cores} threads"),
    ]
    if hw.gpus:
        for gpu in hw.gpus:
            checks.append(
                Check(
                    f"gpu{gpu.index}",
                    OK,
                    f"{gpu.name} ({gpu.backend}): "
                    f"{format_bytes(gpu.free_bytes)} free of {format_bytes(gpu.total_bytes)}",
                )
            )
    else:
        checks.append(Check("gpu", OK, "no GPU found: models run on the CPU"))
    return checks


def _offload_check(supports_offload: bool | None, hw: HardwareInfo) -> Check:
    if supports_offload is None:
        return Check("gpu-offload", WARN, "unknown (the engine did not start)")
    if supports_offload:
        return Check("gpu-offload", OK, "this llama-cpp-python build can offload layers to a GPU")
    if hw.gpus:
        return Check(
            "gpu-offload",
            WARN,
            f"this llama-cpp-python build is CPU-only, so {hw.gpus[0].name} stays unused",
            gpu_build_command(hw.gpus[0].backend),
        )
    return Check("gpu-offload", OK, "CPU-only llama-cpp-python build (no GPU found, nothing lost)")


def _writable(name: str, path: Path) -> Check:
    try:
        paths.ensure_dir(path)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".mixdesk-doctor-"):
            pass
    except OSError as err:
        return Check(
            f"dir-{name}",
            FAIL,
            f"{path}: {user_message(err)}",
            "Set MIXDESK_DATA_DIR (or the XDG variables) to a folder you can write to.",
        )
    return Check(f"dir-{name}", OK, str(path))


def _qt_check() -> Check:
    # Qt is tried in a child (mixdesk.ui.selftest): the core imports no PySide6, and a Qt
    # that crashes on start takes only the child down.
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    try:
        proc = subprocess.run(
            [*self_command(), "--qt-selftest"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as err:
        return Check("qt", FAIL, f"Qt could not start: {err}")
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return Check(
            "qt",
            FAIL,
            f"Qt could not start offscreen: {last}",
            f"{sys.executable} -m pip install --force-reinstall PySide6-Essentials",
        )
    return Check("qt", OK, "Qt starts (offscreen)")


def _engine_check(work_dir: Path) -> tuple[Check, bool | None]:
    from mixdesk.core.chat_template import ChatMessage
    from mixdesk.core.engine import Engine, SamplingParams
    from mixdesk.core.loading import LoadChoices, plan_load
    from mixdesk.core.synthetic_model import ModelSpec, write_model

    model = write_model(
        work_dir / "doctor-check.gguf", ModelSpec(n_layers=2, name="MixDesk doctor check")
    )
    try:
        with Engine() as engine:
            info = engine.start()
            # The check is the engine's, not the GPU's: plan it for the CPU alone.
            cpu_only = HardwareInfo(
                ram_total_bytes=1 << 30,
                ram_available_bytes=1 << 30,
                physical_cores=1,
                logical_cores=1,
            )
            choices = LoadChoices(n_ctx=256, n_threads=min(2, os.cpu_count() or 1))
            engine.load(plan_load(model, cpu_only, choices).config)
            stream = engine.chat(
                [ChatMessage("user", "Say something.")], SamplingParams(max_tokens=16, seed=1)
            )
            deltas = sum(1 for _ in stream)
            done = stream.result
    except Exception as err:  # noqa: BLE001 - the doctor reports any failure as a check
        return Check("engine", FAIL, user_message(err)), None
    assert done is not None
    if deltas == 0 or done.stats.eval_tokens == 0:
        return Check(
            "engine", FAIL, "the engine loaded a test model but generated nothing"
        ), info.supports_gpu_offload
    return Check(
        "engine",
        OK,
        f"llama-cpp-python {info.llama_cpp_version} streamed {done.stats.eval_tokens} tokens from a "
        f"test Mixtral model at {done.stats.eval_tps:.0f} tokens/s",
    ), info.supports_gpu_offload


def run_checks() -> DoctorReport:
    """Run every check and return the report."""
    report = DoctorReport()
    report.checks.append(_versions())
    hw = hardware.detect()
    report.checks += _hardware_checks(hw)
    for name, path in (
        ("data", paths.data_dir()),
        ("config", paths.config_dir()),
        ("cache", paths.cache_dir()),
        ("logs", paths.log_dir()),
    ):
        report.checks.append(_writable(name, path))
    with tempfile.TemporaryDirectory(prefix="mixdesk-doctor-") as tmp:
        engine, offload = _engine_check(Path(tmp))
    report.checks.append(_offload_check(offload, hw))
    report.checks.append(engine)
    report.checks.append(_qt_check())
    return report
