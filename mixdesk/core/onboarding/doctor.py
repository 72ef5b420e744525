"""``mixdesk doctor``: can MixDesk run here, and how well?

Each check gives ok / warn / fail, a detail line and, where something can be done, the fix
(for a CPU-only llama-cpp-python on a machine with a GPU: the exact command that installs a
GPU build). The end-to-end check writes a tiny Mixtral-architecture model, loads it in a
real engine process and streams tokens from it; the answers check compares the engine's greedy
answer on a Gemma base model with llama.cpp's own path (:mod:`mixdesk.core.engine.reference`,
in a child process), token for token.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mixdesk import __version__, paths
from mixdesk.core.gguf.synthetic import GEMMA_BASE, with_changes
from mixdesk.core.machine import hardware
from mixdesk.core.machine.hardware import HardwareInfo, format_bytes
from mixdesk.errors import user_message

if TYPE_CHECKING:
    from mixdesk.core.engine import Engine, LoadConfig

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


def _engine_check(work_dir: Path) -> tuple[Check, Check, bool | None]:
    """The engine streams from a test model, and answers as llama.cpp's own path does.

    Returns:
        The engine check, the answers check and whether the build can offload to a GPU.
    """
    from mixdesk.core.chat.template import ChatMessage
    from mixdesk.core.engine import Engine, SamplingParams
    from mixdesk.core.gguf.synthetic import ModelSpec, write_model

    model = write_model(
        work_dir / "doctor-check.gguf", ModelSpec(n_layers=2, name="MixDesk doctor check")
    )
    not_run = Check("answers", WARN, "not checked (the engine did not start)")
    try:
        with Engine() as engine:
            info = engine.start()
            engine.load(_cpu_load_config(model))
            stream = engine.chat(
                [ChatMessage("user", "Say something.")], SamplingParams(max_tokens=16, seed=1)
            )
            deltas = sum(1 for _ in stream)
            done = stream.result
            answers = _answers_check(engine, work_dir)
    except Exception as err:  # noqa: BLE001 - the doctor reports any failure as a check
        return Check("engine", FAIL, user_message(err)), not_run, None
    assert done is not None
    if deltas == 0 or done.stats.eval_tokens == 0:
        return (
            Check("engine", FAIL, "the engine loaded a test model but generated nothing"),
            answers,
            info.supports_gpu_offload,
        )
    return (
        Check(
            "engine",
            OK,
            f"llama-cpp-python {info.llama_cpp_version} streamed {done.stats.eval_tokens} tokens "
            f"from a test Mixtral model at {done.stats.eval_tps:.0f} tokens/s",
        ),
        answers,
        info.supports_gpu_offload,
    )


def _cpu_load_config(model: Path) -> LoadConfig:
    """How the doctor loads a test model: on the CPU alone (the check is the engine's)."""
    from mixdesk.core.loading.choices import LoadChoices
    from mixdesk.core.loading.model import resolve_file
    from mixdesk.core.loading.service import plan_load

    cpu_only = HardwareInfo(
        ram_total_bytes=1 << 30,
        ram_available_bytes=1 << 30,
        physical_cores=1,
        logical_cores=1,
    )
    choices = LoadChoices(n_ctx=PARITY_CTX, n_threads=min(2, os.cpu_count() or 1))
    from mixdesk.core.planning.calibration import Calibration

    # the check is the answers', not the speed: nothing measured is needed
    return plan_load(resolve_file(model), cpu_only, choices, calibration=Calibration()).config


#: The doctor's parity model: a Gemma base model without a chat template (llama.cpp's built-in
#: gemma template, which writes no BOS: the prompt needs the vocabulary's BOS rule).
PARITY_MODEL = with_changes(GEMMA_BASE, n_layers=2, name="MixDesk doctor parity")
PARITY_CTX = 256
PARITY_TOKENS = 16
PARITY_CONVERSATION = (("system", "Answer briefly."), ("user", "The capital of France is"))


def _answers_check(engine: Engine, work_dir: Path) -> Check:
    """The engine's greedy answer equals llama.cpp's own path (prompt tokens, tokens, text),
    so a broken install or a changed llama-cpp-python shows up as one sentence."""
    from mixdesk.core.chat.template import ChatMessage
    from mixdesk.core.engine import SamplingParams
    from mixdesk.core.gguf.synthetic import write_model

    model = write_model(work_dir / "doctor-parity.gguf", PARITY_MODEL)
    engine.load(_cpu_load_config(model))
    greedy = SamplingParams(temperature=0.0, repeat_penalty=1.0, max_tokens=PARITY_TOKENS, seed=0)
    stream = engine.chat(
        [ChatMessage(r, c) for r, c in PARITY_CONVERSATION], greedy, report_tokens=True
    )
    for _ in stream:
        pass
    done = stream.result
    assert done is not None
    reference = _reference_answer(model, builtin="gemma")
    fix = "set MixDesk up again (bash packaging/bootstrap.sh start) to reinstall the llama-cpp-python it pins"
    if reference is None:
        return Check("answers", WARN, "llama.cpp's own path could not be run to compare")
    if list(done.prompt_token_ids) != reference["prompt_tokens"]:
        return Check(
            "answers",
            FAIL,
            "the engine's prompt tokens differ from llama.cpp's own path "
            f"({len(done.prompt_token_ids)} vs {len(reference['prompt_tokens'])} tokens): "
            "answers would be wrong",
            fix,
        )
    if list(done.token_ids) != reference["tokens"] or done.text != reference["text"].lstrip():
        return Check(
            "answers",
            FAIL,
            "the engine's greedy answer differs from llama.cpp's own path for the same prompt",
            fix,
        )
    return Check(
        "answers",
        OK,
        f"greedy answers equal llama.cpp's own path ({len(done.prompt_token_ids)} prompt tokens, "
        f"{len(done.token_ids)} answer tokens, gemma template)",
    )


def _reference_answer(model: Path, *, builtin: str) -> dict[str, Any] | None:
    """llama.cpp's own answer (:mod:`mixdesk.core.engine.reference`), in a child process
    (llama.cpp may abort): None when it could not run."""
    request = {
        "model_path": str(model),
        "messages": [list(turn) for turn in PARITY_CONVERSATION],
        "builtin": builtin,
        "n_predict": PARITY_TOKENS,
        "n_ctx": PARITY_CTX,
    }
    try:
        proc = subprocess.run(
            [*self_command(), "--llama-reference"],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return None
    return result


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
        engine, answers, offload = _engine_check(Path(tmp))
    report.checks.append(_offload_check(offload, hw))
    report.checks.append(engine)
    report.checks.append(answers)
    report.checks.append(_qt_check())
    return report
