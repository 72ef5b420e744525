"""The one module that touches llama-cpp-python's internals, checked against the installed one.

If llama-cpp-python is upgraded (or built differently), these tests fail first and name
what changed, instead of the engine failing in a user's hands.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mixdesk.core.engine import Engine

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (llama.cpp stays out of the test process)."""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_installed_llama_cpp_python_is_the_pinned_one() -> None:
    out = run_python(
        "from mixdesk.core.engine import llama_adapter as a; a.check_compatible(); "
        "import llama_cpp; print(llama_cpp.__version__, a.PINNED_VERSION)"
    )
    installed, pinned = out.split()
    assert installed == pinned
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"llama-cpp-python[server]=={pinned}"' in pyproject  # one version, one place


def test_the_build_has_the_rpc_backend() -> None:
    """The project's build includes llama.cpp's RPC backend (the test suite's offload device)."""
    out = run_python(
        "from mixdesk.core.engine import llama_adapter as a; print(a.ggml().rpc is not None)"
    )
    assert out.strip() == "True"


def test_local_gpu_is_not_llama_supports_gpu_offload(engine: Engine) -> None:
    """With RPC compiled in, llama_supports_gpu_offload() is true on a machine with no GPU;
    MixDesk asks for local GPU devices instead (no RPC server is running here)."""
    out = run_python(
        "import llama_cpp; from mixdesk.core.engine import devices, llama_adapter as a; "
        "print(llama_cpp.llama_supports_gpu_offload(), len(devices.local_gpus()), "
        "[d.kind for d in a.backend_devices()])"
    )
    supports, local, kinds = out.split(" ", 2)
    assert supports == "True"
    assert local == "0" and "cpu" in kinds
    info = engine.start()
    assert info.supports_gpu_offload is False


@pytest.mark.parametrize(
    "private",
    [
        "Llama._model",
        "Llama._ctx",
        "llama_model_params.no_alloc",
        "llama_model_params.tensor_buft_overrides",
    ],
)
def test_every_private_piece_is_there(private: str) -> None:
    owner, name = private.split(".")
    code = (
        "import llama_cpp, llama_cpp.llama_cpp as low\n"
        f"owner = '{owner}'\n"
        "if owner == 'Llama':\n"
        f"    assert '{name}' in llama_cpp.Llama.__init__.__code__.co_names\n"
        "else:\n"
        f"    assert hasattr(low.llama_model_default_params(), '{name}')\n"
        "print('ok')"
    )
    assert run_python(code).strip() == "ok"


def test_a_different_version_is_refused_loudly() -> None:
    out = run_python(
        "import llama_cpp; llama_cpp.__version__ = '0.3.99'\n"
        "from mixdesk.core.engine import llama_adapter as a\n"
        "try:\n    a.check_compatible()\nexcept a.AdapterError as e:\n    print(e)"
    )
    assert "llama-cpp-python 0.3.99 is installed" in out and "0.3.36" in out


def test_the_server_and_formatter_hooks_are_there() -> None:
    """``mixdesk serve`` hands llama-cpp-python's server the engine's own ``Llama`` and keeps
    the model's templates from being compiled at load: both hooks are checked."""
    run_python(
        "from mixdesk.core.engine import llama_adapter as a; a.check_compatible(); "
        "a.check_server_compatible()"
    )
