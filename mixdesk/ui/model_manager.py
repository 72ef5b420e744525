"""The model manager: catalog and any repo, fit badges before download, a download queue, the library.

A repository's files are ranked for this machine by the plans' predicted generation speed
(measured on this machine once it is calibrated; :mod:`mixdesk.core.onboarding.repo_files`).
While the Hub is out of reach the tab says so in one line with Retry, and a catalog entry
still shows its built-in files with sizes and the planner's verdicts; no dialog opens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from mixdesk.core.gguf.profile import ModelProfile
from mixdesk.core.hub.api import HubModel
from mixdesk.core.hub.catalog import CatalogModel, load_catalog
from mixdesk.core.hub.library import Library
from mixdesk.core.hub.pull import import_model
from mixdesk.core.machine.hardware import HardwareInfo, format_bytes
from mixdesk.core.onboarding.repo_files import (
    FileVerdict,
    RepoListing,
    list_repo_files,
    plan_files,
    ranked,
)
from mixdesk.core.planning.calibration import Calibration
from mixdesk.core.planning.words import fit_badge, speed_short
from mixdesk.errors import user_message
from mixdesk.ui.downloads import DownloadRow
from mixdesk.ui.plain import ask_yes_no, plain
from mixdesk.ui.threads import BackgroundTask
from mixdesk.ui.widgets import readable_headers

#: The Models tab's one line while the Hub is out of reach (beside it: Retry).
OFFLINE_WORDS = "No connection to the Hugging Face Hub"


def offline_line(listing: RepoListing) -> str:
    """What the tab says while the Hub is out of reach, in one line."""
    if listing.models:
        return f"{OFFLINE_WORDS}: the built-in catalog's files, planned for this machine."
    return f"{OFFLINE_WORDS}: {listing.repo_id} cannot be listed until it answers."


class ModelManager(QWidget):
    """Find, size up, download and manage models.

    Args:
        hardware: the machine files are planned for.
        library: where downloads go.
        catalog: the catalog's models (default: the built-in catalog).

    Signals:
        message(str): a sentence for the user (a download failed).
        downloadFinished(str): a model's library name.
        modelChosen(str): the user wants to load this path.
    """

    message = Signal(str)
    downloadFinished = Signal(str)
    modelChosen = Signal(str)

    def __init__(
        self,
        hardware: HardwareInfo,
        library: Library,
        parent: QWidget | None = None,
        *,
        catalog: Sequence[CatalogModel] | None = None,
    ) -> None:
        super().__init__(parent)
        self.hardware = hardware
        #: What this machine measured (:meth:`set_calibration` keeps it current).
        self.calibration = Calibration()
        #: Asks the user a yes/no question (before deleting a model's files).
        self.confirm: Callable[[str], bool] = self._ask
        self.library = library
        self.catalog_models = list(catalog) if catalog is not None else load_catalog()
        self.listing = RepoListing("")
        #: The listed models, in the order shown (best for this machine first).
        self.models: list[HubModel] = []
        self.verdicts: dict[str, FileVerdict] = {}
        self.rows: list[DownloadRow] = []
        self._tasks: list[BackgroundTask] = []
        self._profiles: dict[HubModel, ModelProfile] = {}
        self._planning: BackgroundTask | None = None
        self._generation = 0
        self._build()
        self._connect()
        self.refresh_library()

    def _build(self) -> None:
        self.catalog = _catalog_list(self.catalog_models)
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
        self.offline = plain(QLabel(""))  # the one offline line; Retry beside it
        self.offline.setWordWrap(True)
        self.retry_button = QPushButton("Retry")
        self.retry_button.setToolTip("Ask the Hugging Face Hub again")
        self.download_button = QPushButton("Download")
        self.queue = QVBoxLayout()
        self.library_list = QListWidget()
        self.load_button = QPushButton("Load")
        self.delete_button = QPushButton("Delete")
        self.import_button = QPushButton("Import .gguf…")
        self.status = plain(QLabel(""))  # messages may quote the Hub or a file
        self.status.setWordWrap(True)
        self._show_offline(False)

        top = QHBoxLayout()
        top.addWidget(self.repo, 1)
        top.addWidget(self.list_button)
        offline = QHBoxLayout()
        offline.addWidget(self.offline, 1)
        offline.addWidget(self.retry_button)
        lib_buttons = QHBoxLayout()
        for b in (self.load_button, self.delete_button, self.import_button):
            lib_buttons.addWidget(b)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("<b>Catalog</b>"))
        layout.addWidget(self.catalog, 1)
        layout.addLayout(top)
        layout.addLayout(offline)
        layout.addWidget(self.files, 2)
        layout.addWidget(self.download_button)
        layout.addWidget(QLabel("<b>Downloads</b>"))
        layout.addLayout(self.queue)
        layout.addWidget(QLabel("<b>Library</b>"))
        layout.addWidget(self.library_list, 1)
        layout.addLayout(lib_buttons)
        layout.addWidget(self.status)

    def _connect(self) -> None:
        self.catalog.currentItemChanged.connect(self._catalog_chosen)
        self.list_button.clicked.connect(lambda: self.list_repo(self.repo.text().strip()))
        self.repo.returnPressed.connect(lambda: self.list_repo(self.repo.text().strip()))
        self.retry_button.clicked.connect(lambda: self.list_repo(self.listing.repo_id))
        self.download_button.clicked.connect(self._download_selected)
        self.delete_button.clicked.connect(self._delete_selected)
        self.import_button.clicked.connect(self._import)
        self.load_button.clicked.connect(self._load_selected)

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
        """List a repository's models (off the GUI thread), then plan and rank them."""
        if not repo:
            return
        self.status.setText(f"Listing {repo}…")
        self.retry_button.setEnabled(False)
        task = BackgroundTask(
            lambda r, catalog, report, cancel: list_repo_files(r, catalog),
            repo,
            self.catalog_models,
        )
        task.finished.connect(self._show_listing)
        task.failed.connect(self._list_failed)
        self._run(task)

    def _show_offline(self, offline: bool, line: str = "", why: str = "") -> None:
        self.offline.setText(line)
        self.offline.setToolTip(why)
        self.offline.setVisible(offline)
        self.retry_button.setVisible(offline)
        self.retry_button.setEnabled(True)
        self.download_button.setEnabled(not offline)
        self.download_button.setToolTip("Downloads need the Hub" if offline else "")

    def _show_listing(self, listing: RepoListing) -> None:
        self.listing = listing
        self.verdicts = {}
        self._show_offline(listing.offline, offline_line(listing), listing.problem)
        self.status.setText(
            "" if listing.offline else f"{len(listing.models)} models in {listing.repo_id}"
        )
        self._fill_rows()
        self._plan()

    def _list_failed(self, err: BaseException) -> None:
        """The Hub answered, but not with files (missing, gated): said here, in the tab."""
        self._show_offline(False)
        self.status.setText(user_message(err))

    def set_calibration(self, calibration: Calibration) -> None:
        """Plan with what this machine measured: the listed files are planned and ranked
        again (from the headers already read: no network)."""
        self.calibration = calibration
        if self.listing.models:
            self._plan()

    def _plan(self) -> None:
        if self._planning is not None:
            self._planning.cancel_event.set()
        self._generation += 1
        generation = self._generation
        task = BackgroundTask(  # plan_files takes the task's report and cancel
            plan_files,
            self.listing,
            hardware=self.hardware,
            calibration=self.calibration,
            catalog=self.catalog_models,
            profiles=self._profiles,
        )
        task.progress.connect(lambda v: self._badge(v, generation))
        self._planning = self._run(task)

    def _badge(self, verdict: FileVerdict, generation: int) -> None:
        if generation == self._generation:  # not a verdict of an older listing or calibration
            self.verdicts[verdict.name] = verdict
            self._fill_rows()

    def _fill_rows(self) -> None:
        """Show the listed models, best for this machine first, keeping the selection."""
        row = self.files.currentRow()
        chosen = self.models[row].name if 0 <= row < len(self.models) else None
        self.models = ranked(self.listing.models, self.verdicts)
        self.files.setRowCount(len(self.models))
        for i, m in enumerate(self.models):
            parts = f" ({len(m.files)} parts)" if len(m.files) > 1 else ""
            verdict = self.verdicts.get(m.name)
            badge, speed = "reading header…", ""
            if verdict is not None and verdict.plan is not None:
                badge, speed = fit_badge(verdict.plan), speed_short(verdict.plan.speed)
            elif verdict is not None:
                badge = f"unknown ({verdict.problem})"
            for col, text in enumerate(
                (m.filename + parts, m.quant or "", format_bytes(m.size), badge, speed)
            ):
                item = QTableWidgetItem(text)
                item.setToolTip(text)
                self.files.setItem(i, col, item)
            if m.name == chosen:
                self.files.selectRow(i)

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
        if 0 <= row < len(self.models) and not self.listing.offline:
            self.download(self.listing.repo_id, self.models[row])

    def download(self, repo: str, model: HubModel) -> DownloadRow:
        """Queue and start a download (several can run at once)."""
        row = DownloadRow(self, repo, model)
        self.rows.append(row)
        self.queue.addWidget(row)
        row.start()
        return row

    def download_finished(self, name: str) -> None:
        """A download is in the library."""
        self.downloadFinished.emit(name)
        self.refresh_library()

    def download_failed(self, message: str) -> None:
        """A download stopped (its row offers Retry)."""
        self.message.emit(message)

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


def _catalog_list(catalog: Sequence[CatalogModel]) -> QListWidget:
    """The built-in catalog: title and repository of each entry."""
    widget = QListWidget()
    for entry in catalog:
        item = QListWidgetItem(f"{entry.title}\n{entry.repo_id}")
        item.setData(256, entry.repo_id)
        widget.addItem(item)
    return widget
