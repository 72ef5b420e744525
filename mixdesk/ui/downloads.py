"""One download in the Models tab's queue: progress, speed, ETA, pause / resume / cancel."""

from __future__ import annotations

import threading
from typing import Any, Protocol

from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QWidget

from mixdesk.core.hub.api import HubModel
from mixdesk.core.hub.download_http import DownloadCancelled, DownloadProgress
from mixdesk.core.hub.library import Library
from mixdesk.core.hub.pull import PullResult, pull
from mixdesk.core.machine.hardware import format_bytes, format_rate
from mixdesk.errors import user_message
from mixdesk.ui.plain import plain
from mixdesk.ui.threads import BackgroundTask


class DownloadOwner(Protocol):
    """What a download row needs of the Models tab."""

    library: Library

    def download_finished(self, name: str) -> None:
        """A model's files are in the library (its library name)."""

    def download_failed(self, message: str) -> None:
        """A download stopped: the sentence for the user."""

    def discard_partial(self, model: HubModel) -> None:
        """Delete what a cancelled download left."""


def _pull_task(
    repo: str, filename: str, library: Library, *, report: Any, cancel: threading.Event
) -> PullResult:
    return pull(repo, filename=filename, library=library, on_progress=report, cancel=cancel)


class DownloadRow(QWidget):
    """One download in the queue: progress, speed, ETA, pause/resume/cancel."""

    def __init__(self, owner: DownloadOwner, repo: str, model: HubModel) -> None:
        super().__init__()
        self.owner = owner
        self.repo = repo
        self.model = model
        self.task: BackgroundTask | None = None
        self.label = plain(QLabel(f"{model.filename} ({format_bytes(model.size)})"))
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.detail = plain(QLabel("waiting"))
        self.pause = QPushButton("Pause")
        self.cancel = QPushButton("Cancel")
        row = QHBoxLayout(self)
        row.addWidget(self.label, 2)
        row.addWidget(self.bar, 2)
        row.addWidget(self.detail, 2)
        row.addWidget(self.pause)
        row.addWidget(self.cancel)
        self.pause.clicked.connect(self._pause_or_resume)
        self.cancel.clicked.connect(self._cancel)
        self._discard = False

    def start(self) -> None:
        self.task = BackgroundTask(_pull_task, self.repo, self.model.filename, self.owner.library)
        self.task.progress.connect(self._progress)
        self.task.finished.connect(self._finished)
        self.task.failed.connect(self._failed)
        self.pause.setText("Pause")
        self.detail.setText("starting")
        self.task.start()

    def _progress(self, p: DownloadProgress) -> None:
        self.bar.setValue(int(1000 * p.done_bytes / max(p.total_bytes, 1)))
        eta = f", {int(p.eta_s // 60)}m{int(p.eta_s % 60):02d}s left" if p.eta_s else ""
        self.detail.setText(
            f"{p.phase}: {format_bytes(p.done_bytes)} at {format_rate(p.speed_bps)}{eta}"
        )

    def _finished(self, result: PullResult) -> None:
        self.bar.setValue(1000)
        self.detail.setText("done" + (" (converted)" if result.converted else ""))
        self.pause.setEnabled(False)
        self.cancel.setEnabled(False)
        self.owner.download_finished(result.entry.name)

    def _failed(self, err: BaseException) -> None:
        if self._discard:
            self.detail.setText("cancelled")
            self.owner.discard_partial(self.model)
            return
        if isinstance(err, DownloadCancelled):  # the user paused it
            self.detail.setText("paused")
            self.pause.setText("Resume")
            return
        self.detail.setText("failed")
        self.pause.setText("Retry")
        self.owner.download_failed(user_message(err))

    def _pause_or_resume(self) -> None:
        if self.task is not None and self.task.runner_thread.isRunning():
            self.task.cancel_event.set()
        else:
            self.start()

    def _cancel(self) -> None:
        self._discard = True
        if self.task is not None and self.task.runner_thread.isRunning():
            self.task.cancel_event.set()
        else:
            self.owner.discard_partial(self.model)
            self.detail.setText("cancelled")
