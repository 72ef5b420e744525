"""The main window: the layout, and the wiring between its controllers.

Each job has its own controller, usable without the others: the conversations
(:mod:`.conversations`), the answer stream (:mod:`.answer`), the model and engine
(:mod:`.models`) and measuring (:mod:`.measure`). Their widgets (the conversation list, the
chat pane, the model row, the offload panel, the model manager) show them; the window lays
the widgets out, connects the signals, and is the one channel for messages to the user.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSize, QTimer, Signal
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import (
    QMainWindow,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from mixdesk.core.chat.words import no_text_words
from mixdesk.core.engine import ChatDone, GenerationStats
from mixdesk.core.engine.like import EngineLike
from mixdesk.core.hub.catalog import CatalogModel
from mixdesk.core.hub.library import Library
from mixdesk.core.loading.choices import LoadChoices
from mixdesk.core.loading.load import LoadOutcome
from mixdesk.core.loading.measure import MeasureVariant
from mixdesk.core.machine import hardware as hw_mod
from mixdesk.core.machine.hardware import HardwareInfo
from mixdesk.core.machine.rpc_worker import with_devices
from mixdesk.core.planning.calibration import Calibration, CalibrationStore
from mixdesk.core.workspace.chat_store import ChatStore, Conversation
from mixdesk.core.workspace.settings import Settings
from mixdesk.errors import EngineCrashedError, user_message
from mixdesk.ui.answer import AnswerController
from mixdesk.ui.chat_area import ChatArea
from mixdesk.ui.conversations import ConversationController, ConversationPanel
from mixdesk.ui.gpu_support import GpuSupportBar
from mixdesk.ui.hardware_panel import HardwareTab, calibration_words
from mixdesk.ui.measure import MeasureController
from mixdesk.ui.menus import MenuSlots, build_menus, copy_text, show_about
from mixdesk.ui.model_manager import ModelManager
from mixdesk.ui.models import ModelController
from mixdesk.ui.offload_panel import OffloadPanel
from mixdesk.ui.plain import message_box
from mixdesk.ui.settings_model import SettingsModel
from mixdesk.ui.threads import BackgroundTask, EngineController
from mixdesk.ui.widgets import SpeedMeter

log = logging.getLogger(__name__)

#: The settings a load starts from (:meth:`LoadChoices.from_settings`).
_LOAD_SETTINGS = frozenset({"n_ctx", "kv_type", "flash_attn", "threads"})


class MainWindow(QMainWindow):
    """MixDesk's window.

    Signals:
        userMessage(str): the one channel for messages to the user (shown in the status bar
            and, for errors, a dialog unless ``quiet``).
        answerFinished(object): a :class:`ChatDone` (after it is saved).
        modelLoaded(object): a :class:`ModelInfo`.
        speedShown(float): the eval tok/s the status bar shows, each time it changes.
    """

    userMessage = Signal(str)
    answerFinished = Signal(object)
    modelLoaded = Signal(object)
    speedShown = Signal(float)

    def __init__(
        self,
        *,
        settings: Settings,
        library: Library,
        store: ChatStore,
        engine: EngineLike | None = None,
        hardware: HardwareInfo | None = None,
        catalog: Sequence[CatalogModel] | None = None,
        quiet: bool = False,
        calibration_store: CalibrationStore | None = None,
    ) -> None:
        """The window over what the app made at start-up (:func:`mixdesk.ui.app.run_app`).

        Args:
            settings: the settings, read once; every part of the window holds this object.
            library: the model library (in the models folder ``settings`` names).
            store: the conversations database.
            engine: the engine (a new one by default).
            hardware: the machine (detected off the GUI thread when None).
            catalog: the catalog the first-run page and the Models tab show (the built-in one
                by default).
            quiet: no dialogs (tests): messages go to :attr:`userMessage` only.
            calibration_store: where this machine's measurements are kept (the user's own
                by default).
        """
        super().__init__()
        self.setWindowTitle("MixDesk")
        self.resize(first_size())
        self.quiet = quiet
        self.last_error = ""
        self.settings_model = SettingsModel(settings, self)
        self.settings = settings
        self.hardware = hardware or HardwareInfo(
            ram_total_bytes=0, ram_available_bytes=0, physical_cores=1, logical_cores=1
        )
        #: Where this machine's measurements are kept, and what they are now.
        self.calibration_store = calibration_store or CalibrationStore.default()
        self.calibration = self.calibration_store.read()
        self.controller = EngineController(engine, self)
        self.controller.runner.store = self.calibration_store
        self.conversations = ConversationController(store, self.settings, self)
        self.answers = AnswerController(self.controller, self.conversations, self)
        self.models = ModelController(self.controller, library, self.settings, self)
        self.measuring = MeasureController(self.controller, self)
        #: A message sent while its model was still loading (sent when the load ends).
        self.pending_send: str | None = None
        self._build(catalog)
        self._connect()
        self.chat.load_first = self._load_then_send
        self.chat.model_chosen = lambda: (
            self.models.endpoint is None and self.offload.plan is not None
        )
        self.set_calibration(self.calibration)
        self.conversations.open_first()
        self.refresh_models()
        self.models.find_last()
        if hardware is None:
            self.models.run(
                BackgroundTask(lambda report, cancel: detected_hardware()), self.set_hardware
            )
        elif self.center.welcoming:
            self.first_run.start(hardware)

    # -- layout -------------------------------------------------------------------------

    def _build(self, catalog: Sequence[CatalogModel] | None) -> None:
        self.banner = GpuSupportBar()
        self.banner.installed.connect(self.models.unload)  # the next load starts a new engine
        self.conversation_panel = ConversationPanel(self.conversations)
        self.search = self.conversation_panel.search

        center = ChatArea(self.models, self.answers, self.settings, catalog=catalog)
        self.center, self.model_bar, self.chat = center, center.model_bar, center.chat
        self.welcome, self.first_run, self.chat_stack = (
            center.welcome,
            center.first_run,
            center.stack,
        )
        self.model_picker = self.model_bar.picker
        self.view, self.input = self.chat.view, self.chat.input
        self.send_button = self.chat.send_button

        self.offload = OffloadPanel()
        self.offload.set_defaults(LoadChoices.from_settings(self.settings))
        self.manager = ModelManager(self.hardware, self.models.library, catalog=catalog)
        self.hardware_tab = HardwareTab(self.settings)
        self.hardware_label, self.workers_panel = (
            self.hardware_tab.machine,
            self.hardware_tab.workers,
        )
        self.tabs = QTabWidget()
        self.tabs.addTab(self.offload, "Offload")
        self.tabs.addTab(self.manager, "Models")
        self.tabs.addTab(self.hardware_tab, "Hardware")

        splitter = QSplitter()
        for part in (self.conversation_panel, center, self.tabs):
            splitter.addWidget(part)
        splitter.setSizes([230, 650, 400])
        root = QWidget()
        rv = QVBoxLayout(root)
        rv.addWidget(self.banner)
        rv.addWidget(splitter, 1)
        self.setCentralWidget(root)

        self.speed = SpeedMeter()
        self.tps_label = self.speed.tps_label
        for w in self.speed.widgets():
            self.statusBar().addPermanentWidget(w)

        self.menus = build_menus(
            self,
            MenuSlots(
                new_conversation=self.new_conversation,
                open_model=self.model_bar.open_button.click,
                export=self.conversation_panel.export_button.click,
                copy_answer=self.copy_last_answer,
                find=self.search.setFocus,
                load=self.load_selected,
                unload=self.model_bar.unload_button.click,
                measure=self.offload.measure.click,
                settings=self.open_settings,
                about=lambda: None if self.quiet else show_about(self),
            ),
        )

    def _connect(self) -> None:
        answers, models = self.answers, self.models
        self.conversation_panel.chosen.connect(
            lambda cid: None if self.busy else self.conversations.open(cid)
        )
        self.conversation_panel.exported.connect(
            lambda p: self.notify(f"Exported to {p}", error=False)
        )
        answers.started.connect(lambda _messages: self.speed.reset())
        answers.speed.connect(self._show_speed)
        # another conversation's figures never stay on screen after a switch
        self.conversations.opened.connect(lambda _c: self.speed.clear())
        answers.finished.connect(self._answer_finished)
        answers.failed.connect(self._answer_failed)
        self.chat.problem.connect(self.report)
        self.view.copied.connect(lambda _t: self.statusBar().showMessage("Code copied", 2000))

        models.sourceChanged.connect(self._source_changed)
        models.profileReady.connect(
            lambda model, profile: self.offload.set_model(model, profile, self.hardware)
        )
        models.profileReady.connect(self.center.profile_ready)  # after the panel planned it
        models.profileReady.connect(lambda *_a: self.chat.update_buttons())  # Send can load it
        self.center.downloaded.connect(self.select_model_path)
        self.center.loadWanted.connect(
            lambda n: self.load(replace(self.offload.choices(), n_gpu_layers=n))
        )
        models.loadStarted.connect(lambda _path: self.offload.show_progress(0.0))
        models.loadStarted.connect(
            lambda path: self.statusBar().showMessage(f"Loading {Path(path).name}…")
        )
        models.loadProgress.connect(self.offload.show_progress)
        models.loaded.connect(self._loaded)
        models.loadFailed.connect(lambda _err: self.offload.show_progress(None))
        models.loadFailed.connect(self._pending_failed)
        models.loadFailed.connect(self.report)
        models.failed.connect(self.report)
        models.libraryChanged.connect(self._library_changed)
        models.lastModelFound.connect(self._restore_model)
        self.model_bar.loadRequested.connect(self.load_selected)
        self.model_bar.problem.connect(self.report)
        self.offload.applyRequested.connect(self.load)
        self.offload.measureRequested.connect(self.measure)
        self.offload.keepFastestRequested.connect(self.keep_fastest)
        self.measuring.started.connect(lambda: self.statusBar().showMessage("Measuring…"))
        self.measuring.measured.connect(self.offload.show_measurements)
        self.manager.message.connect(self.notify)
        self.manager.downloadFinished.connect(lambda _n: self.refresh_models())
        self.manager.modelChosen.connect(self.select_model_path)
        self.workers_panel.workersChanged.connect(lambda _w: self.set_hardware(self.hardware))
        self.controller.runner.calibrated.connect(self.set_calibration)
        self.hardware_tab.calibrateRequested.connect(self.calibrate)
        self.welcome.calibrateRequested.connect(self.calibrate)
        self.workers_panel.message.connect(self.notify)
        self.userMessage.connect(lambda text: self.statusBar().showMessage(text, 10_000))
        self.settings_model.changed.connect(models.settings_changed)
        self.settings_model.changed.connect(self._settings_changed)

    # -- messages to the user -----------------------------------------------------------

    def notify(self, text: str, *, error: bool = True) -> None:
        """Tell the user something (the one channel for messages)."""
        log.info("user message: %s", text)
        if error:
            self.last_error = text
        self.userMessage.emit(text)
        if error and not self.quiet:
            message_box(self, text).open()  # plain text: it may quote a model file

    def report(self, err: BaseException) -> None:
        """Tell the user what went wrong, as the one sentence :func:`user_message` gives."""
        self.notify(user_message(err))

    # -- hardware -----------------------------------------------------------------------

    def set_calibration(self, calibration: Calibration) -> None:
        """Plan everywhere with what this machine has measured (read off the GUI thread)."""
        self.calibration = calibration
        self.manager.set_calibration(calibration)  # its files ranked again
        self.first_run.calibration = calibration
        self.offload.set_calibration(calibration)
        self.hardware_tab.show_calibration(calibration)
        self.welcome.show_calibration(
            calibration_words(calibration), measured=calibration.speed is not None
        )
        if self.center.welcoming and self.welcome.candidates:
            self.first_run.start(self.hardware)  # the verdicts' speeds, measured now

    def calibrate(self) -> None:
        """Measure this machine's speed (``mixdesk calibrate``) in a worker thread, with its
        own small engine process; every plan then quotes measured speeds."""
        self.hardware_tab.show_calibrating("starting", 0.0)
        task = BackgroundTask(_calibrate_task, self.hardware, self.calibration_store)
        task.progress.connect(lambda p: self.hardware_tab.show_calibrating(*p))
        task.progress.connect(
            lambda p: self.welcome.show_calibrating(self.hardware_tab.calibration.text())
        )
        task.failed.connect(lambda _err: self.hardware_tab.show_calibration(self.calibration))
        self.models.run(task, self.set_calibration)

    def set_hardware(self, hw: HardwareInfo) -> None:
        """Show the machine, and the GPU-build banner when a GPU sits unused."""
        hw = with_devices(hw, self.workers_panel.workers())  # the workers that answered
        self.hardware = hw
        self.manager.hardware = hw
        self.hardware_label.show_hardware(hw)
        self.banner.show_for(hw)
        if self.center.welcoming:
            self.first_run.start(hw)
        if self.offload.model is not None and self.offload.profile is not None:
            self.offload.set_model(self.offload.model, self.offload.profile, hw)

    # -- conversations ------------------------------------------------------------------

    @property
    def store(self) -> ChatStore:
        """The conversations database."""
        return self.conversations.store

    @property
    def conversation(self) -> Conversation | None:
        """The open conversation."""
        return self.conversations.current

    def copy_last_answer(self) -> str:
        """Put the open conversation's last answer on the clipboard; returns it ("" if none)."""
        messages = self.conversations.messages() if self.conversation is not None else []
        answer = next((m.content for m in reversed(messages) if m.role == "assistant"), "")
        if copy_text(answer):
            self.statusBar().showMessage("Last answer copied", 2000)
        return answer

    def new_conversation(self) -> Conversation:
        """Start a conversation with the default system prompt and sampling."""
        return self.conversations.new()

    def rename_conversation(self, title: str) -> None:
        """Rename the current conversation."""
        self.conversations.rename(title)

    def set_sampling(self, **values: Any) -> None:
        """Change the current conversation's sampling settings (kept with the conversation)."""
        self.conversations.set_sampling(replace(self.conversations.sampling(), **values))

    # -- models -------------------------------------------------------------------------

    def refresh_models(self) -> None:
        """Refill the model picker and the Models tab from the library."""
        self.model_bar.refresh()
        self.manager.refresh_library()
        self.center.update_page()

    def select_model_path(self, path: str, *, quiet: bool = False) -> None:
        """Pick a model file (adding it to the picker if needed) and plan for it."""
        self.manager.refresh_library()  # it may be new (downloaded on the welcome page)
        self.model_bar.select_path(path, quiet=quiet)

    def _restore_model(self, path: str) -> None:
        if path and not self.model_picker.currentData():  # the user has not chosen meanwhile
            self.select_model_path(path)

    def add_endpoint(
        self, url: str, *, api_key: str | None = None, model: str | None = None, name: str = ""
    ) -> None:
        """Save an endpoint in the settings (its key apart) and select it in the model picker."""
        endpoint = self.models.add_endpoint(url, api_key=api_key, model=model, name=name)
        self.model_bar.select_endpoint(endpoint)

    def _source_changed(self) -> None:
        models = self.models
        self.answers.source = models.endpoint or models.info
        if models.endpoint is not None:
            self.statusBar().showMessage(f"Answers now come from {models.endpoint.url}", 10_000)

    def load_selected(self) -> None:
        """Load the selected model with the offload panel's settings."""
        if self.models.endpoint is not None:
            return
        if self.offload.plan is None:
            self.notify("Choose a model first (or wait a moment while its header is read).")
            return
        self.load(self.offload.choices())

    def load(self, choices: LoadChoices) -> None:
        """Plan and load (or reload) the panel's model in the engine, off the GUI thread."""
        self.answers.stop()
        self.models.load(self.offload.request(choices))

    def measure(self, variants: list[MeasureVariant]) -> None:
        """Measure generation speed with a few settings, in the one engine (off the GUI thread)."""
        if self.offload.plan is None or self.measuring.running:
            return
        self.answers.stop()
        self.models.forget()
        self.measuring.start(self.offload.request(), variants)

    def keep_fastest(self) -> None:
        """Load with the setting measured fastest."""
        best = self.measuring.fastest()
        if best is not None:
            self.offload.keep(best.choices)

    def _loaded(self, outcome: LoadOutcome) -> None:
        info = outcome.info
        self.offload.show_progress(None)
        # the model row says what is loaded; the status bar only loses its "Loading…" (the
        # same line there ran into the live figures at 1024 px)
        self.statusBar().clearMessage()
        if outcome.note:
            self.notify(outcome.note, error=False)
        if self.conversation is not None:
            self.store.update(self.conversation.id, model=info.path)
        self.modelLoaded.emit(info)
        if self.pending_send is not None:  # a message sent with the model chosen, not loaded
            # after the model controller has made it the source (its next signal)
            QTimer.singleShot(0, self._send_pending)

    def _send_pending(self) -> None:
        if self.pending_send is not None and self.answers.source is not None:
            text, self.pending_send = self.pending_send, None
            self.send(text)

    def _load_then_send(self, text: str) -> bool:
        """Sending with a model chosen but not loaded: load it (the planned layers, progress
        shown) and send ``text`` once it is; False when no model is chosen."""
        if self.models.endpoint is not None or self.offload.plan is None:
            return False
        self.pending_send = text
        self.statusBar().showMessage("Loading the model, then answering…")
        self.load_selected()
        return True

    def _pending_failed(self, _err: BaseException) -> None:
        """The load for a pending message failed: the message goes back in the input box
        (nothing the user typed is lost)."""
        if self.pending_send is not None:
            self.input.setPlainText(self.pending_send)
            self.pending_send = None

    def _library_changed(self, library: Library) -> None:
        self.manager.library = library
        self.refresh_models()

    # -- the answer ---------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Whether an answer is streaming."""
        return self.answers.busy

    def send(self, text: str | None = None) -> None:
        """Send the input box's text (or ``text``) and start the answer."""
        self.chat.send(text)

    def stop(self) -> None:
        """Stop the answer; what arrived so far is kept."""
        self.answers.stop()

    def _show_speed(self, stats: GenerationStats, final: bool) -> None:
        self.speed.show(stats, final=final)
        if not final:
            self.view.show_streaming_stats(stats)  # where the eyes are: under the answer
        self.speedShown.emit(stats.eval_tps)

    def _answer_finished(self, done: ChatDone) -> None:
        # An answer with no text says why (not "0 tokens · 0.0 tok/s", not a blank block).
        # Its figures are under the answer and at the status bar's right: not a third time
        # at its left (where they stayed after a switch, and ran into the right's at 1024 px).
        why = no_text_words(done.finish_reason, done.stats.eval_tokens, done.text)
        if why:
            self.statusBar().showMessage(why, 10_000)
        self.answerFinished.emit(done)

    def _answer_failed(self, err: BaseException) -> None:
        if isinstance(err, EngineCrashedError):
            self.models.forget()
        self.report(err)

    # -- settings and closing -----------------------------------------------------------

    def open_settings(self) -> None:
        """Edit the settings."""
        from mixdesk.ui.settings_dialog import SettingsDialog

        dialog = SettingsDialog(self.settings, self)
        if dialog.exec():
            self.apply_settings(dialog.result_settings())

    def apply_settings(self, new: Settings) -> None:
        """Save ``new`` settings; what follows them hears :attr:`SettingsModel.changed`."""
        self.settings_model.apply(new)

    def _settings_changed(self, names: frozenset[str]) -> None:
        if names & _LOAD_SETTINGS:
            self.offload.set_defaults(LoadChoices.from_settings(self.settings))

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802
        self.answers.save_partial()
        self.conversations.finish_delete()
        self.models.shutdown()
        self.manager.shutdown()
        self.workers_panel.shutdown()
        self.controller.shutdown()
        BackgroundTask.stop_all()  # the first-run page's, the model manager's, any other
        self.store.close()
        super().closeEvent(event)


