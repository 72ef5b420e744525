"""A small, safe Markdown-to-HTML renderer for model output (no Qt, no remote resources).

Everything the model writes is escaped first, so its output can never inject HTML, load an
image or run anything; then a subset of Markdown is applied: fenced code blocks (with light
syntax highlighting and a copy link), inline code, bold, italics, headings, lists and
paragraphs. Links are shown as text, never followed automatically.
"""

from __future__ import annotations

import html
import re

_FENCE = re.compile(r"```([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_KEYWORDS = re.compile(
    r"\b(def|class|return|if|elif|else|for|while|in|import|from|as|with|try|except|finally|raise|yield|lambda|"
    r"and|or|not|is|None|True|False|const|let|var|function|fn|pub|struct|impl|use|mut|int|float|char|void|"
    r"public|private|static|new|this|self|async|await|match|case|break|continue|switch|include|package)\b"
)
_STRING = re.compile(r"(&quot;.*?&quot;|&#x27;.*?&#x27;)")
_COMMENT = re.compile(r"(#[^\n]*|//[^\n]*)")

CODE_STYLE = "background:#f4f4f4;border:1px solid #ddd;padding:6px;font-family:monospace;white-space:pre-wrap;"


def _highlight(code: str) -> str:
    escaped = html.escape(code, quote=True)
    out = []
    for raw in escaped.split("\n"):
        m = _COMMENT.search(raw)
        comment = ""
        code = raw
        if m and not raw[: m.start()].count("&quot;") % 2:
            comment = f'<span style="color:#6a737d">{m.group(0)}</span>'
            code = raw[: m.start()]
        code = _STRING.sub(r'<span style="color:#032f62">\1</span>', code)
        code = _KEYWORDS.sub(r'<span style="color:#d73a49;font-weight:bold">\1</span>', code)
        out.append(code + comment)
    return "\n".join(out)


def _inline(text: str) -> str:
    text = html.escape(text, quote=True)
    text = re.sub(r"`([^`]+)`", r'<code style="background:#f0f0f0">\1</code>', text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)
    text = re.sub(r"(?<![*\w])\*([^*\n]+)\*(?!\w)", r"<i>\1</i>", text)
    return text


def _blocks(text: str) -> str:
    out: list[str] = []
    in_list = False
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph:
            out.append("<p>" + "<br>".join(_inline(p) for p in paragraph) + "</p>")
            paragraph.clear()

    for line in text.split("\n"):
        stripped = line.strip()
        heading = re.match(r"^(#{1,4})\s+(.*)$", stripped)
        item = re.match(r"^([-*+]|\d+[.)])\s+(.*)$", stripped)
        if heading:
            flush()
            if in_list:
                out.append("</ul>")
                in_list = False
            level = len(heading.group(1)) + 2
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif item:
            flush()
            if not in_list:
                out.append("<ul>")
                in_list = True
            out.append(f"<li>{_inline(item.group(2))}</li>")
        elif not stripped:
            flush()
            if in_list:
                out.append("</ul>")
                in_list = False
        else:
            if in_list:
                out.append("</ul>")
                in_list = False
            paragraph.append(line)
    flush()
    if in_list:
        out.append("</ul>")
    return "".join(out)


def render_markdown(text: str, *, code_link_prefix: str = "copy:") -> tuple[str, list[str]]:
    """Render ``text`` to HTML.

    Returns:
        (html, code blocks): each code block gets a "copy" link ``<prefix><index>`` whose
        index points into the returned list.
    """
    parts: list[str] = []
    codes: list[str] = []
    pos = 0
    for m in _FENCE.finditer(text):
        parts.append(_blocks(text[pos : m.start()]))
        code = m.group(2).rstrip("\n")
        lang = html.escape(m.group(1) or "code")
        index = len(codes)
        codes.append(code)
        parts.append(
            f'<table width="100%" cellspacing="0" cellpadding="0"><tr><td style="color:#888;font-size:small">{lang}'
            f'</td><td align="right"><a href="{code_link_prefix}{index}">copy</a></td></tr></table>'
            f'<pre style="{CODE_STYLE}">{_highlight(code)}</pre>'
        )
        pos = m.end()
    parts.append(_blocks(text[pos:]))
    return "".join(parts), codes
