"""The Hardware tab's workers: other machines' GPUs (``mixdesk worker``) to spread a model over.

Each worker is checked by a short-lived child process (:func:`~mixdesk.core.machine.rpc_worker.probe_in_child`:
MixDesk's handshake, the versions, free memory and a link-speed probe), started from a task
thread, so the window never waits on the network and nothing of llama.cpp's RPC ever runs in
the app's process. A worker that answered becomes an offload device of the plan; the list is
kept in the settings.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from mixdesk.core.machine import worker_security as security
from mixdesk.core.machine.hardware import GpuInfo
from mixdesk.core.machine.rpc_worker import WorkerInfo, probe_in_child
from mixdesk.core.machine.worker_channel import DEFAULT_PORT, parse_endpoint
from mixdesk.core.workspace.settings import Settings
from mixdesk.errors import InvalidArgumentError, user_message
from mixdesk.ui.threads import BackgroundTask

log = logging.getLogger(__name__)

Probe = Callable[[str], WorkerInfo]


def _probe_task(endpoint: str, probe: Probe, **_task: object) -> WorkerInfo:
    return probe(endpoint)


class WorkersPanel(QWidget):
    """Add, remove and test workers; each row shows the worker's device and free memory.

    Signals:
        workersChanged(list): the workers that answered, as offload devices (``GpuInfo``).
        checked(str): a worker's check ended (its endpoint), whatever the outcome.
        message(str): a sentence for the user (a bad address).
    """

    workersChanged = Signal(list)
    checked = Signal(str)
    message = Signal(str)

    def __init__(
        self,
        settings: Settings,
        *,
        probe: Probe = probe_in_child,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.settings = settings
        self._probe = probe
        self._found: dict[str, WorkerInfo] = {}
        self._tasks: list[BackgroundTask] = []
        self._build()
        for endpoint in settings.workers:
            self._add_row(endpoint)
            self.test(endpoint)

    def _build(self) -> None:
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        title = QLabel(
            "<b>Workers</b>: GPUs of other machines running <code>mixdesk worker</code>. Each "
            "lets in only holders of its secret: copy the secret file it printed to "
            f"<code>{html.escape(str(security.default_secret_file()))}</code> here (or set "
            f"<code>{security.SECRET_FILE_ENV}</code>). Off this machine the link is TLS; "
            "the worker's certificate is pinned on first use."
        )
        title.setWordWrap(True)
        self.list = QListWidget()
        self.address = QLineEdit()
        self.address.setPlaceholderText(f"HOST:PORT, e.g. 192.168.1.20:{DEFAULT_PORT}")
        self.add_button = QPushButton("Add")
        self.remove_button = QPushButton("Remove")
        self.test_button = QPushButton("Test connection")
        row = QHBoxLayout()
        row.addWidget(self.address, 1)
        for button in (self.add_button, self.remove_button, self.test_button):
            row.addWidget(button)
        layout.addWidget(title)
        layout.addWidget(self.list)
        layout.addLayout(row)
        self.add_button.clicked.connect(lambda: self.add(self.address.text()))
        self.address.returnPressed.connect(lambda: self.add(self.address.text()))
        self.remove_button.clicked.connect(self._remove_selected)
        self.test_button.clicked.connect(self._test_selected)

    # -- what the window uses -----------------------------------------------------------

    def workers(self) -> list[GpuInfo]:
        """The workers that answered, as offload devices, in the list's order."""
        return [self._found[e].as_gpu() for e in self.endpoints() if e in self._found]

    def endpoints(self) -> list[str]:
        """Every worker in the list (answered or not)."""
        return [str(self.list.item(i).data(256)) for i in range(self.list.count())]

    def add(self, text: str) -> None:
        """Add the worker at ``text`` (HOST:PORT) and check it."""
        endpoint = text.strip()
        try:
            parse_endpoint(endpoint)
        except InvalidArgumentError as err:
            self.message.emit(str(err))
            return
        if endpoint not in self.endpoints():
            self._add_row(endpoint)
            self._save()
        self.address.clear()
        self.test(endpoint)

    def remove(self, endpoint: str) -> None:
        """Take the worker out (a model loaded with it keeps it until it is loaded again)."""
        for i in range(self.list.count()):
            if self.list.item(i).data(256) == endpoint:
                self.list.takeItem(i)
                break
        self._found.pop(endpoint, None)
        self._save()
        self.workersChanged.emit(self.workers())

    def test(self, endpoint: str) -> None:
        """Check ``endpoint`` again in a child process; its row says what it found."""
        self._set_row(endpoint, "checking…")
        task = BackgroundTask(_probe_task, endpoint, self._probe)
        task.finished.connect(self._answered)
        task.failed.connect(lambda err, e=endpoint: self._failed(e, err))
        self._tasks = [t for t in self._tasks if t.runner_thread.isRunning()] + [task]
        task.start()

    def shutdown(self) -> None:
        """Wait for running checks (the window is closing)."""
        for task in self._tasks:
            task.runner_thread.quit()
            task.runner_thread.wait(10_000)

    # -- rows ---------------------------------------------------------------------------

    def _add_row(self, endpoint: str) -> None:
        item = QListWidgetItem(endpoint)
        item.setData(256, endpoint)
        self.list.addItem(item)

    def _set_row(self, endpoint: str, text: str) -> None:
        for i in range(self.list.count()):
            item = self.list.item(i)
            if item.data(256) == endpoint:
                item.setText(f"{endpoint}: {text}")

    def row_text(self, endpoint: str) -> str:
        """What the row of ``endpoint`` says."""
        for i in range(self.list.count()):
            if self.list.item(i).data(256) == endpoint:
                return self.list.item(i).text()
        return ""

    def _answered(self, info: WorkerInfo) -> None:
        if info.endpoint not in self.endpoints():
            return  # removed while it was being checked
        self._found[info.endpoint] = info
        self._set_row(info.endpoint, info.summary().split(": ", 1)[1])
        self.workersChanged.emit(self.workers())
        self.checked.emit(info.endpoint)

    def _failed(self, endpoint: str, err: BaseException) -> None:
        self._found.pop(endpoint, None)
        self._set_row(endpoint, user_message(err))
        self.workersChanged.emit(self.workers())
        self.checked.emit(endpoint)

    def _selected(self) -> list[str]:
        return [str(item.data(256)) for item in self.list.selectedItems()]

    def _remove_selected(self) -> None:
        for endpoint in self._selected():
            self.remove(endpoint)

    def _test_selected(self) -> None:
        for endpoint in self._selected() or self.endpoints():
            self.test(endpoint)

    def _save(self) -> None:
        self.settings.workers = self.endpoints()
        try:
            self.settings.save()
        except OSError as err:
            self.message.emit(user_message(err))
