"""The chat view people read: distinct turns, times on hover, answer footers, a scroll that
follows the answer only while the user has not scrolled up, and no HTML from the model."""

from __future__ import annotations

import time

from PySide6.QtCore import QEvent, QObject
from pytestqt.qtbot import QtBot

from mixdesk.core.engine import GenerationStats
from mixdesk.core.workspace.chat_store import StoredMessage
from mixdesk.ui.chat_view import ChatView

WHEN = time.mktime((2026, 11, 26, 14, 5, 9, 0, 0, -1))


def _conversation(turns: int) -> list[StoredMessage]:
    out = []
    for i in range(turns):
        out.append(StoredMessage(2 * i + 1, "user", f"Question {i}", created=WHEN))
        out.append(
            StoredMessage(
                2 * i + 2,
                "assistant",
                f"Answer {i}\n\n```python\nprint({i})\n```",
                stats=GenerationStats(eval_tokens=42, eval_tps=12.5, prompt_tps=100.0),
                finish_reason="stop",
                created=WHEN + 1,
            )
        )
    return out


def _following(view: ChatView) -> bool:
    return view.following  # a call: mypy does not carry the narrowing across user actions


def _view(qtbot: QtBot) -> ChatView:
    view = ChatView()
    qtbot.addWidget(view)
    view.resize(500, 260)
    view.show()
    qtbot.waitExposed(view)
    return view


def test_turns_are_distinct_with_times_on_hover_and_speed_footers(qtbot: QtBot) -> None:
    view = _view(qtbot)
    view.set_messages(_conversation(1))
    page = view.toHtml()
    assert "#eef4ff" in page and "#f6f8f6" in page  # a tint per role, not one plain column
    text = view.toPlainText()
    assert text.index("You") < text.index("Question 0") < text.index("Assistant")
    assert "42 tokens · 12.5 tok/s" in text
    assert "copy" in text
    for name, when in (("You", "14:05:09"), ("Assistant", "14:05:10")):
        found = view.document().find(name)
        found.setPosition(found.selectionStart() + 1)  # inside the word
        tip = view.tooltip_at(view.cursorRect(found).center())
        assert tip.startswith("Written ") and when in tip and "26 Nov 2026" in tip
    assert view.tooltip_at(view.cursorRect(view.document().find("Question 0")).center()) == ""


def test_the_stream_is_followed_only_while_the_user_has_not_scrolled_up(qtbot: QtBot) -> None:
    view = _view(qtbot)
    bar = view.verticalScrollBar()
    view.set_messages(_conversation(8))
    assert view.at_bottom()
    view.start_streaming()
    view.append_streaming("line\n" * 40)
    assert view.at_bottom() and bar.maximum() > 0

    bar.setValue(0)  # the user scrolls up to read
    assert not _following(view)
    view.append_streaming("more\n" * 40)
    qtbot.wait(SCROLL_WAIT)
    assert bar.value() == 0

    bar.setValue(bar.maximum())  # back at the end: following again
    assert _following(view)
    view.append_streaming("again\n" * 40)
    assert view.at_bottom()


def test_an_update_repaints_the_view_once_not_at_60_hz(qtbot: QtBot) -> None:
    """The view glided to the new end after every update that moved it more than a few
    lines: at hundreds of tokens a second that was a 60 Hz animation all along, repainting
    the whole view (the window's CPU time doubled, taken from llama.cpp)."""
    view = _view(qtbot)
    view.set_messages(_conversation(8))
    view.start_streaming()
    qtbot.wait(SCROLL_WAIT)
    paints = _PaintCounter()
    view.viewport().installEventFilter(paints)
    for _ in range(3):
        view.append_streaming("a long paragraph of new text\n\n" * 10)
        qtbot.wait(SCROLL_WAIT)
    assert view.at_bottom()
    assert 1 <= paints.count <= 6  # one or two per update


class _PaintCounter(QObject):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def eventFilter(self, _watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt's name
        self.count += event.type() == QEvent.Type.Paint
        return False


SCROLL_WAIT = 300  # ms: longer than a scroll animation would take


def test_model_output_is_text_and_loads_nothing(qtbot: QtBot) -> None:
    view = _view(qtbot)
    hostile = '<b>bold</b> <img src="http://example.com/x.png"> [a](http://example.com)'
    view.set_messages([StoredMessage(1, "assistant", hostile)])
    text = view.toPlainText()
    assert "<b>bold</b>" in text
    assert "(http://example.com)" in text
    assert 'src="http' not in view.toHtml()
