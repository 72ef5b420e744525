"""The window costs no speed (issue 21 item 12): while an answer streams, the view's work per
update does not grow with the answer, each Markdown block is rendered once, and a burst of
deltas becomes a bounded number of updates showing exactly the streamed text."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QObject, QPointF, Signal
from PySide6.QtGui import QFont, QTextCursor
from PySide6.QtWidgets import QApplication
from pytestqt.qtbot import QtBot

from mixdesk.core.gguf.profile import profile_local
from mixdesk.core.loading.choices import LoadChoices
from mixdesk.core.loading.model import resolve_file
from mixdesk.core.loading.service import LoadRequest
from mixdesk.core.workspace.chat_store import ChatStore, StoredMessage
from mixdesk.core.workspace.settings import Settings
from mixdesk.ui.answer import FLUSH_MS, AnswerController
from mixdesk.ui.chat_pane import ChatPane
from mixdesk.ui.chat_view import ChatView
from mixdesk.ui.conversations import ConversationController
from mixdesk.ui.threads import EngineController
from tests.helpers.fake_engine import Answer, FakeEngine
from tests.helpers.window import CPU

#: A paragraph of a long answer (about 60 words), and the blank line that ends it.
PARAGRAPH = "The model wrote another sentence of its long answer, and then one more. " * 5
SENTINEL = QPointF(-7.0, -7.0)


def _view(qtbot: QtBot) -> ChatView:
    view = ChatView()
    qtbot.addWidget(view)
    view.resize(600, 400)
    view.show()
    qtbot.waitExposed(view)
    view.set_messages([StoredMessage(1, "user", "Tell me a long story")])
    view.start_streaming()
    return view


def _lines_laid_out(view: ChatView, action: Callable[[], None]) -> tuple[int, int]:
    """(blocks whose lines Qt laid out again during ``action``, blocks in all).

    Qt makes a block's lines anew when it lays the block out, and only moves them when the
    block merely moves: a mark put on each first line survives unless the block was laid out.
    """
    marked = []
    block = view.document().begin()
    while block.isValid():
        layout = block.layout()
        if layout is not None and layout.lineCount():
            layout.lineAt(0).setPosition(SENTINEL)
            marked.append(layout)
        block = block.next()
    action()
    QApplication.processEvents()
    redone = sum(1 for layout in marked if layout.lineAt(0).position() != SENTINEL)
    return redone, len(marked)


def test_an_update_lays_out_the_new_text_only_however_long_the_answer(qtbot: QtBot) -> None:
    """The answer grew inside a table cell, which Qt lays out whole at every change: each
    update of a long answer cost time in proportion to all of it."""
    view = _view(qtbot)
    for _ in range(60):
        view.append_streaming(PARAGRAPH + "\n\n")
    QApplication.processEvents()
    redone, blocks = _lines_laid_out(view, lambda: view.append_streaming("And then "))
    assert blocks > 60
    assert redone <= 3  # the open paragraph (and the speed line under it), not all 60


def test_a_markdown_block_is_rendered_when_it_ends_not_a_second_later(qtbot: QtBot) -> None:
    view = _view(qtbot)
    view.append_streaming("Some **bold** words.\n\nAnd the next para")
    found = view.document().find("bold")
    assert not found.isNull() and found.charFormat().fontWeight() == QFont.Weight.Bold
    assert "**" not in view.toPlainText()
    assert view.toPlainText().rstrip().endswith("And the next para")  # the open block, as text
    view.append_streaming("graph.\n\n```python\nx = 1\n")
    code = view.document().find("x = 1")
    assert code.charFormat().fontFamilies() == ["monospace"]  # an open fence reads as code
    view.append_streaming("```\n")
    assert view.streaming is not None and view.streaming.codes == ["x = 1"]


def test_each_block_is_rendered_once(qtbot: QtBot) -> None:
    """The whole answer was rendered as Markdown again every second (the longer it got, the
    longer each render took)."""
    view = _view(qtbot)
    added: list[int] = []
    view.document().contentsChange.connect(lambda _at, _removed, n: added.append(n))
    text = ""
    for i in range(400):
        piece = f"word{i} " if i % 40 != 39 else f"word{i}.\n\n"
        text += piece
        view.append_streaming(piece)
    assert view.streaming_text == text
    # every character goes in as plain text once and as rendered text once, no more
    assert sum(added) <= 2 * len(text) + 400


class _Relay(QObject):
    loaded = Signal(object)


def test_a_burst_of_deltas_is_a_bounded_number_of_updates_of_exactly_the_text(
    qtbot: QtBot,
    tmp_path: Path,
    fake: FakeEngine,
    engine: EngineController,
    models: dict[str, Path],
) -> None:
    pieces = tuple(f"w{i}" + (".\n\n" if i % 50 == 49 else " ") for i in range(1000))
    fake.answer = Answer(pieces=pieces, hold_after=len(pieces))  # then it waits, streaming
    store = ChatStore(tmp_path / "chats.sqlite")
    conversations = ConversationController(store, Settings())
    answers = AnswerController(engine, conversations, engine)
    pane = ChatPane(answers, Settings())
    qtbot.addWidget(pane)
    model = resolve_file(models["q2_k"])
    request = LoadRequest(model, CPU, LoadChoices(n_ctx=512), profile=profile_local(model.path))
    relay = _Relay()  # the runner's signal, received in this thread
    engine.runner.loaded.connect(relay.loaded)
    with qtbot.waitSignal(relay.loaded, timeout=5_000) as loaded:
        engine.load(request)
    answers.source = loaded.args[0].info
    conversations.new()
    updates: list[str] = []
    answers.textArrived.connect(updates.append)
    started = time.monotonic()
    pane.send("Write")
    text = "".join(pieces)
    qtbot.waitUntil(lambda: pane.view.streaming_text == text, timeout=10_000)
    elapsed_ms = (time.monotonic() - started) * 1000
    assert len(updates) <= elapsed_ms / FLUSH_MS + 2  # 1000 deltas, a few updates
    assert "".join(updates) == text
    shown = QTextCursor(pane.view.document())
    start, end = pane.view.streaming.text_range() if pane.view.streaming else (0, 0)
    shown.setPosition(start)
    shown.setPosition(end, QTextCursor.MoveMode.KeepAnchor)
    words = shown.selectedText().replace("\u2029", " ").split()
    assert words == ["Assistant", *text.split()]  # every word, once, in order
    with qtbot.waitSignal(answers.finished, timeout=5_000):
        fake.release()
    assert conversations.messages()[-1].content == text
    store.close()
