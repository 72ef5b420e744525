"""The chat pane: the open conversation, the streaming answer, the message box and its
buttons, the system prompt preset and the conversation's sampling."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QColor, QKeyEvent, QTextCharFormat, QTextCursor
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QTextEdit,
    QVBoxLayout,
    QWidget,
)

from mixdesk.core.workspace.chat_store import Conversation, StoredMessage
from mixdesk.core.workspace.settings import Settings
from mixdesk.errors import MixdeskError
from mixdesk.ui.answer import AnswerController
from mixdesk.ui.widgets import ChatView, compact


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


class ChatPane(QWidget):
    """Shows the open conversation and streams answers into it, through an
    :class:`AnswerController` (and its :class:`ConversationController`).

    Signals:
        problem(object): an exception to tell the user about (e.g. no model loaded yet).
    """

    problem = Signal(object)

    def __init__(
        self, answers: AnswerController, settings: Settings, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.answers = answers
        self.conversations = answers.conversations
        #: Loads the chosen model and sends ``message`` once it is loaded; False when no model
        #: is chosen (the window sets it).
        self.load_first: Callable[[str], bool] = lambda _message: False
        #: Whether a model is chosen that sending would load (the window sets it).
        self.model_chosen: Callable[[], bool] = lambda: False
        self.settings = settings
        self.preset, self.system_text, self.save_preset = _system_prompt_controls(settings)
        self._system_timer = QTimer(self)
        self._system_timer.setSingleShot(True)
        self._system_timer.setInterval(400)  # saved a moment after typing stops
        self.sampling_button = QPushButton("Sampling…")
        self.view = ChatView()
        self.editing_note = QLabel(
            "Editing your message: sending keeps the old version and its answers beside the "
            "new one (< 1/2 > moves between them)."
        )
        self.editing_note.setWordWrap(True)
        self.editing_note.setStyleSheet("color:#1f5fbf")
        self.cancel_edit = QPushButton("Cancel edit")
        self.input = MessageInput()
        self.input.setPlaceholderText("Message (Enter sends, Shift+Enter for a new line)")
        self.input.setMaximumHeight(110)
        self.send_button = QPushButton("Send")
        self.stop_button = QPushButton("Stop")
        self.regen_button = QPushButton("Regenerate")

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        sys_row = QHBoxLayout()
        sys_row.addWidget(QLabel("System prompt"))
        sys_row.addWidget(self.preset, 1)
        sys_row.addWidget(self.save_preset)
        sys_row.addWidget(self.sampling_button)
        layout.addLayout(sys_row)
        layout.addWidget(self.system_text)
        layout.addWidget(self.view, 1)
        editing = QHBoxLayout()
        editing.addWidget(self.editing_note, 1)
        editing.addWidget(self.cancel_edit)
        layout.addLayout(editing)
        layout.addWidget(self.input)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        for b in (self.regen_button, self.stop_button, self.send_button):
            buttons.addWidget(b)
        layout.addLayout(buttons)
        self._connect()
        self._show_editing(False)
        self.update_buttons()

    def _connect(self) -> None:
        answers, conversations = self.answers, self.conversations
        conversations.opened.connect(self.show_conversation)
        conversations.listChanged.connect(self._highlight_search)
        self.preset.currentIndexChanged.connect(self._preset_chosen)
        self.system_text.textChanged.connect(self._system_timer.start)
        self._system_timer.timeout.connect(self.save_system_prompt)
        self.save_preset.clicked.connect(self._save_preset)
        self.sampling_button.clicked.connect(self._edit_sampling)
        answers.started.connect(self._started)
        answers.textArrived.connect(self.view.append_streaming)
        answers.finished.connect(lambda _done: self._show_messages())
        answers.failed.connect(lambda _err: self._show_messages())
        answers.finished.connect(lambda _done: self.update_buttons())
        answers.failed.connect(lambda _err: self.update_buttons())
        answers.busyChanged.connect(lambda _busy: self.update_buttons())
        answers.sourceChanged.connect(self.update_buttons)
        conversations.opened.connect(lambda _c: self.update_buttons())
        # clicked(bool) would arrive as send's text argument: call it with none
        self.send_button.clicked.connect(lambda _checked=False: self.send())
        self.input.submitted.connect(lambda: self.send())  # noqa: PLW0108 - same reason
        self.stop_button.clicked.connect(answers.stop)
        self.regen_button.clicked.connect(answers.regenerate)
        self.view.editRequested.connect(self.edit_message)
        self.view.versionRequested.connect(conversations.select_version)
        self.cancel_edit.clicked.connect(self.stop_editing)

    def send(self, text: str | None = None) -> None:
        """Send the input box's text (or ``text``) and start the answer; with a model chosen
        but not loaded, :attr:`load_first` loads it and the message goes once it is."""
        message = (self.input.toPlainText() if text is None else text).strip()
        if message and self.answers.source is None and self.load_first(message):
            self.input.clear()
            return
        try:
            sent = self.answers.send(self.input.toPlainText() if text is None else text)
        except MixdeskError as err:
            self.problem.emit(err)
            return
        if sent:
            self.input.clear()
            self._show_editing(False)

    def edit_message(self, message_id: int) -> None:
        """Put a message back in the input box to edit; sending adds the new version beside
        it (nothing is deleted), Cancel leaves everything as it was."""
        text = self.answers.edit(message_id)
        if text is not None:
            self.input.setPlainText(text)
            self.input.setFocus()
            self._show_editing(True)

    def stop_editing(self) -> None:
        """Cancel an edit: the message stays as it was and the input box is emptied."""
        self.answers.editing = None
        self.input.clear()
        self._show_editing(False)

    def _show_editing(self, editing: bool) -> None:
        self.editing_note.setVisible(editing)
        self.cancel_edit.setVisible(editing)
        self.send_button.setText("Save and send" if editing else "Send")

    def show_conversation(self, conversation: Conversation) -> None:
        """Show ``conversation``'s messages and system prompt."""
        self._system_timer.stop()
        self._show_messages()
        self.preset.blockSignals(True)
        self.preset.setCurrentIndex(max(0, self.preset.findData(conversation.system_prompt)))
        self.preset.blockSignals(False)
        self.system_text.blockSignals(True)
        self.system_text.setPlainText(conversation.system_prompt)
        self.system_text.blockSignals(False)

    def _preset_chosen(self, _index: int) -> None:
        text = str(self.preset.currentData() or "")
        self.system_text.setPlainText(text)
        self.save_system_prompt()

    def save_system_prompt(self) -> None:
        """Keep the typed system prompt as the open conversation's (the next answer uses it)."""
        self._system_timer.stop()
        text = self.system_text.toPlainText().strip()
        current = self.conversations.current
        if current is not None and text != current.system_prompt:
            self.conversations.set_system_prompt(text)

    def _save_preset(self) -> None:
        text = self.system_text.toPlainText().strip()
        if not text:
            return
        name, ok = QInputDialog.getText(self, "Save as preset", "Name of the preset")
        if ok and name.strip():
            self.add_preset(name.strip(), text)

    def add_preset(self, name: str, text: str) -> None:
        """Keep ``text`` as a preset of the user's own (in the settings), and choose it."""
        self.settings.system_presets = {**self.settings.system_presets, name: text}
        self.settings.save()
        index = self.preset.findText(name)
        if index < 0:
            self.preset.addItem(name, text)
            index = self.preset.count() - 1
        else:
            self.preset.setItemData(index, text)
        self.preset.blockSignals(True)
        self.preset.setCurrentIndex(index)
        self.preset.blockSignals(False)

    def _show_messages(self) -> None:
        self.view.set_messages(self.conversations.messages(), note=self.answers.dropped_note())
        first = highlight_hits(self.view, self.conversations.search)
        if first is not None and not self.answers.busy:
            self.view.setTextCursor(first)  # opened from a search: show where it matched
            self.view.ensureCursorVisible()

    def _highlight_search(self) -> None:
        if not self.answers.busy:
            highlight_hits(self.view, self.conversations.search)

    def _started(self, messages: list[StoredMessage]) -> None:
        self.view.set_messages(messages)
        self.view.start_streaming()

    def update_buttons(self) -> None:
        """Send, Regenerate and Stop enabled only when they can do something; a disabled
        button says why in its tooltip."""
        answers = self.answers
        busy, ready = answers.busy, answers.source is not None or self.model_chosen()
        self.stop_button.setEnabled(busy)
        self.stop_button.setToolTip("Stop the answer (what arrived is kept)." if busy else "")
        self.send_button.setEnabled(ready and not busy)
        if not ready:
            why = "Choose a model above (sending loads it) or an endpoint first."
        elif busy:
            why = "An answer is being written: wait, or press Stop."
        elif answers.source is None:
            why = "Sending loads the chosen model first (with its planned layers)."
        else:
            why = ""
        self.send_button.setToolTip(why)
        regen = answers.can_regenerate()
        self.regen_button.setEnabled(regen)
        self.regen_button.setToolTip(
            "" if regen else "Nothing to regenerate yet: no answer, or no model to answer."
        )

    def _edit_sampling(self) -> None:
        from mixdesk.ui.settings_dialog import SamplingDialog

        dialog = SamplingDialog(self.conversations.sampling(), self)
        if dialog.exec():
            self.conversations.set_sampling(dialog.values())


