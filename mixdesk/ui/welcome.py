"""The first-run page: what this machine can run, one button to get it, and the local options.

Shown in the chat area while the library is empty. The catalog is planned for this machine
in a worker thread (:func:`mixdesk.core.onboarding.first_run.rank_catalog`, remote headers only); the
download runs in another (:func:`mixdesk.core.hub.pull.pull`). Nothing here touches the network
or the disk on the GUI thread.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QFont
from PySide6.QtWidgets import (
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from mixdesk.core.gguf.profile import ModelProfile
from mixdesk.core.hub.api import HubModel
from mixdesk.core.hub.catalog import CatalogModel
from mixdesk.core.hub.download_http import DownloadProgress
from mixdesk.core.hub.library import Library
from mixdesk.core.hub.pull import PullResult, pull
from mixdesk.core.machine.hardware import HardwareInfo, format_bytes, format_rate
from mixdesk.core.onboarding.first_run import (
    Candidate,
    FirstRunReport,
    download_words,
    rank_catalog,
)
from mixdesk.core.planning.calibration import Calibration
from mixdesk.core.planning.words import verdict
from mixdesk.core.workspace.settings import Settings
from mixdesk.ui.plain import plain
from mixdesk.ui.threads import BackgroundTask
from mixdesk.ui.widgets import readable_headers

#: The one line the page shows while the Hub is out of reach (beside it: Retry).
OFFLINE_LINE = (
    "No connection to the Hugging Face Hub: the sizes and verdicts below come from the "
    "built-in catalog; downloads wait for the connection."
)
#: How to get a model file without the Hub (shown while offline).
ELSEWHERE_LINE = (
    "To get a file another way: download a .gguf file elsewhere (in a browser, from "
    "huggingface.co, or on another computer), then press “Open a .gguf file…”."
)


def machine_words(hw: HardwareInfo) -> str:
    """This machine in one line: the GPU and its free VRAM (or none), and RAM."""
    ram = f"RAM {format_bytes(hw.ram_total_bytes)} ({format_bytes(hw.ram_available_bytes)} free)"
    gpus = [g for g in hw.gpus if g.backend != "rpc"]
    if not gpus:
        return f"This machine: no usable GPU · {ram}"
    gpu = gpus[0]
    build = "" if hw.gpu_offload is not False else " (this llama.cpp build cannot use it yet)"
    return (
        f"This machine: {gpu.name}, {format_bytes(gpu.free_bytes)} free of "
        f"{format_bytes(gpu.total_bytes)}{build} · {ram}"
    )


def _rank_task(
    hardware: HardwareInfo,
    calibration: Calibration,
    catalog: Sequence[CatalogModel] | None,
    profiles: dict[HubModel, ModelProfile],
    *,
    report: Any,
    cancel: threading.Event,
) -> FirstRunReport:
    return rank_catalog(
        hardware,
        calibration=calibration,
        catalog=catalog,
        profiles=profiles,
        report=report,
        cancel=cancel,
    )


def _pull_task(
    candidate: Candidate, library: Library, *, report: Any, cancel: threading.Event
) -> PullResult:
    return pull(
        candidate.repo_id,
        filename=candidate.model.filename,
        library=library,
        on_progress=report,
        cancel=cancel,
    )


#: The model column's width (its long names wrap onto a second line).
NAME_WIDTH = 230


def _choice_table(columns: Sequence[str]) -> QTableWidget:
    """A read-only table of rows to choose one of."""
    table = QTableWidget(0, len(columns))
    table.setHorizontalHeaderLabels(list(columns))
    readable_headers(table)
    table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
    table.setSelectionMode(QTableWidget.SelectionMode.SingleSelection)
    table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
    table.verticalHeader().hide()
    return table


class WelcomePage(QWidget):
    """The page itself: the machine, the ranked catalog, download progress, local options.

    Signals:
        downloadRequested(object): the user wants this :class:`Candidate`.
        openFileRequested(): "Open a .gguf file".
        connectRequested(): "Connect to a server".
        calibrateRequested(): "Measure this machine" (the speeds shown are estimates until then).
        retryRequested(): "Retry" (the Hub was out of reach).
    """

    downloadRequested = Signal(object)
    openFileRequested = Signal()
    connectRequested = Signal()
    calibrateRequested = Signal()
    retryRequested = Signal()

    COLUMNS = ("Model", "Download", "On this machine")

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.candidates: list[Candidate] = []
        self.speed_bps = 0.0
        self.offline = False
        title = QLabel("Welcome to MixDesk")
        font = QFont(title.font())
        font.setPointSizeF(font.pointSizeF() * 1.6)
        font.setBold(True)
        title.setFont(font)
        self.machine = plain(QLabel("Detecting this machine…"))  # GPU names come from drivers
        self.machine.setWordWrap(True)  # a long GPU name must not widen the window
        self.status = plain(QLabel(""))
        self.status.setWordWrap(True)
        self.retry_button = QPushButton("Retry")
        self.retry_button.setToolTip("Ask the Hugging Face Hub again")
        self.retry_button.hide()
        self.elsewhere = plain(QLabel(ELSEWHERE_LINE))
        self.elsewhere.setWordWrap(True)
        self.elsewhere.hide()
        self.table = _choice_table(self.COLUMNS)
        # the verdict takes the spare width and wraps, the name a fixed share and wraps: no
        # sideways scrolling beside the offload panel at 1024 or 1280 px
        readable_headers(self.table, stretch=2)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Interactive)
        self.table.setColumnWidth(0, NAME_WIDTH)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.download_button = QPushButton("Download and load")
        self.download_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.hide()
        self.open_button = QPushButton("Open a .gguf file…")
        self.connect_button = QPushButton("Connect to a server…")
        self.speeds = plain(QLabel(""))
        self.speeds.setWordWrap(True)
        self.calibrate_button = QPushButton("Measure this machine (under a minute)")
        self._lay_out(title)
        self._connect()

    def _lay_out(self, title: QLabel) -> None:
        layout = QVBoxLayout(self)
        for w in (title, self.machine):
            layout.addWidget(w)
        status = QHBoxLayout()  # the one status line; Retry beside it while offline
        status.addWidget(self.status, 1)
        status.addWidget(self.retry_button)
        layout.addLayout(status)
        layout.addWidget(self.table, 1)
        speeds = QHBoxLayout()
        speeds.addWidget(self.speeds, 1)
        speeds.addWidget(self.calibrate_button)
        layout.addLayout(speeds)
        row = QHBoxLayout()
        row.addWidget(self.download_button)
        row.addWidget(self.progress, 1)
        layout.addLayout(row)
        layout.addWidget(QLabel("Or use what you have:"))
        layout.addWidget(self.elsewhere)
        local = QHBoxLayout()
        local.addWidget(self.open_button)
        local.addWidget(self.connect_button)
        local.addStretch(1)
        layout.addLayout(local)

    def _connect(self) -> None:
        self.download_button.clicked.connect(self._download_clicked)
        self.open_button.clicked.connect(lambda _c=False: self.openFileRequested.emit())
        self.connect_button.clicked.connect(lambda _c=False: self.connectRequested.emit())
        self.calibrate_button.clicked.connect(lambda _c=False: self.calibrateRequested.emit())
        self.retry_button.clicked.connect(lambda _c=False: self.retryRequested.emit())
        self.table.itemSelectionChanged.connect(self._selection_changed)

    def show_calibration(self, words: str, measured: bool) -> None:
        """Say whether the speeds in the table are measured; offer to measure them if not."""
        self.speeds.setText(words)
        self.calibrate_button.setVisible(not measured)
        self.calibrate_button.setEnabled(True)

    def show_calibrating(self, text: str) -> None:
        """A measuring is running (the page's verdicts are planned again when it ends)."""
        self.speeds.setText(text)
        self.calibrate_button.setEnabled(False)

    def show_machine(self, hw: HardwareInfo) -> None:
        """Describe the machine the verdicts are for."""
        self.machine.setText(machine_words(hw))

    def show_checking(self) -> None:
        """The catalog is being planned."""
        self.status.setText("Reading the catalog's file headers to see what fits this machine…")
        self.retry_button.setEnabled(False)  # one ranking at a time
        self.table.setRowCount(0)
        self.candidates = []

    def show_report(self, report: FirstRunReport) -> None:
        """Show the ranked catalog, fastest for this machine first; while the Hub is out of
        reach, the built-in files with one line saying so, Retry, and another way to a file."""
        self.candidates = list(report.candidates)
        self.offline = report.offline
        self.table.setRowCount(len(self.candidates))
        self.retry_button.setVisible(report.offline)
        self.retry_button.setEnabled(True)
        self.elsewhere.setVisible(report.offline)
        self.table.setVisible(bool(self.candidates))
        self.download_button.setVisible(not report.offline)
        for i, c in enumerate(self.candidates):
            name = f"{c.title} · {c.model.quant or c.model.filename}"
            cells = (
                ("★ recommended · " if c.recommended else "") + name,
                download_words(c.size, self.speed_bps),
                verdict(c.plan, c.problem),
            )
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(text)
                if c.recommended:
                    bold = QFont(item.font())
                    bold.setBold(True)
                    item.setFont(bold)
                self.table.setItem(i, col, item)
        best = next((i for i, c in enumerate(self.candidates) if c.recommended), -1)
        if report.offline:
            self.status.setText(OFFLINE_LINE)
            self.status.setToolTip(report.problem)
        else:
            self.status.setToolTip("")
            self.status.setText(
                "Fastest on this machine first; the recommended file is the largest that fits "
                "this machine's RAM and VRAM at a useful speed."
                if best >= 0
                else "Nothing in the catalog fits this machine; open a smaller model file."
            )
        if best >= 0:
            self.table.selectRow(best)
        self._selection_changed()

    def verdicts(self) -> list[str]:
        """The verdict column, top to bottom (tests and screenshots)."""
        items = (self.table.item(i, 2) for i in range(self.table.rowCount()))
        return [item.text() if item is not None else "" for item in items]

    def selected(self) -> Candidate | None:
        """The chosen file."""
        row = self.table.currentRow()
        return self.candidates[row] if 0 <= row < len(self.candidates) else None

    def _selection_changed(self) -> None:
        c = self.selected()
        ok = c is not None and c.fits and not self.offline
        self.download_button.setEnabled(ok and not self.progress.isVisible())
        quant = (c.model.quant or c.model.filename) if c is not None else ""
        self.download_button.setText(f"Download {quant} and load it" if ok else "Download")

    def _download_clicked(self) -> None:
        c = self.selected()
        if c is not None and c.fits and not self.offline:
            self.downloadRequested.emit(c)

    def show_progress(self, p: DownloadProgress | None, text: str = "") -> None:
        """Download progress (None: no download running) and a line about it."""
        self.progress.setVisible(p is not None)
        if p is not None:
            self.progress.setValue(int(1000 * p.done_bytes / max(p.total_bytes, 1)))
            text = text or (
                f"{p.phase}: {format_bytes(p.done_bytes)} of {format_bytes(p.total_bytes)} "
                f"at {format_rate(p.speed_bps)}"
            )
        if text:
            self.status.setText(text)
        self._selection_changed()


class FirstRun(QObject):
    """Plans the catalog for the welcome page and downloads the chosen file, off the GUI thread.

    Args:
        page: the welcome page.
        settings: the last measured download speed is kept there.
        run: starts a :class:`BackgroundTask` (the model controller's ``run``, which stops it
            when the window closes) with the function to call on its result.
        library: where downloads go (a callable: the library can move).
        catalog: the models to rank (default: the shipped catalog).

    Signals:
        ranked(object): the :class:`FirstRunReport` is shown.
        downloaded(str, int): the file is in the library: its path, and the planned
            ``n_gpu_layers`` to load it with.

    A failed download reaches the user through ``run``'s own failure channel.
    """

    ranked = Signal(object)
    downloaded = Signal(str, int)

    def __init__(
        self,
        page: WelcomePage,
        settings: Settings,
        *,
        run: Any,
        library: Any,
        catalog: Sequence[CatalogModel] | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.page = page
        self.settings = settings
        self.catalog = catalog
        self._run = run
        self._library = library
        self._last: DownloadProgress | None = None
        #: What this machine measured (the window keeps it current).
        self.calibration = Calibration()
        #: The machine the page was last planned for.
        self.hardware: HardwareInfo | None = None
        #: Profiles read from remote headers, kept for ranking again without the network
        #: (written by the ranking thread only, one ranking at a time).
        self._profiles: dict[HubModel, ModelProfile] = {}
        page.downloadRequested.connect(self.download)
        page.retryRequested.connect(self.retry)

    def start(self, hardware: HardwareInfo) -> None:
        """Plan the catalog for ``hardware`` (in a worker thread), ranked by the plans'
        predicted speeds (:func:`~mixdesk.core.onboarding.first_run.rank_key`)."""
        self.hardware = hardware
        self.page.speed_bps = self.settings.download_speed_bps
        self.page.show_machine(hardware)
        self.page.show_checking()
        task = BackgroundTask(_rank_task, hardware, self.calibration, self.catalog, self._profiles)
        self._run(task, self._ranked)

    def retry(self) -> None:
        """Ask the Hub again (the page was offline)."""
        if self.hardware is not None:
            self.start(self.hardware)

    def _ranked(self, report: FirstRunReport) -> None:
        self.page.show_report(report)
        self.ranked.emit(report)

    def download(self, candidate: Candidate) -> None:
        """Download ``candidate`` into the library (in a worker thread), then :attr:`downloaded`."""
        task = BackgroundTask(_pull_task, candidate, self._library())
        task.progress.connect(self._progress)
        task.failed.connect(self._failed)
        self.page.show_progress(
            DownloadProgress(candidate.model.filename, 0, candidate.size, 0.0, None, "starting"),
            f"Downloading {candidate.model.filename}…",
        )
        plan = candidate.plan
        self._run(task, lambda result: self._done(result, plan.n_gpu_layers if plan else 0))

    def _progress(self, p: DownloadProgress) -> None:
        self._last = p
        self.page.show_progress(p)

    def _done(self, result: PullResult, n_gpu_layers: int) -> None:
        if self._last is not None and self._last.speed_bps > 0:
            self.settings.download_speed_bps = self._last.speed_bps
            self.settings.save()
        self.page.show_progress(None, f"{result.entry.name} is ready; loading it…")
        self.downloaded.emit(result.entry.path, n_gpu_layers)

    def _failed(self, err: BaseException) -> None:
        self.page.show_progress(None, "The download stopped; press the button to resume it.")
