"""The model answers come from: a local file (planned and loaded in the one engine) or a
remote endpoint; and the model row (picker, Open, Endpoint, Load, progress) that picks it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from mixdesk.core.chat.words import BASE_MODEL_WORDS
from mixdesk.core.engine import ModelInfo
from mixdesk.core.gguf.profile import ModelProfile, profile_local
from mixdesk.core.hub.library import Library, models_dir
from mixdesk.core.loading.load import LoadOutcome
from mixdesk.core.loading.model import ResolvedModel, resolve_model
from mixdesk.core.loading.service import LoadRequest
from mixdesk.core.machine.hardware import format_bytes
from mixdesk.core.workspace.endpoints import Endpoint, normalize_url, remote_model_info
from mixdesk.core.workspace.settings import Settings, save_endpoint_key
from mixdesk.ui.plain import plain
from mixdesk.ui.threads import BackgroundTask, EngineController
from mixdesk.ui.widgets import compact

log = logging.getLogger(__name__)


def model_info_line(outcome: LoadOutcome) -> str:
    """The loaded model in one line: placement, context, template, and a base-model warning."""
    info = outcome.info
    line = (
        f"{info.name}: {outcome.setup.plan.placement_words}, context {info.n_ctx}, "
        f"loaded in {info.load_s:.1f} s, chat template: {info.chat_template_source}"
    )
    return f"{line} · {BASE_MODEL_WORDS}" if info.base_model else line


def _read_model(
    path: str, library: Library, *, report: Any, cancel: threading.Event
) -> tuple[ResolvedModel, ModelProfile]:
    model = resolve_model(path, library=library)  # resolved and checked once, here
    return model, profile_local(model.path)


def _existing(path: str, *, report: Any, cancel: threading.Event) -> str:
    return path if path and Path(path).is_file() else ""


def _open_library(root: Path, *, report: Any, cancel: threading.Event) -> Library:
    return Library(root)


class ModelController(QObject):
    """Chooses, plans, loads and forgets the model; remembers the last one and the endpoints.

    Disk work (reading a header, opening the library) runs in :class:`BackgroundTask` threads and
    loads run in the engine's thread: nothing here blocks the GUI thread.

    Args:
        engine: the handle on the engine's thread.
        library: the model library.
        settings: the settings (the last model and the endpoints are kept there).

    Attributes:
        info: the model answers come from (a remote one for an endpoint), or None.
        endpoint: the chosen endpoint, or None for the local engine.

    Signals:
        profileReady(object, object): a chosen file as a :class:`ResolvedModel` (checked
            once, here), and its :class:`ModelProfile`.
        loadStarted(str): a load (or a measuring) began, of this file.
        loadProgress(float): 0..1.
        loaded(object): the :class:`LoadOutcome`.
        loadFailed(object): the exception that ended the load.
        sourceChanged(): :attr:`info` / :attr:`endpoint` changed.
        libraryChanged(object): the :class:`Library` now in use (the models folder moved).
        lastModelFound(str): the model loaded last time ("" when none, or its file is gone).
        failed(object): other work failed (reading a header): the exception.
    """

    profileReady = Signal(object, object)
    loadStarted = Signal(str)
    loadProgress = Signal(float)
    loaded = Signal(object)
    loadFailed = Signal(object)
    sourceChanged = Signal()
    libraryChanged = Signal(object)
    lastModelFound = Signal(str)
    failed = Signal(object)

    def __init__(
        self,
        engine: EngineController,
        library: Library,
        settings: Settings,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.engine = engine
        self.library = library
        self.settings = settings
        self.info: ModelInfo | None = None
        self.endpoint: Endpoint | None = None
        self.tasks: list[BackgroundTask] = []
        runner = engine.runner
        runner.loadProgress.connect(self.loadProgress)
        runner.loaded.connect(self._loaded)
        runner.loadFailed.connect(self.loadFailed)

    def run(self, task: BackgroundTask, done: Callable[[Any], None]) -> None:
        """Start ``task``; ``done`` gets its result, :attr:`failed` its exception."""
        task.finished.connect(done)
        task.failed.connect(self.failed)
        self.tasks = [t for t in self.tasks if t.runner_thread.isRunning()] + [task]
        task.start()

    def shutdown(self) -> None:
        """Stop the background work and wait for its threads (the window is closing)."""
        for task in self.tasks:
            task.cancel_event.set()
            task.runner_thread.quit()
            task.runner_thread.wait(10_000)

    def choose_file(self, path: str) -> None:
        """Answer with the local engine, and read ``path``'s profile for planning."""
        self.endpoint = None
        self.info = self.engine.model  # the loaded model, if any, answers until a new load
        self.sourceChanged.emit()
        self.run(
            BackgroundTask(_read_model, path, self.library),
            lambda found: self.profileReady.emit(*found),
        )

    def choose_endpoint(self, endpoint: Endpoint) -> None:
        """Answer from ``endpoint`` (its key is read when an answer starts, off this thread)."""
        self.endpoint = endpoint
        self.info = remote_model_info(endpoint)
        self.sourceChanged.emit()

    def add_endpoint(
        self, url: str, *, api_key: str | None = None, model: str | None = None, name: str = ""
    ) -> Endpoint:
        """Save an endpoint in the settings (its key apart, in a private file).

        Raises:
            EndpointError: ``url`` is not an endpoint address.
        """
        url = normalize_url(url)  # no network here: the kind of server is found off the GUI thread
        endpoint = Endpoint(url=url, model=model or None, name=name or url)
        self.settings.add_endpoint(endpoint)
        self.settings.save()
        save_endpoint_key(url, api_key)
        return endpoint

    def load(self, request: LoadRequest) -> None:
        """Plan and load ``request`` in the engine (in its runner thread)."""
        self.forget()
        self.loadStarted.emit(str(request.model.path))
        self.engine.load(request)

    def unload(self) -> None:
        """End the engine process (its RAM and VRAM are freed); no model answers."""
        self.engine.model = None
        self.engine.requestUnload.emit()
        self.forget()

    def forget(self) -> None:
        """No model answers (it is being replaced, or the engine died)."""
        self.info = None
        self.endpoint = None
        self.sourceChanged.emit()

    def _loaded(self, outcome: LoadOutcome) -> None:
        self.info = outcome.info
        self.endpoint = None
        self.settings.last_model = outcome.info.path
        self.settings.save()
        self.loaded.emit(outcome)
        self.sourceChanged.emit()

    def find_last(self) -> None:
        """Look for the model loaded last time (off the GUI thread): :attr:`lastModelFound`."""
        self.run(
            BackgroundTask(_existing, self.settings.last_model or ""), self.lastModelFound.emit
        )

    def settings_changed(self, names: frozenset[str]) -> None:
        """Follow the settings (:attr:`SettingsModel.changed`): the models folder moves the library."""
        if "models_dir" in names:
            self.follow_models_dir()

    def follow_models_dir(self) -> None:
        """Open the library in the models folder the settings name now (off the GUI thread)."""
        self.run(BackgroundTask(_open_library, models_dir(self.settings)), self._library_opened)

    def _library_opened(self, library: Library) -> None:
        self.library = library
        self.libraryChanged.emit(library)