#: The background of a search hit in the open conversation.
HIT_COLOUR = "#ffe066"


def highlight_hits(view: QTextEdit, term: str) -> QTextCursor | None:
    """Mark every place ``term`` occurs in ``view`` (any case), or none when ``term`` is
    empty; returns the first (None when there is none)."""
    selections: list[QTextEdit.ExtraSelection] = []
    if term:
        hit = QTextCharFormat()
        hit.setBackground(QColor(HIT_COLOUR))
        document = view.document()
        cursor = document.find(term, 0)
        while not cursor.isNull():
            selection = QTextEdit.ExtraSelection()
            selection.cursor = cursor
            selection.format = hit
            selections.append(selection)
            cursor = document.find(term, cursor)
    view.setExtraSelections(selections)
    return QTextCursor(selections[0].cursor) if selections else None


def _system_prompt_controls(settings: Settings) -> tuple[QComboBox, QPlainTextEdit, QPushButton]:
    """The presets, the conversation's own system prompt (a preset fills it, any text can be
    typed) and Save preset."""
    preset = compact(QComboBox(), 12)
    preset.addItem("No system prompt", "")
    for name, text in settings.system_presets.items():
        preset.addItem(name, text)
    system_text = QPlainTextEdit()
    system_text.setPlaceholderText("This conversation's system prompt (none)")
    system_text.setMaximumHeight(system_text.fontMetrics().lineSpacing() * 3 + 12)
    save = QPushButton("Save preset…")
    save.setToolTip("Keep this system prompt as a preset of your own.")
    return preset, system_text, save
