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

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QFont
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from mixdesk.core.hub.catalog import CatalogModel
from mixdesk.core.hub.download_http import DownloadProgress
from mixdesk.core.hub.library import Library
from mixdesk.core.hub.pull import PullResult, pull
from mixdesk.core.machine.hardware import HardwareInfo, format_bytes
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

OFFLINE_LINE = "No connection to the Hugging Face Hub: open a model file or connect to a server."


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
    *,
    report: Any,
    cancel: threading.Event,
) -> FirstRunReport:
    return rank_catalog(
        hardware, calibration=calibration, catalog=catalog, report=report, cancel=cancel
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


class WelcomePage(QWidget):
    """The page itself: the machine, the ranked catalog, download progress, local options.

    Signals:
        downloadRequested(object): the user wants this :class:`Candidate`.
        openFileRequested(): "Open a .gguf file".
        connectRequested(): "Connect to a server".
        calibrateRequested(): "Measure this machine" (the speeds shown are estimates until then).
    """

    downloadRequested = Signal(object)
    openFileRequested = Signal()
    connectRequested = Signal()
    calibrateRequested = Signal()

    COLUMNS = ("Model", "Download", "On this machine")

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.candidates: list[Candidate] = []
        self.speed_bps = 0.0
        title = QLabel("Welcome to MixDesk")
        font = QFont(title.font())
        font.setPointSizeF(font.pointSizeF() * 1.6)
        font.setBold(True)
        title.setFont(font)
        self.machine = plain(QLabel("Detecting this machine…"))  # GPU names come from drivers
        self.machine.setWordWrap(True)  # a long GPU name must not widen the window
        self.status = plain(QLabel(""))
        self.status.setWordWrap(True)
        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(list(self.COLUMNS))
        readable_headers(self.table)
        self.table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QTableWidget.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        self.download_button = QPushButton("Download and load")
        self.download_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.hide()
        self.open_button = QPushButton("Open a .gguf file…")
        self.connect_button = QPushButton("Connect to a server…")
        self.speeds = plain(QLabel(""))
        self.speeds.setWordWrap(True)
        self.calibrate_button = QPushButton("Measure this machine (about 30 s)")

        layout = QVBoxLayout(self)
        for w in (title, self.machine, self.status):
            layout.addWidget(w)
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
        local = QHBoxLayout()
        local.addWidget(self.open_button)
        local.addWidget(self.connect_button)
        local.addStretch(1)
        layout.addLayout(local)
        self._connect()

    def _connect(self) -> None:
        self.download_button.clicked.connect(self._download_clicked)
        self.open_button.clicked.connect(lambda _c=False: self.openFileRequested.emit())
        self.connect_button.clicked.connect(lambda _c=False: self.connectRequested.emit())
        self.calibrate_button.clicked.connect(lambda _c=False: self.calibrateRequested.emit())
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
        self.table.setRowCount(0)
        self.candidates = []

    def show_report(self, report: FirstRunReport) -> None:
        """Show the ranked catalog (or the one line saying the Hub is out of reach)."""
        self.candidates = list(report.candidates)
        self.table.setRowCount(len(self.candidates))
        if report.offline:
            self.status.setText(OFFLINE_LINE)
            self.table.hide()
            self.download_button.hide()
            return
        self.table.show()
        self.download_button.show()
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
        self.status.setText(
            "The recommended file is the largest that fits this machine's RAM and VRAM "
            "at a useful speed."
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
        ok = c is not None and c.fits
        self.download_button.setEnabled(ok and not self.progress.isVisible())
        quant = (c.model.quant or c.model.filename) if c is not None else ""
        self.download_button.setText(f"Download {quant} and load it" if ok else "Download")

    def _download_clicked(self) -> None:
        c = self.selected()
        if c is not None and c.fits:
            self.downloadRequested.emit(c)

    def show_progress(self, p: DownloadProgress | None, text: str = "") -> None:
        """Download progress (None: no download running) and a line about it."""
        self.progress.setVisible(p is not None)
        if p is not None:
            self.progress.setValue(int(1000 * p.done_bytes / max(p.total_bytes, 1)))
            text = text or (
                f"{p.phase}: {format_bytes(p.done_bytes)} of {format_bytes(p.total_bytes)} "
                f"at {p.speed_bps / 1e6:.1f} MB/s"
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
        page.downloadRequested.connect(self.download)

    def start(self, hardware: HardwareInfo) -> None:
        """Plan the catalog for ``hardware`` (in a worker thread)."""
        self.page.speed_bps = self.settings.download_speed_bps
        self.page.show_machine(hardware)
        self.page.show_checking()
        self._run(
            BackgroundTask(_rank_task, hardware, self.calibration, self.catalog), self._ranked
        )

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
