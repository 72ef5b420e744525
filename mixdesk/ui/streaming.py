"""The answer that is being written, inside its own block at the end of the chat view.

The finished turns are HTML tables (a stripe and a tinted cell), but a table cell is laid
out again whole at every change: appending to a long answer inside one cost time in
proportion to the answer, ten times a second, taken from llama.cpp on a small machine. The
streaming answer is therefore a :class:`QTextFrame` with the same tint, margins and
padding (the view paints the stripe in its left margin); a frame lays out only the lines
that change. Its text grows in two parts: the complete Markdown blocks, each rendered once
when it ends (:class:`~mixdesk.ui.markdown.BlockScanner`), and after them the open block
as plain text. When the answer ends the view shows the whole conversation again, with the
answer rendered whole.
"""

from __future__ import annotations

from PySide6.QtCore import QRectF
from PySide6.QtGui import (
    QColor,
    QFont,
    QGuiApplication,
    QTextBlockFormat,
    QTextCharFormat,
    QTextCursor,
    QTextDocument,
    QTextFrame,
    QTextFrameFormat,
)

from mixdesk.ui.markdown import BlockScanner, render_markdown

#: The finished turns' geometry (chat_view.turn_html): a 12 px stripe, a gap of 8 px above,
#: 6 px of padding.
STRIPE_PX = 12
TOP_PX = 8
PADDING_PX = 6
#: Above each block of the text, as above a rendered paragraph.
PARAGRAPH_PX = 12


def _paragraph() -> QTextBlockFormat:
    fmt = QTextBlockFormat()
    fmt.setTopMargin(PARAGRAPH_PX)
    return fmt


def footer_format() -> QTextCharFormat:
    """Small grey text: an answer's speed line."""
    fmt = QTextCharFormat()
    fmt.setForeground(QColor("#777"))
    fmt.setFontPointSize(max(QGuiApplication.font().pointSizeF() * 0.85, 6.0))
    return fmt


def _drop_empty_block_at(document: QTextDocument, position: int) -> None:
    """Remove the empty block that Qt leaves before a list or a table inserted as HTML into
    an empty block (the finished answer has none there)."""
    block = document.findBlock(position)
    if block.length() == 1 and block.next().isValid() and block.previous().isValid():
        cursor = QTextCursor(block)
        cursor.deletePreviousChar()  # joins it to the block before, which keeps its format


class StreamingAnswer:
    """The streaming answer's frame in ``document``, added at its end: the role's name, the
    text, and a speed line under it.

    Args:
        document: the chat view's document.
        name: the role's name as shown, and its (stripe, tint, name) colours.
        tooltip: the name's tooltip (when the answer was written).
        code_base: how many code blocks the conversation above has (copy links count on).

    Attributes:
        text: the answer's text so far.
        codes: the code blocks of its rendered part (for the copy links).
    """

    def __init__(
        self,
        document: QTextDocument,
        *,
        name: str,
        colours: tuple[str, str, str],
        tooltip: str,
        code_base: int,
    ) -> None:
        self.stripe = QColor(colours[0])
        self.text = ""
        self.codes: list[str] = []
        self._code_base = code_base
        self._scanner = BlockScanner()
        self._rendered = 0  # the length of text rendered as Markdown
        frame_format = QTextFrameFormat()
        frame_format.setBackground(QColor(colours[1]))
        frame_format.setLeftMargin(STRIPE_PX)
        frame_format.setTopMargin(TOP_PX)
        frame_format.setPadding(PADDING_PX)
        frame_format.setBorder(0)
        end = QTextCursor(document)
        end.movePosition(QTextCursor.MoveOperation.End)
        self.frame: QTextFrame = end.insertFrame(frame_format)
        cursor = self.frame.firstCursorPosition()
        title = QTextCharFormat()
        title.setFontWeight(QFont.Weight.Bold)
        title.setForeground(QColor(colours[2]))
        title.setToolTip(tooltip)
        cursor.insertText(name, title)
        self._tail_format = QTextCharFormat()
        cursor.insertBlock(_paragraph(), self._tail_format)
        body = cursor.block()
        cursor.insertBlock(QTextBlockFormat(), footer_format())
        #: In the speed line's block (it follows the text inserted before it).
        self._footer = cursor
        #: At the end of the text (it moves on as it inserts); the plain part starts at
        #: ``_tail_start``.
        self._end = QTextCursor(body)
        self._tail_start = self._end.position()

    def append(self, delta: str) -> None:
        """Add text: a Markdown block that it completes is rendered (that block only), the
        rest goes on as plain text."""
        if not delta:
            return
        self.text += delta
        end = self._scanner.feed(self.text)
        if end <= self._rendered:
            self._end.insertText(delta, self._tail_format)
            return
        body, codes = render_markdown(
            self.text[self._rendered : end],
            code_link_prefix=f"copy:{self._code_base + len(self.codes)}:",
        )
        self.codes += codes
        self._rendered = end
        cursor = self._end
        cursor.setPosition(self._tail_start, QTextCursor.MoveMode.KeepAnchor)
        cursor.removeSelectedText()
        cursor.insertHtml(body.rstrip())
        _drop_empty_block_at(cursor.document(), self._tail_start)
        # the open block: plain text in a block of its own (monospaced inside a code fence)
        self._tail_format = QTextCharFormat()
        if self._scanner.fence:
            self._tail_format.setFontFamilies(["monospace"])
        cursor.insertBlock(_paragraph(), self._tail_format)
        self._tail_start = cursor.position()
        cursor.insertText(self.text[end:], self._tail_format)

    def text_range(self) -> tuple[int, int]:
        """Where the answer's text is in the document (from, to): inside the frame."""
        return self.frame.firstPosition(), self._end.position()

    def set_footer(self, line: str) -> None:
        """Show ``line`` as the speed line under the text."""
        block = self._footer.block()
        cursor = QTextCursor(block)
        cursor.movePosition(QTextCursor.MoveOperation.EndOfBlock, QTextCursor.MoveMode.KeepAnchor)
        cursor.insertText(line, footer_format())

    def footer(self) -> str:
        """The speed line's text."""
        return self._footer.block().text()

    def stripe_rect(self, frame_rect: QRectF) -> QRectF:
        """Where the stripe goes, in document coordinates, given the frame's bounding
        rectangle (its left margin, below its top margin)."""
        return QRectF(
            frame_rect.left(),
            frame_rect.top() + TOP_PX,
            STRIPE_PX,
            frame_rect.height() - TOP_PX,
        )
