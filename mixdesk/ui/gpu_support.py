"""The banner for a GPU that the llama.cpp build leaves unused, with "Install GPU support"."""

from __future__ import annotations

import threading
from typing import Any

from PySide6.QtCore import QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import QHBoxLayout, QProgressBar, QPushButton, QVBoxLayout, QWidget

from mixdesk.core.machine import gpu_build
from mixdesk.core.machine.hardware import HardwareInfo
from mixdesk.errors import user_message
from mixdesk.ui.hardware_panel import unused_gpu_notice
from mixdesk.ui.threads import BackgroundTask
from mixdesk.ui.widgets import Banner


def _install_task(*, report: Any, cancel: threading.Event) -> str:
    return str(gpu_build.install_gpu_support(on_line=report, cancel=cancel))


class GpuSupportBar(QWidget):
    """Says when a GPU sits unused and rebuilds llama.cpp for it in the background: a busy
    bar while it builds (minutes), the build log one click away, the one missing piece when
    it fails. In a frozen bundle it points to the CUDA bundle instead.

    Signals:
        installed(): GPU support is in place; the next engine start uses it.
    """

    installed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.banner = Banner()
        self.install = QPushButton("Install GPU support")
        self.show_log = QPushButton("Build log")
        self.dismiss = QPushButton("Dismiss")
        self.dismiss.setToolTip("Hide this until MixDesk starts again.")
        #: The user dismissed the banner: it stays hidden for this session.
        self.dismissed = False
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)  # a build says nothing about how far it is
        self.busy.setMaximumWidth(160)
        row = QHBoxLayout()
        row.addWidget(self.install)
        row.addWidget(self.busy)
        row.addWidget(self.show_log)
        row.addStretch(1)
        row.addWidget(self.dismiss)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.banner)
        layout.addLayout(row)
        self.task: BackgroundTask | None = None
        self.install.clicked.connect(self.start)
        self.show_log.clicked.connect(self._open_log)
        self.dismiss.clicked.connect(self._dismiss)
        self._set_state(building=False, log=False)
        self.hide()

    def show_for(self, hw: HardwareInfo) -> None:
        """Show the banner (and the button, in a source setup) when ``hw`` has an unused GPU."""
        text = unused_gpu_notice(hw)
        if text and gpu_build.bootstrap_script() is None:
            text = f"{text}\n{gpu_build.CUDA_BUNDLE_HINT}"
        self.banner.show_text(text)
        self.install.setVisible(bool(text) and gpu_build.bootstrap_script() is not None)
        self.setVisible(bool(text) and not self.dismissed)

    def _dismiss(self) -> None:
        self.dismissed = True
        self.hide()

    def start(self) -> None:
        """Rebuild llama-cpp-python for this GPU, off the GUI thread."""
        if self.task is not None:
            return
        self.task = BackgroundTask(_install_task)
        self.task.progress.connect(
            lambda line: self.banner.show_text(f"Installing GPU support: {line}")
        )
        self.task.finished.connect(self._done)
        self.task.failed.connect(self._failed)
        self._set_state(building=True, log=True)
        self.banner.show_text("Installing GPU support (this builds llama.cpp: several minutes)…")
        self.task.start()

    def _done(self, _log: object) -> None:
        self.task = None
        self._set_state(building=False, log=True)
        self.install.hide()
        self.banner.show_text("GPU support is installed: load the model again to use the GPU.")
        self.installed.emit()

    def _failed(self, err: BaseException) -> None:
        self.task = None
        self._set_state(building=False, log=True)
        self.banner.show_text(user_message(err))

    def _set_state(self, *, building: bool, log: bool) -> None:
        self.install.setEnabled(not building)
        self.busy.setVisible(building)
        self.show_log.setVisible(log)

    def _open_log(self) -> None:
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(gpu_build.build_log_path())))
