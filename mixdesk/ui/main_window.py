"""The main window: conversations, the chat, live speed, the offload panel and the model manager."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QAction, QCloseEvent, QKeyEvent
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from mixdesk.core import hardware as hw_mod
from mixdesk.core.chat_store import ChatStore, Conversation
from mixdesk.core.chat_template import ChatMessage
from mixdesk.core.engine import (
    ChatDone,
    Engine,
    GenerationStats,
    ModelInfo,
    SamplingParams,
)
from mixdesk.core.hardware import HardwareInfo, format_bytes
from mixdesk.core.library import Library
from mixdesk.core.loading import LoadChoices, LoadOutcome, LoadRequest
from mixdesk.core.model_profile import ModelProfile, profile_local
from mixdesk.core.settings import Settings
from mixdesk.ui.model_manager import ModelManager
from mixdesk.ui.offload_panel import OffloadPanel
from mixdesk.ui.plain import message_box
from mixdesk.ui.widgets import Banner, ChatView, Sparkline, stats_line
from mixdesk.ui.workers import EngineController, TaskWorker

log = logging.getLogger(__name__)

# The view is updated at 10 Hz and re-rendered as Markdown once a second: smooth to read,
# and on a 2-core machine every millisecond the GUI spends is taken from llama.cpp (whose
# threads wait for each other, so a stolen millisecond costs them more than one). When text
# arrives faster than anyone reads (hundreds of tokens a second), the view updates at 4 Hz.
FLUSH_MS = 100
FAST_FLUSH_MS = 250
FAST_TPS = 200.0
RENDER_S = 1.0
STREAM_INTERVAL_S = 1 / 20  # the engine merges text arriving faster than this into one delta
SAVE_S = 0.25  # and save it this often, so a crash loses at most this much


class MessageInput(QPlainTextEdit):
    """The message box: Enter sends, Shift+Enter starts a new line.

    Signals:
        submitted(): Enter was pressed.
    """

    submitted = Signal()

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and not (
            event.modifiers() & Qt.KeyboardModifier.ShiftModifier
        ):
            self.submitted.emit()
            return
        super().keyPressEvent(event)


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
        store: ChatStore | None = None,
        library: Library | None = None,
        engine: Engine | None = None,
        hardware: HardwareInfo | None = None,
        quiet: bool = False,
    ) -> None:
        super().__init__()
        self.setWindowTitle("MixDesk")
        self.resize(1280, 820)
        self.quiet = quiet
        self.settings = Settings.load()
        self.store = store or ChatStore()
        self.library = library or Library()
        self.hardware = hardware or HardwareInfo(
            ram_total_bytes=0, ram_available_bytes=0, physical_cores=1, logical_cores=1
        )
        self.controller = EngineController(engine, self)
        self.conversation: Conversation | None = None
        self.model_info: ModelInfo | None = None
        self.remote: Any = None  # an Endpoint when answers come from a remote server
        self.profile: ModelProfile | None = None
        self._request: int | None = None
        self._answer_id: int | None = None
        self._answer_text = ""
        self._dirty = False
        self._last_save = 0.0
        self._shown = 0
        self._last_render = 0.0
        self._stats: GenerationStats | None = None
        self._tps_history: list[float] = []
        self._editing: int | None = None
        self._tasks: list[TaskWorker] = []
        self.last_error = ""

        self._build()
        self._connect()
        self.reload_conversations()
        if not self.store.conversations():
            self.new_conversation()
        else:
            self.conversations.setCurrentRow(0)
        self.refresh_models()
        if hardware is None:
            self._run(TaskWorker(lambda report, cancel: hw_mod.detect()), self._hardware_ready)

    # -- layout -------------------------------------------------------------------------

    def _build(self) -> None:
        self.banner = Banner()
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search conversations")
        self.conversations = QListWidget()
        self.new_button = QPushButton("New")
        self.rename_button = QPushButton("Rename")
        self.delete_button = QPushButton("Delete")
        self.export_button = QPushButton("Export")
        left = QWidget()
        lv = QVBoxLayout(left)
        lv.addWidget(self.search)
        lv.addWidget(self.conversations, 1)
        row = QHBoxLayout()
        for b in (self.new_button, self.rename_button, self.delete_button, self.export_button):
            row.addWidget(b)
        lv.addLayout(row)

        self.model_picker = QComboBox()
        self.model_picker.setMinimumWidth(320)
        self.open_button = QPushButton("Open .gguf…")
        self.endpoint_button = QPushButton("Endpoint…")
        self.load_button = QPushButton("Load")
        self.load_progress = QProgressBar()
        self.load_progress.setRange(0, 100)
        self.load_progress.setMaximumWidth(160)
        self.load_progress.hide()
        self.preset = QComboBox()
        self.preset.addItem("No system prompt", "")
        for name, text in self.settings.system_presets.items():
            self.preset.addItem(name, text)
        self.view = ChatView()
        self.input = MessageInput()
        self.input.setPlaceholderText("Message (Enter sends, Shift+Enter for a new line)")
        self.input.setMaximumHeight(110)
        self.send_button = QPushButton("Send")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.regen_button = QPushButton("Regenerate")
        center = QWidget()
        cv = QVBoxLayout(center)
        top = QHBoxLayout()
        top.addWidget(QLabel("Model"))
        top.addWidget(self.model_picker, 1)
        top.addWidget(self.open_button)
        top.addWidget(self.endpoint_button)
        top.addWidget(self.load_button)
        top.addWidget(self.load_progress)
        cv.addLayout(top)
        sys_row = QHBoxLayout()
        sys_row.addWidget(QLabel("System prompt"))
        sys_row.addWidget(self.preset, 1)
        self.sampling_button = QPushButton("Sampling…")
        sys_row.addWidget(self.sampling_button)
        cv.addLayout(sys_row)
        cv.addWidget(self.view, 1)
        cv.addWidget(self.input)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        for b in (self.regen_button, self.stop_button, self.send_button):
            buttons.addWidget(b)
        cv.addLayout(buttons)

        self.offload = OffloadPanel()
        self.offload.set_defaults(LoadChoices.from_settings(self.settings))
        self.manager = ModelManager(self.hardware, self.library)
        self.hardware_label = QLabel("Detecting hardware…")
        self.hardware_label.setWordWrap(True)
        self.hardware_label.setAlignment(Qt.AlignmentFlag.AlignTop)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.offload, "Offload")
        self.tabs.addTab(self.manager, "Models")
        self.tabs.addTab(self.hardware_label, "Hardware")

        splitter = QSplitter()
        splitter.addWidget(left)
        splitter.addWidget(center)
        splitter.addWidget(self.tabs)
        splitter.setSizes([230, 650, 400])
        root = QWidget()
        rv = QVBoxLayout(root)
        rv.addWidget(self.banner)
        rv.addWidget(splitter, 1)
        self.setCentralWidget(root)

        self.tps_label = QLabel("eval — tok/s")
        self.detail_label = QLabel("")
        self.sparkline = Sparkline()
        self.statusBar().addPermanentWidget(self.detail_label)
        self.statusBar().addPermanentWidget(self.sparkline)
        self.statusBar().addPermanentWidget(self.tps_label)

        self.flush_timer = QTimer(self)
        self.flush_timer.setInterval(FLUSH_MS)

        settings_action = QAction("Settings…", self)
        settings_action.triggered.connect(self.open_settings)
        self.menuBar().addMenu("&MixDesk").addAction(settings_action)

    def _connect(self) -> None:
        w = self.controller.worker
        w.loadProgress.connect(self._load_progress)
        w.loaded.connect(self._loaded)
        w.loadFailed.connect(self._load_failed)
        w.measured.connect(self.offload.show_measurements)
        w.delta.connect(self._delta)
        w.done.connect(self._done)
        w.chatFailed.connect(self._chat_failed)
        self.flush_timer.timeout.connect(self._flush)
        # clicked(bool) would arrive as send's text argument: call it with none
        self.send_button.clicked.connect(lambda _checked=False: self.send())
        self.input.submitted.connect(lambda: self.send())  # noqa: PLW0108 - same reason
        self.stop_button.clicked.connect(self.stop)
        self.regen_button.clicked.connect(self.regenerate)
        self.view.editRequested.connect(self.edit_message)
        self.view.copied.connect(lambda _t: self.statusBar().showMessage("Code copied", 2000))
        self.new_button.clicked.connect(lambda: self.new_conversation())  # noqa: PLW0108 - drop "checked"
        self.rename_button.clicked.connect(self._rename)
        self.delete_button.clicked.connect(self._delete)
        self.export_button.clicked.connect(self._export)
        self.search.textChanged.connect(lambda _t: self.reload_conversations())
        self.conversations.currentItemChanged.connect(self._conversation_chosen)
        self.model_picker.currentIndexChanged.connect(self._model_chosen)
        self.load_button.clicked.connect(self.load_selected)
        self.open_button.clicked.connect(self._open_file)
        self.endpoint_button.clicked.connect(self._add_endpoint)
        self.offload.applyRequested.connect(self.load)
        self.offload.measureRequested.connect(self.measure)
        self.manager.message.connect(self.notify)
        self.manager.downloadFinished.connect(lambda _n: self.refresh_models())
        self.manager.modelChosen.connect(self.select_model_path)
        self.preset.currentIndexChanged.connect(self._preset_chosen)
        self.sampling_button.clicked.connect(self._edit_sampling)
        self.userMessage.connect(lambda text: self.statusBar().showMessage(text, 10_000))

    def _run(self, task: TaskWorker, done: Any, failed: Any = None) -> TaskWorker:
        task.finished.connect(done)
        task.failed.connect(failed or self.notify)
        self._tasks = [t for t in self._tasks if t.worker_thread.isRunning()] + [task]
        task.start()
        return task

    # -- messages to the user -----------------------------------------------------------

    def notify(self, text: str, *, error: bool = True) -> None:
        """Tell the user something (the one channel for messages)."""
        log.info("user message: %s", text)
        if error:
            self.last_error = text
        self.userMessage.emit(text)
        if error and not self.quiet:
            message_box(self, text).open()  # plain text: it may quote a model file

    # -- hardware -----------------------------------------------------------------------

    def _hardware_ready(self, hw: HardwareInfo) -> None:
        self.set_hardware(hw)

    def set_hardware(self, hw: HardwareInfo) -> None:
        """Show the machine, and the GPU-build banner when a GPU sits unused."""
        from mixdesk.core.doctor import gpu_build_command

        self.hardware = hw
        self.manager.hardware = hw
        gpus = (
            "".join(
                f"<li>{g.name} ({g.backend}): {format_bytes(g.free_bytes)} free of "
                f"{format_bytes(g.total_bytes)}</li>"
                for g in hw.gpus
            )
            or "<li>none found</li>"
        )
        build = "can offload to a GPU" if hw.gpu_offload else "CPU only"
        self.hardware_label.setText(
            f"<b>GPUs</b><ul>{gpus}</ul><b>RAM</b>: {format_bytes(hw.ram_available_bytes)} available of "
            f"{format_bytes(hw.ram_total_bytes)}<br><b>CPU</b>: {hw.physical_cores} cores<br>"
            f"<b>llama.cpp build</b>: {build}"
        )
        if hw.gpus and not hw.gpu_offload:
            self.banner.show_text(
                f"{hw.gpus[0].name} is not used: this llama.cpp build is CPU-only. Install a GPU "
                f"build with:\n{gpu_build_command(hw.gpus[0].backend)}"
            )
        if self.profile is not None:
            self.offload.set_model(self.offload.model_path, self.profile, hw)

    # -- conversations ------------------------------------------------------------------

    def reload_conversations(self) -> None:
        """Refill the conversation list (filtered by the search box)."""
        current = self.conversation.id if self.conversation else None
        self.conversations.blockSignals(True)
        self.conversations.clear()
        for c in self.store.conversations(self.search.text().strip()):
            item = QListWidgetItem(c.title)
            item.setData(256, c.id)
            self.conversations.addItem(item)
            if c.id == current:
                self.conversations.setCurrentItem(item)
        self.conversations.blockSignals(False)

    def new_conversation(self) -> Conversation:
        """Start a conversation with the default system prompt and sampling."""
        conv = self.store.create(
            system_prompt=self.settings.system_prompt, sampling=self.settings.sampling()
        )
        self.search.clear()
        self.conversation = conv
        self.reload_conversations()
        self.show_conversation(conv.id)
        return conv

    def _conversation_chosen(self, item: QListWidgetItem | None, _prev: object) -> None:
        if item is not None and not self.busy:
            self.show_conversation(int(item.data(256)))

    def show_conversation(self, conversation_id: int) -> None:
        """Display a conversation."""
        self.conversation = self.store.get(conversation_id)
        if self.conversation is None:
            return
        self.view.set_messages(self.store.messages(conversation_id))
        index = max(0, self.preset.findData(self.conversation.system_prompt))
        self.preset.blockSignals(True)
        self.preset.setCurrentIndex(index)
        self.preset.blockSignals(False)

    def _preset_chosen(self, _index: int) -> None:
        if self.conversation is not None:
            self.store.update(self.conversation.id, system_prompt=self.preset.currentData() or "")
            self.conversation = self.store.get(self.conversation.id)

    def _rename(self) -> None:
        if self.conversation is None:
            return
        title, ok = QInputDialog.getText(self, "Rename", "Title", text=self.conversation.title)
        if ok and title.strip():
            self.rename_conversation(title.strip())

    def rename_conversation(self, title: str) -> None:
        """Rename the current conversation."""
        assert self.conversation is not None
        self.store.update(self.conversation.id, title=title)
        self.conversation = self.store.get(self.conversation.id)
        self.reload_conversations()

    def _delete(self) -> None:
        if self.conversation is not None:
            self.store.delete(self.conversation.id)
            self.conversation = None
            self.reload_conversations()
            if self.conversations.count():
                self.conversations.setCurrentRow(0)
            else:
                self.new_conversation()

    def _export(self) -> None:
        if self.conversation is None:
            return
        path, chosen = QFileDialog.getSaveFileName(
            self,
            "Export conversation",
            f"{self.conversation.title}.md",
            "Markdown (*.md);;JSON (*.json)",
        )
        if path:
            self.export_conversation(
                Path(path), as_json="json" in chosen.lower() or path.endswith(".json")
            )

    def export_conversation(self, path: Path, *, as_json: bool) -> None:
        """Write the current conversation to ``path``."""
        assert self.conversation is not None
        text = (self.store.export_json if as_json else self.store.export_markdown)(
            self.conversation.id
        )
        path.write_text(text, encoding="utf-8")
        self.notify(f"Exported to {path}", error=False)

    # -- models -------------------------------------------------------------------------

    def refresh_models(self) -> None:
        """Refill the model picker from the library."""
        current = self.model_picker.currentData()
        self.model_picker.blockSignals(True)
        self.model_picker.clear()
        self.model_picker.addItem("Choose a model…", "")
        for e in self.library.entries():
            self.model_picker.addItem(f"{e.name} ({format_bytes(e.size)})", e.path)
        for i, ep in enumerate(self.settings.endpoints):
            self.model_picker.addItem(
                f"Endpoint: {ep.get('name') or ep.get('url')}", f"endpoint:{i}"
            )
        if current:
            self.select_model_path(current, quiet=True)
        self.model_picker.blockSignals(False)
        self.manager.refresh_library()

    def select_model_path(self, path: str, *, quiet: bool = False) -> None:
        """Pick a model file (adding it to the picker if needed) and plan for it."""
        index = self.model_picker.findData(path)
        if index < 0:
            self.model_picker.addItem(Path(path).name, path)
            index = self.model_picker.count() - 1
        self.model_picker.setCurrentIndex(index)
        if not quiet:
            self._model_chosen(index)

    def _open_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open a GGUF model", str(Path.home()), "GGUF models (*.gguf)"
        )
        if path:
            self.select_model_path(path)

    def add_endpoint(
        self, url: str, *, api_key: str | None = None, model: str | None = None, name: str = ""
    ) -> None:
        """Save an endpoint in the settings (its key apart) and select it in the model picker."""
        from mixdesk.core.endpoints import normalize_url
        from mixdesk.core.settings import save_endpoint_key

        url = normalize_url(url)  # no network here: the kind of server is found by the worker
        self.settings.endpoints = [e for e in self.settings.endpoints if e.get("url") != url]
        self.settings.endpoints.append(
            {"name": name or url, "url": url, "model": model or "", "kind": "auto"}
        )
        self.settings.save()
        save_endpoint_key(url, api_key)
        self.refresh_models()
        self.model_picker.setCurrentIndex(
            self.model_picker.findData(f"endpoint:{len(self.settings.endpoints) - 1}")
        )

    def _add_endpoint(self) -> None:
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
            self.add_endpoint(url.strip(), api_key=key.strip() or None, model=model.strip() or None)
        except Exception as err:  # noqa: BLE001 - shown as a sentence
            from mixdesk.errors import user_message

            self.notify(user_message(err))

    def _model_chosen(self, _index: int) -> None:
        path = self.model_picker.currentData()
        if isinstance(path, str) and path.startswith("endpoint:"):
            self._use_endpoint(int(path.split(":")[1]))
            return
        self.remote = None
        if path:
            self._run(
                TaskWorker(lambda p, report, cancel: profile_local(p), path),
                lambda profile: self._profile_ready(path, profile),
            )

    def _profile_ready(self, path: str, profile: ModelProfile) -> None:
        self.profile = profile
        self.offload.set_model(path, profile, self.hardware)

    def _use_endpoint(self, index: int) -> None:
        from mixdesk.core.endpoints import Endpoint, remote_model_info
        from mixdesk.core.settings import load_endpoint_keys

        ep = self.settings.endpoints[index]
        self.remote = Endpoint(
            url=ep["url"],
            api_key=load_endpoint_keys().get(ep["url"]),
            model=ep.get("model") or None,
            name=ep.get("name", ""),
            kind=ep.get("kind", "auto"),
        )
        self.model_info = remote_model_info(self.remote)
        self.statusBar().showMessage(f"Answers now come from {self.remote.url}", 10_000)

    def load_selected(self) -> None:
        """Load the selected model with the offload panel's settings."""
        if self.remote is not None:
            return
        if self.offload.plan is None:
            self.notify("Choose a model first (or wait a moment while its header is read).")
            return
        self.load(self.offload.choices())

    def load_request(self, choices: LoadChoices) -> LoadRequest:
        """What to load: the panel's model (with the profile already read) and ``choices``."""
        return LoadRequest(
            model=self.offload.model_path,
            hardware=self.hardware,
            choices=choices,
            profile=self.offload.profile,
        )

    def load(self, choices: LoadChoices) -> None:
        """Plan and load (or reload) the panel's model in the engine, off the GUI thread."""
        if self.busy:
            self.stop()
        self.model_info = None
        self.load_progress.show()
        self.load_progress.setValue(0)
        self.offload.show_progress(0.0)
        self.statusBar().showMessage(f"Loading {Path(self.offload.model_path).name}…")
        self.controller.load(self.load_request(choices))

    def _load_progress(self, fraction: float) -> None:
        self.load_progress.setValue(int(fraction * 100))
        self.offload.show_progress(fraction)

    def _loaded(self, outcome: LoadOutcome) -> None:
        info = outcome.info
        self.model_info = info
        self.load_progress.hide()
        self.offload.show_progress(None)
        self.settings.last_model = info.path
        self.settings.save()
        self.statusBar().showMessage(
            f"{info.name}: {outcome.setup.plan.placement_words}, context {info.n_ctx}, "
            f"loaded in {info.load_s:.1f} s",
            10_000,
        )
        if outcome.note:
            self.notify(outcome.note, error=False)
        if self.conversation is not None:
            self.store.update(self.conversation.id, model=info.path)
        self.modelLoaded.emit(info)

    def _load_failed(self, message: str) -> None:
        self.load_progress.hide()
        self.offload.show_progress(None)
        self.notify(message)

    def measure(self, layer_counts: list[int]) -> None:
        """Measure generation speed at a few GPU layer counts, in the one engine (off the GUI thread)."""
        if self.offload.plan is None:
            return
        if self.busy:
            self.stop()
        self.model_info = None
        self.statusBar().showMessage("Measuring…")
        self.controller.measure(self.load_request(self.offload.choices()), layer_counts)

    # -- chat ---------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Whether an answer is streaming."""
        return self._request is not None

    def _history(self) -> list[ChatMessage]:
        assert self.conversation is not None
        messages = [
            ChatMessage(m.role, m.content)
            for m in self.store.messages(self.conversation.id)
            if m.role in ("user", "assistant")
        ]
        if self.conversation.system_prompt:
            messages.insert(0, ChatMessage("system", self.conversation.system_prompt))
        return messages

    def set_sampling(self, **values: Any) -> None:
        """Change the current conversation's sampling settings (kept with the conversation)."""
        if self.conversation is None:
            self.new_conversation()
        assert self.conversation is not None
        self.store.update(self.conversation.id, sampling={**self.conversation.sampling, **values})
        self.conversation = self.store.get(self.conversation.id)

    def _edit_sampling(self) -> None:
        from mixdesk.ui.settings_dialog import SamplingDialog

        current = {
            **self.settings.sampling(),
            **(self.conversation.sampling if self.conversation else {}),
        }
        dialog = SamplingDialog(current, self)
        if dialog.exec():
            self.set_sampling(**dialog.values())

    def _sampling(self) -> SamplingParams:
        s = dict(self.settings.sampling())
        if self.conversation is not None:
            s.update(self.conversation.sampling)
        return SamplingParams(
            temperature=float(s["temperature"]),
            top_p=float(s["top_p"]),
            top_k=int(s["top_k"]),
            min_p=float(s["min_p"]),
            repeat_penalty=float(s["repeat_penalty"]),
            max_tokens=int(s["max_tokens"]),
            seed=s.get("seed"),
        )

    def send(self, text: str | None = None) -> None:
        """Send the input box's text (or ``text``) and start the answer."""
        text = (text if text is not None else self.input.toPlainText()).strip()
        if not text or self.busy:
            return
        if self.model_info is None:
            self.notify("Load a model first: pick one above and press Load.")
            return
        if self.conversation is None:
            self.new_conversation()
        assert self.conversation is not None
        if self._editing is not None:
            self.store.truncate_after(self.conversation.id, self._editing, keep=False)
            self._editing = None
        if not self.store.messages(self.conversation.id):
            self.rename_conversation(text[:48])
        self.store.add_message(self.conversation.id, "user", text)
        self.input.clear()
        self._start_answer()

    def _start_answer(self) -> None:
        assert self.conversation is not None
        history = self._history()
        self.view.set_messages(self.store.messages(self.conversation.id))
        self.view.start_streaming()
        self._shown = 0
        self._last_render = time.monotonic()
        self._answer_id = self.store.add_message(self.conversation.id, "assistant", "").id
        self._answer_text = ""
        self._stats = None
        self._tps_history = []
        self.sparkline.set_values([])
        self.flush_timer.setInterval(FLUSH_MS)
        if self.remote is not None:
            self._request = self.controller.chat_remote(self.remote, history, self._sampling())
        else:
            self._request = self.controller.chat(
                history, self._sampling(), interval=STREAM_INTERVAL_S
            )
        self.stop_button.setEnabled(True)
        self.send_button.setEnabled(False)
        self.regen_button.setEnabled(False)
        self.flush_timer.start()

    def _delta(self, request_id: int, text: str, stats: GenerationStats) -> None:
        if request_id != self._request:
            return  # a chunk of an answer that was stopped: dropped
        self._answer_text += text
        self._stats = stats
        self._dirty = True

    def _flush(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        self.view.append_streaming(self._answer_text[self._shown :])
        self._shown = len(self._answer_text)
        now = time.monotonic()
        if now - self._last_render >= RENDER_S:
            self._last_render = now
            self.view.render_streaming()
        if self._stats is not None:
            self._show_speed(self._stats)
            self.flush_timer.setInterval(
                FAST_FLUSH_MS if self._stats.eval_tps > FAST_TPS else FLUSH_MS
            )
        if self._answer_id is not None and now - self._last_save >= SAVE_S:
            self._last_save = now
            self.store.update_message(self._answer_id, self._answer_text)

    def _show_speed(self, stats: GenerationStats) -> None:
        if stats.eval_tps:
            self._tps_history.append(stats.eval_tps)
            if len(self._tps_history) % 4 == 1 or not self.busy:
                self.sparkline.set_values(self._tps_history)
        self.tps_label.setText(f"eval {stats.eval_tps:.1f} tok/s")
        self.detail_label.setText(
            f"prompt {stats.prompt_tps:.0f} tok/s · first token {stats.ttft_s:.2f} s · {stats.eval_tokens} tokens · "
            f"context {stats.context_used}/{stats.context_size}"
        )
        self.speedShown.emit(stats.eval_tps)

    def _finish(self) -> None:
        self.flush_timer.stop()
        self._request = None
        self.stop_button.setEnabled(False)
        self.send_button.setEnabled(True)
        self.regen_button.setEnabled(True)

    def _done(self, request_id: int, done: ChatDone) -> None:
        if request_id != self._request:
            return
        assert self._answer_id is not None
        assert self.conversation is not None
        self._finish()
        stats = {**asdict(done.stats), "perf": asdict(done.stats.perf)}
        self.store.update_message(
            self._answer_id, done.text, stats=stats, finish_reason=done.finish_reason
        )
        self._show_speed(done.stats)
        self.view.set_messages(self.store.messages(self.conversation.id))
        self.statusBar().showMessage(stats_line(stats), 10_000)
        self.answerFinished.emit(done)

    def _chat_failed(self, request_id: int, message: str, died: bool) -> None:
        if request_id != self._request:
            return
        self._finish()
        if self._answer_id is not None and self.conversation is not None:
            # what was shown stays: the partial answer is saved, marked as interrupted
            self.store.update_message(
                self._answer_id, self._answer_text, stats=None, finish_reason="error"
            )
            self.view.set_messages(self.store.messages(self.conversation.id))
        if died:
            self.model_info = None
        self.notify(message)

    def stop(self) -> None:
        """Stop the answer; what arrived so far is kept."""
        if self.busy:
            self.controller.cancel()

    def regenerate(self) -> None:
        """Answer the last message again."""
        if self.busy or self.conversation is None or self.model_info is None:
            return
        messages = self.store.messages(self.conversation.id)
        last_user = next((m for m in reversed(messages) if m.role == "user"), None)
        if last_user is None:
            return
        self.store.truncate_after(self.conversation.id, last_user.id, keep=True)
        self._start_answer()

    def edit_message(self, message_id: int) -> None:
        """Put a message back in the input box; sending replaces it and everything after."""
        if self.busy or self.conversation is None:
            return
        message = next(
            (m for m in self.store.messages(self.conversation.id) if m.id == message_id), None
        )
        if message is not None and message.role == "user":
            self._editing = message_id
            self.input.setPlainText(message.content)
            self.input.setFocus()

    # -- settings and closing -----------------------------------------------------------

    def open_settings(self) -> None:
        """Edit the settings."""
        from mixdesk.ui.settings_dialog import SettingsDialog

        dialog = SettingsDialog(self.settings, self)
        if dialog.exec():
            self.settings = dialog.result_settings()
            self.settings.save()
            self.offload.set_defaults(LoadChoices.from_settings(self.settings))

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802
        if self._answer_id is not None and self.busy:
            self.store.update_message(self._answer_id, self._answer_text)
        for task in self._tasks:
            task.cancel_event.set()
            task.worker_thread.quit()
            task.worker_thread.wait(10_000)
        self.manager.shutdown()
        self.controller.shutdown()
        self.store.close()
        super().closeEvent(event)
