"""Conversations: which one is open, its messages, system prompt and sampling; and the list
panel (search, New, Rename, Delete, Export) that shows them."""

from __future__ import annotations

import re
from pathlib import Path

from PySide6.QtCore import QObject, QStandardPaths, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QFileDialog,
    QGridLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from mixdesk.core.chat.template import ChatMessage
from mixdesk.core.engine import SamplingParams
from mixdesk.core.workspace.chat_export import export_json, export_markdown
from mixdesk.core.workspace.chat_store import ChatStore, Conversation, StoredMessage
from mixdesk.core.workspace.settings import Settings

#: Characters of the first message that become a new conversation's title.
TITLE_CHARS = 48


class ConversationController(QObject):
    """The conversations in a :class:`ChatStore` and the one that is open.

    Args:
        store: the conversations database.
        settings: where a new conversation's system prompt and sampling come from (read
            each time, so edited settings apply to the next conversation).

    Signals:
        listChanged(): the conversations, or the search over them, changed.
        opened(object): this :class:`Conversation` is now the open one.
    """

    listChanged = Signal()
    opened = Signal(object)
    deleted = Signal(object)

    #: How long a deleted conversation can be brought back (milliseconds).
    UNDO_MS = 8000

    def __init__(self, store: ChatStore, settings: Settings, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.store = store
        self.settings = settings
        self.current: Conversation | None = None
        self.search = ""
        #: A deleted conversation that Undo can still bring back (deleted for good when its
        #: timer ends, another is deleted, or the window closes).
        self.pending: Conversation | None = None
        self._undo_timer = QTimer(self)
        self._undo_timer.setSingleShot(True)
        self._undo_timer.timeout.connect(self.finish_delete)

    def listing(self) -> list[Conversation]:
        """The conversations matching the search, most recent first (without one deleted
        a moment ago, which Undo can still bring back)."""
        hidden = self.pending.id if self.pending is not None else None
        return [c for c in self.store.conversations(self.search) if c.id != hidden]

    def set_search(self, text: str) -> None:
        """Filter the list by title and message text."""
        self.search = text.strip()
        self.listChanged.emit()

    def new(self) -> Conversation:
        """Start and open a conversation with the default system prompt and sampling."""
        conv = self.store.create(
            system_prompt=self.settings.system_prompt, sampling=self.settings.sampling()
        )
        self.search = ""
        self.current = conv
        self.listChanged.emit()
        self.opened.emit(conv)
        return conv

    def ensure(self) -> Conversation:
        """The open conversation (a new one if none is open)."""
        return self.current if self.current is not None else self.new()

    def open(self, conversation_id: int) -> None:
        """Open a conversation."""
        conv = self.store.get(conversation_id)
        if conv is not None:
            self.current = conv
            self.opened.emit(conv)

    def open_first(self) -> None:
        """Open the first conversation of the list, or a new one when there is none."""
        listing = self.listing()
        if listing:
            self.open(listing[0].id)
        else:
            self.new()

    def _update(self, **values: object) -> Conversation:
        assert self.current is not None
        self.store.update(self.current.id, **values)
        conv = self.store.get(self.current.id)
        assert conv is not None
        self.current = conv
        return conv

    def rename(self, title: str) -> None:
        """Rename the open conversation."""
        self._update(title=title)
        self.listChanged.emit()

    def delete(self) -> None:
        """Delete the open conversation and open the next one; for :data:`UNDO_MS` it can be
        brought back (:meth:`undo`), then it is deleted for good. ``deleted`` says which."""
        if self.current is None:
            return
        self.finish_delete()  # only the last one deleted waits for an undo
        self.pending = self.current
        self.current = None
        self._undo_timer.start(self.UNDO_MS)
        self.listChanged.emit()
        self.deleted.emit(self.pending)
        self.open_first()

    def undo(self) -> None:
        """Bring back the conversation deleted a moment ago, and open it."""
        if self.pending is None:
            return
        conv, self.pending = self.pending, None
        self._undo_timer.stop()
        self.listChanged.emit()
        self.open(conv.id)

    def finish_delete(self) -> None:
        """Delete for good what is waiting for an undo (also when the window closes)."""
        self._undo_timer.stop()
        if self.pending is not None:
            conv, self.pending = self.pending, None
            self.store.delete(conv.id)

    def export(self, path: Path, *, as_json: bool) -> None:
        """Write the open conversation to ``path`` as Markdown or JSON."""
        assert self.current is not None
        export = export_json if as_json else export_markdown
        path.write_text(export(self.store, self.current.id), encoding="utf-8")

    def set_system_prompt(self, text: str) -> None:
        """Change the open conversation's system prompt."""
        if self.current is not None:
            self._update(system_prompt=text)

    def sampling(self) -> SamplingParams:
        """The open conversation's sampling (the settings' defaults when it has none)."""
        if self.current is not None and self.current.sampling is not None:
            return self.current.sampling
        return self.settings.sampling()

    def set_sampling(self, sampling: SamplingParams) -> None:
        """Keep ``sampling`` with the open conversation (a new one if none is open)."""
        self.ensure()
        self._update(sampling=sampling)

    def messages(self) -> list[StoredMessage]:
        """The open conversation's messages (none when none is open)."""
        return self.store.messages(self.current.id) if self.current is not None else []

    def history(self) -> list[ChatMessage]:
        """The open conversation as the model sees it: system prompt, then the turns."""
        assert self.current is not None
        messages = [
            ChatMessage(m.role, m.content)
            for m in self.messages()
            if m.role in ("user", "assistant")
        ]
        if self.current.system_prompt:
            messages.insert(0, ChatMessage("system", self.current.system_prompt))
        return messages

    def add_user_message(self, text: str, *, replacing: int | None = None) -> None:
        """Add the user's message; with ``replacing``, as a new version beside that message
        (the old one and everything after it are kept: "< 1/2 >" goes back to them). The
        first message of a conversation becomes its title."""
        conv = self.ensure()
        if not self.store.messages(conv.id):
            self.rename(text[:TITLE_CHARS])
        if replacing is not None:
            old = next((m for m in self.store.messages(conv.id) if m.id == replacing), None)
            if old is not None:
                self.store.add_message(conv.id, "user", text, parent=old.parent_id)
                return
        self.store.add_message(conv.id, "user", text)

    def select_version(self, message_id: int, step: int) -> None:
        """Show another version of a message (-1: the one before, +1: the one after)."""
        if self.current is not None:
            self.store.select_version(self.current.id, message_id, step)
            self.opened.emit(self.current)


class ConversationPanel(QWidget):
    """The list of conversations with search, New, Rename, Delete and Export.

    Signals:
        chosen(int): the user picked this conversation in the list.
        exported(str): a conversation was written to this path.
    """

    chosen = Signal(int)
    exported = Signal(str)

    def __init__(self, conversations: ConversationController, parent: QWidget | None = None):
        super().__init__(parent)
        self.conversations = conversations
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search conversations")
        self.no_matches = QLabel()
        self.no_matches.setWordWrap(True)
        self.no_matches.setStyleSheet("color:#777")
        self.no_matches.hide()
        self.list = QListWidget()
        # long titles end in "…" (the tooltip has them whole): no sideways scrolling
        self.list.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.new_button = QPushButton("New")
        self.rename_button = QPushButton("Rename")
        self.delete_button = QPushButton("Delete")
        self.export_button = QPushButton("Export")
        self.undo_button = QPushButton("Undo delete")
        self.undo_button.hide()
        layout = QVBoxLayout(self)
        layout.addWidget(self.search)
        layout.addWidget(self.no_matches)
        layout.addWidget(self.list, 1)
        layout.addWidget(self.undo_button)
        grid = QGridLayout()  # two by two: the list stays narrow next to the chat
        for i, b in enumerate(
            (self.new_button, self.rename_button, self.delete_button, self.export_button)
        ):
            grid.addWidget(b, i // 2, i % 2)
        layout.addLayout(grid)

        self.search.textChanged.connect(conversations.set_search)
        self.list.currentItemChanged.connect(self._item_chosen)
        self.new_button.clicked.connect(lambda _checked=False: conversations.new())
        self.rename_button.clicked.connect(self._rename)
        self.delete_button.clicked.connect(conversations.delete)
        self.export_button.clicked.connect(self._export)
        self.undo_button.clicked.connect(conversations.undo)
        conversations.deleted.connect(self._offer_undo)
        conversations.listChanged.connect(self.refresh)
        conversations.opened.connect(lambda _c: self.refresh())

    def _offer_undo(self, conv: Conversation) -> None:
        # a short text: a long title would widen the list and with it the window (the title
        # is in the tooltip)
        self.undo_button.setText("Undo delete")
        self.undo_button.setToolTip(
            f"Bring back “{conv.title}”; it is deleted for good in a few seconds."
        )
        self.undo_button.show()

    def refresh(self) -> None:
        """Refill the list (filtered by the search), with the open conversation selected."""
        conversations = self.conversations
        self.undo_button.setVisible(conversations.pending is not None)
        if self.search.text().strip() != conversations.search:
            self.search.blockSignals(True)
            self.search.setText(conversations.search)
            self.search.blockSignals(False)
        current = conversations.current.id if conversations.current else None
        self.list.blockSignals(True)
        self.list.clear()
        listing = conversations.listing()
        term = conversations.search
        self.no_matches.setVisible(bool(term) and not listing)
        if term and not listing:  # a search that finds nothing says so
            shown = term if len(term) <= 20 else term[:19] + "…"  # never wider than the list
            self.no_matches.setText(f"No matches for “{shown}” in titles or messages.")
            self.no_matches.setToolTip(term)
        for c in listing:
            item = QListWidgetItem(c.title)
            item.setToolTip(c.title)
            item.setData(256, c.id)
            self.list.addItem(item)
            if c.id == current:
                self.list.setCurrentItem(item)
        self.list.blockSignals(False)

    def _item_chosen(self, item: QListWidgetItem | None, _previous: object) -> None:
        if item is not None:
            self.chosen.emit(int(item.data(256)))

    def _rename(self) -> None:
        conv = self.conversations.current
        if conv is None:
            return
        title, ok = QInputDialog.getText(self, "Rename", "Title", text=conv.title)
        if ok and title.strip():
            self.conversations.rename(title.strip())

    def _export(self) -> None:
        conv = self.conversations.current
        if conv is None:
            return
        path, chosen = QFileDialog.getSaveFileName(
            self,
            "Export conversation",
            str(export_folder() / f"{file_name(conv.title)}.md"),
            "Markdown (*.md);;JSON (*.json)",
        )
        if path:
            as_json = "json" in chosen.lower() or path.endswith(".json")
            self.conversations.export(Path(path), as_json=as_json)
            self.exported.emit(path)


def export_folder() -> Path:
    """Where an export is offered first: the user's Documents folder (home without one), not
    the folder MixDesk happened to start in."""
    documents = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.DocumentsLocation)
    folder = Path(documents) if documents else Path.home()
    return folder if folder.is_dir() else Path.home()


def file_name(title: str) -> str:
    """A conversation's title as a file name (no folder separators or characters that file
    systems refuse; "conversation" when nothing is left)."""
    name = re.sub(r'[\\/:*?"<>|\x00-\x1f]+', " ", title).strip(" .")
    return " ".join(name.split())[:80] or "conversation"


__all__ = ["ConversationController", "ConversationPanel", "export_folder", "file_name"]
