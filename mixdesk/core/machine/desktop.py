"""``mixdesk install-desktop``: put MixDesk in the Linux application menu (per user, XDG dirs)."""

from __future__ import annotations

import importlib.resources
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mixdesk import APP_ID

ICON_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)


@dataclass
class DesktopFiles:
    """What install-desktop wrote (or removed)."""

    files: list[Path] = field(default_factory=list)


def data_home() -> Path:
    """``$XDG_DATA_HOME`` (default ``~/.local/share``)."""
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")


def launcher_command() -> str:
    """The command the menu entry runs: this bundle, the installed ``mixdesk``, or this Python."""
    if getattr(sys, "frozen", False):
        return f'"{sys.executable}"'
    found = shutil.which("mixdesk")
    if found:
        return f'"{found}"'
    return f'"{sys.executable}" -m mixdesk'


def _targets(root: Path) -> dict[str, Path]:
    targets = {
        f"{APP_ID}.desktop": root / "applications" / f"{APP_ID}.desktop",
        f"{APP_ID}.metainfo.xml": root / "metainfo" / f"{APP_ID}.metainfo.xml",
        f"icons/{APP_ID}.svg": root / "icons" / "hicolor" / "scalable" / "apps" / f"{APP_ID}.svg",
    }
    for size in ICON_SIZES:
        targets[f"icons/{APP_ID}-{size}.png"] = (
            root / "icons" / "hicolor" / f"{size}x{size}" / "apps" / f"{APP_ID}.png"
        )
    return targets


def install(root: Path | None = None) -> DesktopFiles:
    """Install the desktop entry, AppStream metadata and icons for the current user."""
    root = root or data_home()
    resources = importlib.resources.files("mixdesk.resources")
    written = DesktopFiles()
    for name, target in _targets(root).items():
        target.parent.mkdir(parents=True, exist_ok=True)
        data = resources.joinpath(name).read_bytes()
        if name.endswith(".desktop"):
            text = data.decode("utf-8").replace("Exec=mixdesk", f"Exec={launcher_command()}")
            data = text.encode("utf-8")
        target.write_bytes(data)
        written.files.append(target)
    _refresh_caches(root)
    return written


def uninstall(root: Path | None = None) -> DesktopFiles:
    """Remove what :func:`install` wrote."""
    root = root or data_home()
    removed = DesktopFiles()
    for target in _targets(root).values():
        if target.exists():
            target.unlink()
            removed.files.append(target)
    _refresh_caches(root)
    return removed


def _refresh_caches(root: Path) -> None:
    """Tell the desktop about the change, where the tools exist (they are optional)."""
    for command in (
        ["update-desktop-database", str(root / "applications")],
        ["gtk-update-icon-cache", "-q", "-t", str(root / "icons" / "hicolor")],
    ):
        if shutil.which(command[0]) and Path(command[-1]).exists():
            subprocess.run(command, capture_output=True, check=False, timeout=30)
