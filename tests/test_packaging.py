"""The bundle's parts (the build itself runs in packaging/build_bundle.sh, outside the test suite)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_scripts_are_valid_bash() -> None:
    bash = shutil.which("bash")
    assert bash is not None
    for script in ("build_bundle.sh", "check_bundle.sh", "bootstrap.sh"):
        proc = subprocess.run(
            [bash, "-n", str(ROOT / "packaging" / script)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr


def test_spec_names_files_that_exist() -> None:
    spec = (ROOT / "packaging" / "mixdesk.spec").read_text()
    assert '"packaging" / "entry.py"' in spec
    assert (ROOT / "packaging" / "entry.py").exists()
    assert (ROOT / "resources" / "icons" / "io.github.mixdesk.MixDesk-256.png").exists()
    compile(spec, "mixdesk.spec", "exec")  # valid Python


def test_frozen_entry_points_are_dispatched(tmp_path: Path) -> None:
    """The frozen executable starts its own engine and server with hidden arguments."""
    from mixdesk.core.engine import LoadConfig
    from mixdesk.core.engine.child import engine_command
    from mixdesk.core.onboarding.doctor import self_command
    from mixdesk.core.serving.serve import ServeConfig, server_command

    assert engine_command()[-1] == "mixdesk.core.engine.process"
    assert server_command(ServeConfig(LoadConfig("m.gguf")))[-2] == "--llama-server"
    assert self_command()[-1] == "mixdesk"
    cli = (ROOT / "mixdesk" / "cli.py").read_text()
    for flag in ("--engine-process", "--llama-server", "--qt-selftest"):
        assert flag in cli