class ModelBar(QWidget):
    """The model row: a picker of library models, opened files and endpoints; Open, Endpoint,
    Load and the load progress.

    Signals:
        loadRequested(): the user pressed Load.
        problem(object): an exception to tell the user about (a refused endpoint address).
    """

    loadRequested = Signal()
    problem = Signal(object)

    def __init__(self, models: ModelController, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.models = models
        # Long file names must not widen the window: the picker shows 16 characters at least
        # and elides, whatever its items are (its popup shows them whole).
        self.picker = compact(QComboBox(), 16)
        self.open_button = QPushButton("Open .gguf…")
        self.endpoint_button = QPushButton("Endpoint…")
        self.load_button = QPushButton("Load")
        self.unload_button = QPushButton("Unload")
        self.unload_button.setToolTip("End the engine: frees the model's RAM and VRAM.")
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setMaximumWidth(160)
        self.progress.hide()
        self.info = plain(QLabel(""))  # model names come from the file
        self.info.setWordWrap(True)
        self.info.hide()
        column = QVBoxLayout(self)
        column.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        column.addLayout(row)
        column.addWidget(self.info)
        row.addWidget(QLabel("Model"))
        row.addWidget(self.picker, 1)
        for w in (self.load_button, self.unload_button):
            row.addWidget(w)
        more = QHBoxLayout()  # where models come from, on their own row (the window's width)
        more.addWidget(self.progress)  # the load's progress too: the first row is full at 1024 px
        more.addStretch(1)
        more.addWidget(self.open_button)
        more.addWidget(self.endpoint_button)
        column.insertLayout(1, more)
        self.picker.currentIndexChanged.connect(lambda _i: self._chosen())
        self.open_button.clicked.connect(self._open_file)
        self.endpoint_button.clicked.connect(self._ask_endpoint)
        self.load_button.clicked.connect(lambda _checked=False: self.loadRequested.emit())
        self.unload_button.clicked.connect(lambda _checked=False: models.unload())
        models.loadStarted.connect(lambda _p: self._show_progress(0.0))
        models.loadProgress.connect(self._show_progress)
        models.loaded.connect(lambda _o: self._show_progress(None))
        models.loaded.connect(lambda outcome: self._show_info(model_info_line(outcome)))
        models.sourceChanged.connect(self._source_changed)
        models.loadFailed.connect(lambda _e: self._show_progress(None))

    def refresh(self) -> None:
        """Refill the picker from the library and the saved endpoints (keeping the choice)."""
        current = self.picker.currentData()
        self.picker.blockSignals(True)
        self.picker.clear()
        self.picker.addItem("Choose a model…", "")
        for e in self.models.library.entries():
            self.picker.addItem(f"{e.name} ({format_bytes(e.size)})", e.path)
        for ep in self.models.settings.endpoints:
            self.picker.addItem(f"Endpoint: {ep.label}", ep)
        if isinstance(current, str) and current:
            self.select_path(current, quiet=True)
        elif isinstance(current, Endpoint):
            self._select_data(current)
        self.picker.blockSignals(False)

    def _select_data(self, data: object) -> int:
        index = next((i for i in range(self.picker.count()) if self.picker.itemData(i) == data), -1)
        if index >= 0:
            self.picker.setCurrentIndex(index)
        return index

    def select_path(self, path: str, *, quiet: bool = False) -> None:
        """Pick a model file (adding it to the picker if needed) and, unless ``quiet``, plan it."""
        if self._select_data(path) < 0:
            self.picker.addItem(Path(path).name, path)
            self.picker.setCurrentIndex(self.picker.count() - 1)
        if not quiet:
            self._chosen()

    def select_endpoint(self, endpoint: Endpoint) -> None:
        """Pick a saved endpoint."""
        self.refresh()
        self._select_data(endpoint)

    def _chosen(self) -> None:
        data = self.picker.currentData()
        if isinstance(data, Endpoint):
            self.models.choose_endpoint(data)
        elif isinstance(data, str) and data:
            self.models.choose_file(data)

    def _source_changed(self) -> None:
        if self.models.info is None:
            self._show_info("")  # nothing loaded any more

    def _show_info(self, line: str) -> None:
        self.info.setText(line)
        self.info.setVisible(bool(line))

    def _show_progress(self, fraction: float | None) -> None:
        self.progress.setVisible(fraction is not None)
        self.progress.setValue(int((fraction or 0.0) * 100))

    def _open_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open a GGUF model", str(Path.home()), "GGUF models (*.gguf)"
        )
        if path:
            self.select_path(path)

    def _ask_endpoint(self) -> None:
        url, ok = QInputDialog.getText(
            self,
            "Endpoint",
            "Address of an OpenAI-compatible server (e.g. TGI):",
            text="http://127.0.0.1:8080/v1",
        )
        if not ok or not url.strip():
            return
        key, _ = QInputDialog.getText(
            self, "Endpoint", "API key or token (empty if none):", QLineEdit.EchoMode.Password
        )
        model, _ = QInputDialog.getText(
            self, "Endpoint", "Model name (empty for the server's own):"
        )
        try:
            endpoint = self.models.add_endpoint(
                url.strip(), api_key=key.strip() or None, model=model.strip() or None
            )
        except Exception as err:  # noqa: BLE001 - shown as a sentence
            self.problem.emit(err)
            return
        self.select_endpoint(endpoint)
