"""The chat view: a conversation people read, with the streaming answer growing at its end.

Each turn is a block of its own (a coloured stripe, a tint and the role's name: "You" or
"Assistant"), the time it was written shows when the pointer rests on the name, an answer
ends with its speed figures, and code blocks have "copy" links. What a model writes is
Markdown rendered by :mod:`mixdesk.ui.markdown` (no HTML of its own, nothing remote).

While an answer streams, the view keeps its end in view, one step per update (at most ten a
second), unless the user has scrolled up to read: it then stays where the user put it until
they scroll back to the end. It does not glide: an animation repaints the whole view 60 times
a second, and on a 2-core machine that time is taken from llama.cpp (a glide per update
doubled the window's CPU time while an answer streamed).
"""

from __future__ import annotations

import html
import time
from typing import Any

from PySide6.QtCore import QEvent, QPoint, QUrl, Signal
from PySide6.QtGui import QGuiApplication, QHelpEvent, QPainter, QPaintEvent, QTextCursor
from PySide6.QtWidgets import QTextBrowser, QToolTip, QWidget

from mixdesk.core.chat.words import no_text_words, prompt_speed_words
from mixdesk.core.engine import GenerationStats
from mixdesk.core.workspace.chat_store import StoredMessage
from mixdesk.ui.markdown import render_markdown
from mixdesk.ui.streaming import StreamingAnswer

#: (stripe, tint, name colour) of each role.
_ROLE_STYLE = {
    "user": ("#2b7de9", "#eef4ff", "#1f5fbf"),
    "assistant": ("#59a14f", "#f6f8f6", "#2e6b27"),
    "note": ("#bab0ac", "#fafafa", "#666666"),
}
#: The streaming answer's speed line changes at most this often (seconds).
FOOTER_EVERY_S = 0.25
#: The footer says how many prompt tokens came from the KV cache from this many (and at
#: least a quarter of the prompt).
REUSE_WORTH_SAYING = 8


def stats_line(stats: GenerationStats | None) -> str:
    """The speed figures of an answer, as shown under it."""
    if stats is None:
        return ""
    line = (
        f"{stats.eval_tokens} tokens · {stats.eval_tps:.1f} tok/s · "
        f"{prompt_speed_words(stats.prompt_eval_tokens, tps=stats.prompt_tps)} · "
        f"first token {stats.ttft_s:.2f} s"
    )
    reused = stats.prompt_reused
    # the conversation's KV state was kept, so only the rest of the prompt was read (a few
    # shared tokens, a BOS and a template's first marker, are not worth a word)
    if reused >= REUSE_WORTH_SAYING and 4 * reused >= stats.prompt_tokens:
        line += f" · {reused} of {stats.prompt_tokens} prompt tokens cached"
    return line


def written_at(created: float) -> str:
    """When a message was written, for its tooltip."""
    if created <= 0:
        return ""
    return time.strftime("Written %H:%M:%S, %d %b %Y", time.localtime(created))


def version_links(m: StoredMessage) -> str:
    """ "< 2/3 >" for a message with several versions (edited, regenerated); "" otherwise."""
    if m.versions <= 1:
        return ""
    back = f'<a href="version:{m.id}:-1">&lsaquo;</a>' if m.version > 1 else "&lsaquo;"
    on = f'<a href="version:{m.id}:1">&rsaquo;</a>' if m.version < m.versions else "&rsaquo;"
    return f' <span style="font-size:small">{back} {m.version}/{m.versions} {on}</span>'


def turn_html(role: str, header: str, body: str, *, created: float = 0.0) -> str:
    """One turn: a stripe and a tint by role, the role's name (with its time as a tooltip)."""
    stripe, tint, colour = _ROLE_STYLE.get(role, _ROLE_STYLE["note"])
    title = html.escape(written_at(created), quote=True)
    name = "You" if role == "user" else "Assistant" if role == "assistant" else ""
    return (
        '<table width="100%" cellspacing="0" cellpadding="6" style="margin-top:8px">'
        f'<tr><td width="4" bgcolor="{stripe}"></td><td bgcolor="{tint}">'
        f'<span style="font-weight:bold;color:{colour}" title="{title}">{name}</span>{header}'
        f"{body}</td></tr></table>"
    )


