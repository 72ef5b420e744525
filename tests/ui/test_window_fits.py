"""The window fits a 1280x800 screen, whatever the names of the models in its picker."""

from __future__ import annotations

import shutil
from pathlib import Path

from pytestqt.qtbot import QtBot

from mixdesk.core.machine.hardware import GIB, GpuInfo, HardwareInfo
from tests.helpers.window import make_window


def test_window_fits_a_1280_pixel_screen(
    qtbot: QtBot, tmp_path: Path, models: dict[str, Path]
) -> None:
    long_name = tmp_path / (
        "mixtral-8x7b-instruct-v0.1-with-a-very-long-file-name-" * 2 + "Q4_K_M.gguf"
    )
    shutil.copy(models["q4_k_m"], long_name)
    gpu = GpuInfo("NVIDIA GeForce RTX 4090 Laptop GPU with a long driver name", "cuda", GIB, GIB)
    hardware = HardwareInfo(
        ram_total_bytes=16 * GIB,
        ram_available_bytes=12 * GIB,
        physical_cores=2,
        logical_cores=2,
        gpus=[gpu],
        gpu_offload=True,
    )
    window = make_window(qtbot, tmp_path, hardware)
    window.set_hardware(hardware)  # the first-run page names the GPU
    assert window.minimumSizeHint().width() <= 1280
    window.select_model_path(str(long_name))
    qtbot.waitUntil(lambda: window.offload.plan is not None, timeout=10_000)
    with qtbot.waitSignal(window.modelLoaded, timeout=30_000):
        window.load_selected()
    window.set_sampling(max_tokens=8)
    with qtbot.waitSignal(window.answerFinished, timeout=30_000):
        window.send("Hello")
    assert window.minimumSizeHint().width() <= 1280  # placement words, speed figures
    assert window.minimumSizeHint().height() <= 800
    window.close()


def test_long_messages_never_widen_the_window(
    qtbot: QtBot, tmp_path: Path, models: dict[str, Path]
) -> None:
    """A Hub error in the Models tab widened the window from 1280 to 1688 px, a long load
    message in the status bar grew a 1024 px window to 1168 px: long texts elide or wrap, and
    the first size fits the screen's available geometry."""
    from PySide6.QtGui import QGuiApplication

    from mixdesk.ui.main_window import first_size

    window = make_window(qtbot, tmp_path, CPU_ONLY)
    screen = QGuiApplication.primaryScreen().availableGeometry()
    wanted = first_size()
    assert wanted.width() <= screen.width() and wanted.height() <= screen.height()
    assert window.minimumSizeHint().width() <= 1024  # so a 1024x700 screen holds it
    long = "The Hugging Face Hub could not be reached (" + "x" * 400 + "); check the network."
    window.manager.status.setText(long)
    window.notify(long)
    window.statusBar().showMessage(long)
    window.model_bar.setToolTip(long)
    for tab in (window.manager, window.offload):
        window.tabs.setCurrentWidget(tab)
        qtbot.waitExposed(tab)
    assert window.minimumSizeHint().width() <= 1024, window.minimumSizeHint()
    window.close()


CPU_ONLY = HardwareInfo(
    ram_total_bytes=16 * GIB, ram_available_bytes=12 * GIB, physical_cores=2, logical_cores=2
)
