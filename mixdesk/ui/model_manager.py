"""The model manager: catalog and any repo, fit badges before download, a download queue, the library."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from mixdesk.core.hub.api import HubModel, list_models
from mixdesk.core.hub.catalog import load_catalog
from mixdesk.core.hub.download_http import DownloadCancelled, DownloadProgress
from mixdesk.core.hub.library import Library
from mixdesk.core.hub.pull import PullResult, import_model, pull, remote_profile
from mixdesk.core.loading.choices import LoadChoices
from mixdesk.core.loading.service import make_plan
from mixdesk.core.machine.hardware import HardwareInfo, format_bytes, format_rate
from mixdesk.core.planning.calibration import Calibration
from mixdesk.core.planning.words import fit_badge, speed_short
from mixdesk.errors import user_message
from mixdesk.ui.plain import ask_yes_no, plain
from mixdesk.ui.threads import BackgroundTask
from mixdesk.ui.widgets import readable_headers


def _list_task(repo: str, *, report: Any, cancel: threading.Event) -> list[HubModel]:
    return list_models(repo)


def _badges_task(
    models: list[HubModel],
    hardware: HardwareInfo,
    calibration: Calibration,
    *,
    report: Any,
    cancel: threading.Event,
) -> int:
    done = 0
    for m in models:
        if cancel.is_set():
            break
        try:
            plan = make_plan(remote_profile(m), hardware, LoadChoices(), calibration=calibration)
            report((m.name, fit_badge(plan), speed_short(plan.speed)))
        except Exception as err:  # noqa: BLE001 - a badge that cannot be computed says so
            report((m.name, f"unknown ({type(err).__name__})", ""))
        done += 1
    return done


def _pull_task(
    repo: str, filename: str, library: Library, *, report: Any, cancel: threading.Event
) -> PullResult:
    return pull(repo, filename=filename, library=library, on_progress=report, cancel=cancel)


class DownloadRow(QWidget):
    """One download in the queue: progress, speed, ETA, pause/resume/cancel."""

    def __init__(self, manager: ModelManager, repo: str, model: HubModel) -> None:
        super().__init__()
        self.manager = manager
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
        self.task = BackgroundTask(_pull_task, self.repo, self.model.filename, self.manager.library)
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
        self.manager.downloadFinished.emit(result.entry.name)
        self.manager.refresh_library()

    def _failed(self, err: BaseException) -> None:
        if self._discard:
            self.detail.setText("cancelled")
            self.manager.discard_partial(self.model)
            return
        if isinstance(err, DownloadCancelled):  # the user paused it
            self.detail.setText("paused")
            self.pause.setText("Resume")
            return
        self.detail.setText("failed")
        self.pause.setText("Retry")
        self.manager.message.emit(user_message(err))

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
            self.manager.discard_partial(self.model)
            self.detail.setText("cancelled")


class ModelManager(QWidget):
    """Find, size up, download and manage models.

    Signals:
        message(str): a sentence for the user.
        downloadFinished(str): a model's library name.
        modelChosen(str): the user wants to load this path.
    """

    message = Signal(str)
    downloadFinished = Signal(str)
    modelChosen = Signal(str)

    def __init__(
        self, hardware: HardwareInfo, library: Library, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.hardware = hardware
        #: What this machine measured (the window keeps it current).
        self.calibration = Calibration()
        #: Asks the user a yes/no question (before deleting a model's files).
        self.confirm: Callable[[str], bool] = self._ask
        self.library = library
        self.models: list[HubModel] = []
        self.rows: list[DownloadRow] = []
        self._tasks: list[BackgroundTask] = []

        self.catalog = _catalog_list()
        self.repo = QLineEdit()
        self.repo.setPlaceholderText(
            "any Hub repository, e.g. TheBloke/Mixtral-8x7B-Instruct-v0.1-GGUF"
        )
        self.list_button = QPushButton("List files")
        self.files = QTableWidget(0, 5)
        self.files.setHorizontalHeaderLabels(
            ["File", "Quant", "Size", "Fit on this machine", "Expected speed"]
        )
        readable_headers(self.files)
        self.files.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.download_button = QPushButton("Download")
        self.queue = QVBoxLayout()
        self.library_list = QListWidget()
        self.load_button = QPushButton("Load")
        self.delete_button = QPushButton("Delete")
        self.import_button = QPushButton("Import .gguf…")
        self.status = plain(QLabel(""))  # messages may quote the Hub or a file

        top = QHBoxLayout()
        top.addWidget(self.repo, 1)
        top.addWidget(self.list_button)
        lib_buttons = QHBoxLayout()
        for b in (self.load_button, self.delete_button, self.import_button):
            lib_buttons.addWidget(b)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("<b>Catalog</b>"))
        layout.addWidget(self.catalog, 1)
        layout.addLayout(top)
        layout.addWidget(self.files, 2)
        layout.addWidget(self.download_button)
        layout.addWidget(QLabel("<b>Downloads</b>"))
        layout.addLayout(self.queue)
        layout.addWidget(QLabel("<b>Library</b>"))
        layout.addWidget(self.library_list, 1)
        layout.addLayout(lib_buttons)
        layout.addWidget(self.status)

        self.catalog.currentItemChanged.connect(self._catalog_chosen)
        self.list_button.clicked.connect(lambda: self.list_repo(self.repo.text().strip()))
        self.repo.returnPressed.connect(lambda: self.list_repo(self.repo.text().strip()))
        self.download_button.clicked.connect(self._download_selected)
        self.delete_button.clicked.connect(self._delete_selected)
        self.import_button.clicked.connect(self._import)
        self.load_button.clicked.connect(self._load_selected)
        self.refresh_library()

    # -- listing ------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop every download and lookup and wait for their threads (the window is closing)."""
        tasks = list(self._tasks) + [row.task for row in self.rows if row.task is not None]
        for task in tasks:
            task.cancel_event.set()
        for task in tasks:
            task.runner_thread.quit()
            task.runner_thread.wait(10_000)

    def _catalog_chosen(self, item: QListWidgetItem | None, _previous: object) -> None:
        if item is not None:
            self.repo.setText(str(item.data(256)))
            self.list_repo(str(item.data(256)))

    def _run(self, task: BackgroundTask) -> BackgroundTask:
        self._tasks = [t for t in self._tasks if t.runner_thread.isRunning()] + [task]
        task.start()
        return task

    def list_repo(self, repo: str) -> None:
        """List a repository's models (off the GUI thread), then their fit badges."""
        if not repo:
            return
        self.status.setText(f"Listing {repo}…")
        task = BackgroundTask(_list_task, repo)
        task.finished.connect(lambda models: self._show_models(repo, models))
        task.failed.connect(self._failed)
        self._run(task)

    def _show_models(self, repo: str, models: list[HubModel]) -> None:
        self.current_repo = repo
        self.models = models
        self.files.setRowCount(len(models))
        for i, m in enumerate(models):
            parts = f" ({len(m.files)} parts)" if len(m.files) > 1 else ""
            for col, text in enumerate(
                (m.filename + parts, m.quant or "", format_bytes(m.size), "reading header…")
            ):
                self.files.setItem(i, col, QTableWidgetItem(text))
        self.status.setText(f"{len(models)} models in {repo}")
        task = BackgroundTask(_badges_task, models, self.hardware, self.calibration)
        task.progress.connect(self._badge)
        task.failed.connect(self._failed)
        self._run(task)

    def _badge(self, item: tuple[str, str, str]) -> None:
        name, badge, speed = item
        for i, m in enumerate(self.models):
            if m.name == name:
                self.files.setItem(i, 3, QTableWidgetItem(badge))
                self.files.setItem(i, 4, QTableWidgetItem(speed))

    def speed_texts(self) -> list[str]:
        """The speed column: measured on this machine, or an estimate (tests and screenshots)."""
        items = (self.files.item(i, 4) for i in range(self.files.rowCount()))
        return [item.text() if item is not None else "" for item in items]

    def badge_texts(self) -> list[str]:
        """The fit column (tests and screenshots)."""
        items = (self.files.item(i, 3) for i in range(self.files.rowCount()))
        return [item.text() if item is not None else "" for item in items]

    def _failed(self, err: BaseException) -> None:
        message = user_message(err)
        self.status.setText(message)
        self.message.emit(message)

    # -- downloads ----------------------------------------------------------------------

    def _download_selected(self) -> None:
        row = self.files.currentRow()
        if 0 <= row < len(self.models):
            self.download(self.current_repo, self.models[row])

    def download(self, repo: str, model: HubModel) -> DownloadRow:
        """Queue and start a download (several can run at once)."""
        row = DownloadRow(self, repo, model)
        self.rows.append(row)
        self.queue.addWidget(row)
        row.start()
        return row

    def discard_partial(self, model: HubModel) -> None:
        from mixdesk.core.hub.download import Downloader

        for f in model.files:
            Downloader(self.library.root).discard(f)

    # -- library ------------------------------------------------------------------------

    def refresh_library(self) -> None:
        """Show the library."""
        self.library_list.clear()
        for e in self.library.entries():
            item = QListWidgetItem(
                f"{e.name}  ({format_bytes(e.size)})" + ("" if e.exists else "  [missing]")
            )
            item.setData(256, e.name)
            self.library_list.addItem(item)

    def _selected_entry_name(self) -> str | None:
        item = self.library_list.currentItem()
        return str(item.data(256)) if item is not None else None

    def _delete_selected(self) -> None:
        """Delete the selected model's files, once the user has confirmed, saying how much
        disk it frees (a 26 GB download must not go at one click)."""
        name = self._selected_entry_name()
        entry = self.library.get(name) if name else None
        if entry is None:
            return
        size = format_bytes(entry.size) if entry.size else "its files"
        question = (
            f"Delete {entry.name}? This removes it from the library and deletes its files, "
            f"freeing {size}; downloading it again takes as long as the first time."
        )
        if not self.confirm(question):
            return
        self.library.remove(entry.name)
        self.status.setText(f"Deleted {entry.name}; {size} freed.")
        self.refresh_library()

    def _ask(self, question: str) -> bool:
        return ask_yes_no(self, "Delete the model?", question)

    def _load_selected(self) -> None:
        name = self._selected_entry_name()
        entry = self.library.get(name) if name else None
        if entry is not None:
            self.modelChosen.emit(entry.path)

    def _import(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Import a GGUF model", str(Path.home()), "GGUF models (*.gguf)"
        )
        if path:
            task = BackgroundTask(
                lambda p, report, cancel: import_model(Path(p), library=self.library), path
            )
            task.finished.connect(lambda _e: self.refresh_library())
            task.failed.connect(self._failed)
            self._run(task)


def _catalog_list() -> QListWidget:
    """The built-in catalog: title and repository of each entry."""
    catalog = QListWidget()
    for entry in load_catalog():
        item = QListWidgetItem(f"{entry.title}\n{entry.repo_id}")
        item.setData(256, entry.repo_id)
        catalog.addItem(item)
    return catalog