class ChatView(QTextBrowser):
    """A conversation rendered as HTML, and the answer being written growing at its end
    (:class:`~mixdesk.ui.streaming.StreamingAnswer`: each new piece of text is laid out
    once, each Markdown block rendered once).

    Attributes:
        following: whether the view keeps to the bottom as the answer grows (False once the
            user scrolls up, True again when they scroll back to the end).

    Signals:
        editRequested(int): the user clicked "edit" on a message (its id).
        versionRequested(int, int): the user asked for another version of a message (its id,
            -1 for the one before or +1 for the one after).
        copied(str): a code block was copied to the clipboard.
    """

    editRequested = Signal(int)
    copied = Signal(str)
    versionRequested = Signal(int, int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setOpenLinks(False)
        self.setOpenExternalLinks(False)
        self.anchorClicked.connect(self._anchor)
        self._codes: list[str] = []
        self._prefix_codes = 0
        #: The answer being written (None when none is).
        self.streaming: StreamingAnswer | None = None
        self._footer_shown = 0.0
        self.following = True
        self.verticalScrollBar().valueChanged.connect(self._scrolled)

    def loadResource(self, kind: int, name: QUrl | str) -> Any:  # noqa: N802 - Qt's name
        """Never load anything (model output may name remote images)."""
        return None

    # -- whole conversations ------------------------------------------------------------

    def _message_html(self, m: StoredMessage) -> tuple[str, list[str]]:
        """A message as HTML, and the code blocks its copy links point to."""
        versions = version_links(m)
        if m.role == "user":
            edit = f' <a href="edit:{m.id}" style="font-size:small">edit</a>{versions}'
            text = html.escape(m.content).replace("\n", "<br>")
            return turn_html("user", edit, f"<p>{text}</p>", created=m.created), []
        why = no_text_words(m.finish_reason, m.stats.eval_tokens if m.stats else 0, m.content)
        if m.stats and why:  # an answer is never just blank: it says why it has no text
            note = html.escape(why)
            body = f'<p style="color:#777;font-style:italic">{note}</p>'
            return turn_html("assistant", versions, body, created=m.created), []
        body, codes = render_markdown(m.content, code_link_prefix=f"copy:{len(self._codes)}:")
        footer = ""
        if m.stats:
            note = " · stopped" if m.finish_reason == "cancelled" else ""
            footer = f'<p style="color:#777;font-size:small">{stats_line(m.stats)}{note}</p>'
        return turn_html("assistant", versions, body + footer, created=m.created), codes

    def set_messages(self, messages: list[StoredMessage], *, note: str = "") -> None:
        """Show a whole conversation (``note``: a line under it, e.g. turns left out)."""
        self._codes = []
        parts = []
        for m in messages:
            if m.role != "system":
                part, codes = self._message_html(m)
                parts.append(part)
                self._codes += codes
        if note:
            parts.append(f'<p style="color:#777;font-style:italic">{html.escape(note)}</p>')
        self._prefix_codes = len(self._codes)
        self.streaming = None  # nothing streams: hold nothing of the document
        self.setHtml("".join(parts))
        if self.following:
            self._jump_to_bottom()

    # -- the streaming answer -----------------------------------------------------------

    def start_streaming(self) -> None:
        """Open a new answer at the end of the conversation (the view follows it): its text
        and its live speed line grow inside the answer's own block."""
        self.following = True
        self.streaming = StreamingAnswer(
            self.document(),
            name="Assistant",
            colours=_ROLE_STYLE["assistant"],
            tooltip=written_at(time.time()),
            code_base=self._prefix_codes,
        )
        self._jump_to_bottom()

    @property
    def streaming_text(self) -> str:
        """The streaming answer's text so far ("" when none streams)."""
        return self.streaming.text if self.streaming is not None else ""

    def append_streaming(self, delta: str) -> None:
        """Add text to the streaming answer: only the new text is laid out, and a Markdown
        block it completes is rendered (that block only)."""
        if self.streaming is None or not delta:
            return
        self.streaming.append(delta)
        self._codes[self._prefix_codes :] = self.streaming.codes
        self._follow()

    def show_streaming_stats(self, stats: GenerationStats) -> None:
        """The streaming answer's speed line, updated live under its text (at most a few
        times a second)."""
        now = time.monotonic()
        if self.streaming is None or now - self._footer_shown < FOOTER_EVERY_S:
            return
        self._footer_shown = now
        self.streaming.set_footer(stats_line(stats) if stats.eval_tokens else "reading the prompt…")

    def streaming_footer(self) -> str:
        """The live speed line's text (tests)."""
        return self.streaming.footer() if self.streaming is not None else ""

    def paintEvent(self, e: QPaintEvent) -> None:  # noqa: N802 - Qt's name
        """The text, and the streaming answer's stripe (a frame has no border of one side)."""
        super().paintEvent(e)
        if self.streaming is None:
            return
        frame_rect = self.document().documentLayout().frameBoundingRect(self.streaming.frame)
        stripe = self.streaming.stripe_rect(frame_rect).translated(
            -self.horizontalScrollBar().value(), -self.verticalScrollBar().value()
        )
        painter = QPainter(self.viewport())
        painter.fillRect(stripe, self.streaming.stripe)
        painter.end()

    # -- scrolling ----------------------------------------------------------------------

    def at_bottom(self) -> bool:
        """Whether the end of the conversation is in view."""
        bar = self.verticalScrollBar()
        return bar.value() >= bar.maximum() - 4

    def _scrolled(self, _value: int) -> None:
        # The view's own moves go to the end; any other move is the user's (wheel, keys, the
        # scroll bar): following resumes only when they come back to the end.
        self.following = self.at_bottom()

    def _follow(self) -> None:
        """Keep the new end in view, unless the user scrolled up to read."""
        if self.following:
            self._jump_to_bottom()

    def _jump_to_bottom(self) -> None:
        bar = self.verticalScrollBar()
        bar.setValue(bar.maximum())
        self.following = True

    # -- links and tooltips -------------------------------------------------------------

    def _end_cursor(self) -> QTextCursor:
        cursor = QTextCursor(self.document())
        cursor.movePosition(QTextCursor.MoveOperation.End)
        return cursor

    def tooltip_at(self, pos: QPoint) -> str:
        """The tooltip of the text at ``pos`` (viewport coordinates): a message's time."""
        return self.cursorForPosition(pos).charFormat().toolTip()

    def viewportEvent(self, e: QEvent) -> bool:  # noqa: N802 - Qt's name
        if e.type() == QEvent.Type.ToolTip and isinstance(e, QHelpEvent):
            tip = self.tooltip_at(e.pos())
            if tip:
                QToolTip.showText(e.globalPos(), tip, self)
            else:
                QToolTip.hideText()
            return True
        return super().viewportEvent(e)

    def _anchor(self, url: QUrl) -> None:
        text = url.toString()
        if text.startswith("edit:"):
            self.editRequested.emit(int(text.split(":")[1]))
        elif text.startswith("version:"):
            _, message_id, step = text.split(":")
            self.versionRequested.emit(int(message_id), int(step))
        elif text.startswith("copy:"):
            _, base, index = text.split(":")
            code_index = int(base) + int(index)
            if 0 <= code_index < len(self._codes):
                QGuiApplication.clipboard().setText(self._codes[code_index])
                self.copied.emit(self._codes[code_index])