def _calibrate_task(
    hardware: HardwareInfo, store: CalibrationStore, *, report: Any, cancel: threading.Event
) -> Calibration:
    """Measure this machine (in a worker thread, with an engine process of its own) and keep
    the coefficients; returns what is now known."""
    from mixdesk import paths
    from mixdesk.core.engine import Engine
    from mixdesk.core.loading.calibrate import calibrate

    with Engine() as engine:
        result = calibrate(
            engine,
            hardware,
            paths.cache_dir() / "calibration-models",
            on_progress=lambda what, fraction: report((what, fraction)),
        )
    store.record_speed_model(result.model)
    return store.read()


def first_size() -> QSize:
    """1280x820, or less to fit the screen's available geometry (a 1280x800 screen has a
    panel: the status bar must stay on screen)."""
    from PySide6.QtGui import QGuiApplication

    room = QGuiApplication.primaryScreen().availableGeometry()
    return QSize(min(1280, room.width()), min(820, room.height()))


def detected_hardware() -> HardwareInfo:
    """This machine as the terminal commands see it: detected, with ``MIXDESK_HW``'s
    overrides ("vram=16GiB,ram=64GiB,gpu=none") applied."""
    return hw_mod.apply_overrides(hw_mod.detect(), hw_mod.Overrides.from_env())
