"""The Linux desktop integration: shipped files validate, install-desktop installs and removes them."""

from __future__ import annotations

import importlib.resources
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mixdesk import APP_ID

RESOURCES = Path(str(importlib.resources.files("mixdesk.resources")))


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(
            f"{name} is not installed (Debian: desktop-file-utils / appstream; .ci/run installs them)"
        )
    return path


def test_desktop_file_validates() -> None:
    proc = subprocess.run(
        [_tool("desktop-file-validate"), str(RESOURCES / f"{APP_ID}.desktop")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "error" not in proc.stdout.lower()


def test_appstream_metainfo_validates() -> None:
    proc = subprocess.run(
        [_tool("appstreamcli"), "validate", "--no-net", str(RESOURCES / f"{APP_ID}.metainfo.xml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_icons_are_shipped_at_every_size() -> None:
    from PySide6.QtGui import QImage

    for size in (16, 24, 32, 48, 64, 128, 256, 512):
        image = QImage(str(RESOURCES / "icons" / f"{APP_ID}-{size}.png"))
        assert (image.width(), image.height()) == (size, size)
    assert (RESOURCES / "icons" / f"{APP_ID}.svg").read_text().startswith("<?xml")


def test_install_desktop_and_uninstall(tmp_path: Path) -> None:
    env = dict(os.environ, XDG_DATA_HOME=str(tmp_path / "share"))
    proc = subprocess.run(
        [sys.executable, "-m", "mixdesk", "install-desktop"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    share = tmp_path / "share"
    entry = share / "applications" / f"{APP_ID}.desktop"
    assert entry.exists()
    exec_line = next(line for line in entry.read_text().splitlines() if line.startswith("Exec="))
    assert exec_line != "Exec=mixdesk"  # an absolute command that works from the menu
    assert (share / "icons" / "hicolor" / "256x256" / "apps" / f"{APP_ID}.png").exists()
    assert (share / "icons" / "hicolor" / "scalable" / "apps" / f"{APP_ID}.svg").exists()
    assert (share / "metainfo" / f"{APP_ID}.metainfo.xml").exists()
    validator = shutil.which("desktop-file-validate")
    if validator:
        assert subprocess.run([validator, str(entry)], check=False).returncode == 0
    proc = subprocess.run(
        [sys.executable, "-m", "mixdesk", "install-desktop", "--uninstall"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0
    assert not entry.exists()
    assert not any(p.is_file() for p in share.rglob(f"{APP_ID}*"))
