"""The real main window for tests: made with its own user folders, a machine and an
engine; load a model, ask a question."""

from __future__ import annotations

from pathlib import Path

from pytestqt.qtbot import QtBot

from mixdesk.core.engine import ChatDone, Engine
from mixdesk.core.hub.library import Library
from mixdesk.core.machine.hardware import GIB, GpuInfo, HardwareInfo
from mixdesk.core.workspace.chat_store import ChatStore
from mixdesk.core.workspace.settings import Settings
from mixdesk.ui.main_window import MainWindow

CPU = HardwareInfo(
    ram_total_bytes=16 * GIB,
    ram_available_bytes=12 * GIB,
    physical_cores=2,
    logical_cores=2,
    gpus=[],
    gpu_offload=False,
)


GPU = HardwareInfo(
    ram_total_bytes=16 * GIB,
    ram_available_bytes=12 * GIB,
    physical_cores=2,
    logical_cores=2,
    gpus=[GpuInfo("Test GPU", "cuda", 1 * GIB, 700 << 20)],
    gpu_offload=True,
)


def make_window(
    qtbot: QtBot, tmp_path: Path, hardware: HardwareInfo = CPU, *, engine: Engine | None = None
) -> MainWindow:
    """The real window with its own chats, library and engine under ``tmp_path``."""
    window = MainWindow(
        settings=Settings.load(),
        store=ChatStore(tmp_path / "chats.sqlite"),
        library=Library(tmp_path / "models"),
        engine=engine or Engine(log_dir=tmp_path / "logs"),
        hardware=hardware,
        quiet=True,
    )
    qtbot.addWidget(window)
    window.show()
    return window


def load(qtbot: QtBot, window: MainWindow, path: Path) -> None:
    window.select_model_path(str(path))
    qtbot.waitUntil(lambda: window.offload.plan is not None, timeout=10_000)
    with qtbot.waitSignal(window.modelLoaded, timeout=30_000):
        window.load_selected()


def ask(qtbot: QtBot, window: MainWindow, text: str, *, timeout: int = 30_000) -> ChatDone:
    with qtbot.waitSignal(window.answerFinished, timeout=timeout) as blocker:
        window.input.setPlainText(text)
        window.send()
    done = blocker.args[0]
    assert isinstance(done, ChatDone)
    return done
