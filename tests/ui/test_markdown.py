"""Model output rendered as Markdown: readable code, nothing remote, no links but MixDesk's own."""

from __future__ import annotations

import html
import re

from pytestqt.qtbot import QtBot

from mixdesk.core.workspace.chat_store import StoredMessage
from mixdesk.ui.markdown import render_markdown
from mixdesk.ui.widgets import ChatView

CODE = '```python\nprint(\'hello\')  # say "hi"\nurl = "http://a#b"\n```'


def _visible(markup: str) -> str:
    """The text a reader sees: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


def test_code_with_quotes_reads_as_written() -> None:
    body, codes = render_markdown(CODE, code_link_prefix="copy:3:")
    assert codes == ['print(\'hello\')  # say "hi"\nurl = "http://a#b"']
    assert 'print(\'hello\')  # say "hi"\nurl = "http://a#b"' in _visible(body)
    assert '<span style="color:#032f62">&#x27;hello&#x27;</span>' in body  # a string
    assert '<span style="color:#6a737d"># say &quot;hi&quot;</span>' in body  # a comment
    assert '<span style="color:#032f62">&quot;http://a#b&quot;</span>' in body  # no comment
    assert '<a href="copy:3:0">copy</a>' in body


def test_the_chat_view_shows_code_as_written(qtbot: QtBot) -> None:
    view = ChatView()
    qtbot.addWidget(view)
    view.set_messages([StoredMessage(1, "user", "Show me"), StoredMessage(2, "assistant", CODE)])
    assert "print('hello')  # say \"hi\"" in view.toPlainText()
    assert "&#x27;" not in view.toPlainText()


def test_model_output_cannot_inject_html_load_resources_or_link_elsewhere() -> None:
    text = (
        '<img src="http://evil.example/x.png"> <script>alert(1)</script> <a href="file:///etc">x</a>\n\n'
        "![tracker](http://evil.example/t.png) [site](https://example.com) "
        "[local](file:///etc/passwd) <https://auto.example> [js](javascript:alert(1))\n\n"
        "<div onclick='x'>raw block</div>\n\n" + CODE
    )
    body, _codes = render_markdown(text)
    assert not re.search(r"<(img|script|div|iframe|style|link)\b", body)
    assert re.findall(r'href="([^"]*)"', body) == ["copy:0"]
    assert 'src="' not in body  # (escaped as text above, never an attribute)
    seen = _visible(body)
    assert '<img src="http://evil.example/x.png">' in seen  # raw HTML shows as text
    assert "[image: tracker]" in seen
    assert "site (https://example.com)" in seen


def test_markdown_structure() -> None:
    body, codes = render_markdown(
        "# Title\n\n**bold**, *italic*, `a<b`\n\n- one\n- two\n\n1. first\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n"
        "```\nunclosed fence while streaming"
    )
    assert "<h3>Title</h3>" in body
    assert "<strong>bold</strong>" in body and "<em>italic</em>" in body
    assert '<code style="background:#f0f0f0">a&lt;b</code>' in body
    assert "<li>one</li>" in body and "<ol>" in body and "<td>2</td>" in body
    assert codes == ["unclosed fence while streaming"]
