"""Model output as safe HTML: Markdown by markdown-it-py, code by a small highlighter (no Qt).

What a model writes can never inject HTML, load anything or lead anywhere: raw HTML is off
(it shows as text), images show as their alt text, links as their text and address, and the
only links in the result are MixDesk's own ``copy:`` links under each code block.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict

CODE_STYLE = "background:#f4f4f4;border:1px solid #ddd;padding:6px;font-family:monospace;white-space:pre-wrap;"
_KEYWORDS = (
    "def|class|return|if|elif|else|for|while|in|import|from|as|with|try|except|finally|raise|yield|"
    "lambda|and|or|not|is|None|True|False|const|let|var|function|fn|pub|struct|impl|use|mut|int|"
    "float|char|void|public|private|static|new|this|self|async|await|match|case|break|continue|"
    "switch|include|package"
)
#: One pass over the raw code: the first of comment, string or keyword at each place wins, so
#: a ``#`` inside a string is no comment and quotes inside a comment start no string.
_CODE_TOKEN = re.compile(
    r"(?P<comment>#[^\n]*|//[^\n]*)"
    r"|(?P<string>\"(?:\\.|[^\"\\\n])*\"?|'(?:\\.|[^'\\\n])*'?)"
    rf"|(?P<keyword>\b(?:{_KEYWORDS})\b)"
)
_CODE_COLOURS = {
    "comment": "color:#6a737d",
    "string": "color:#032f62",
    "keyword": "color:#d73a49;font-weight:bold",
}


def highlight(code: str) -> str:
    """``code`` as escaped HTML with comments, strings and keywords coloured."""
    out: list[str] = []
    pos = 0
    for m in _CODE_TOKEN.finditer(code):
        kind = m.lastgroup or "keyword"
        out.append(html.escape(code[pos : m.start()]))
        out.append(f'<span style="{_CODE_COLOURS[kind]}">{html.escape(m.group())}</span>')
        pos = m.end()
    out.append(html.escape(code[pos:]))
    return "".join(out)


def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable(["table", "strikethrough"])
    for name, rule in (
        ("fence", _code_block),
        ("code_block", _code_block),
        ("code_inline", _code_inline),
        ("heading_open", _heading),
        ("heading_close", _heading),
        ("link_open", _link_open),
        ("link_close", _link_close),
        ("image", _image),
    ):
        md.add_render_rule(name, rule)
    return md


def _code_block(
    _self: Any, tokens: Sequence[Token], idx: int, _options: OptionsDict, env: EnvType
) -> str:
    token = tokens[idx]
    code = token.content.rstrip("\n")
    codes: list[str] = env["codes"]
    index = len(codes)
    codes.append(code)
    lang = html.escape(token.info.split()[0] if token.info.strip() else "code")
    return (
        '<table width="100%" cellspacing="0" cellpadding="0"><tr>'
        f'<td style="color:#888;font-size:small">{lang}</td>'
        f'<td align="right"><a href="{env["prefix"]}{index}">copy</a></td></tr></table>'
        f'<pre style="{CODE_STYLE}">{highlight(code)}</pre>\n'
    )


def _code_inline(
    _self: Any, tokens: Sequence[Token], idx: int, _options: OptionsDict, _env: EnvType
) -> str:
    return f'<code style="background:#f0f0f0">{html.escape(tokens[idx].content)}</code>'


def _heading(
    _self: Any, tokens: Sequence[Token], idx: int, _options: OptionsDict, _env: EnvType
) -> str:
    # Headings in an answer are section titles, not page titles: h1 shows as h3.
    token = tokens[idx]
    level = min(int(token.tag[1:]) + 2, 6)
    return f"<h{level}>" if token.nesting == 1 else f"</h{level}>\n"


def _link_open(
    _self: Any, _tokens: Sequence[Token], _idx: int, _options: OptionsDict, _env: EnvType
) -> str:
    return ""  # a link is shown as its text and address, never followed


def _link_close(
    _self: Any, tokens: Sequence[Token], idx: int, _options: OptionsDict, _env: EnvType
) -> str:
    opening = next(
        (
            t
            for t in reversed(tokens[:idx])
            if t.type == "link_open" and t.level == tokens[idx].level
        ),
        None,
    )
    href = str(opening.attrGet("href") or "") if opening is not None else ""
    text = "".join(t.content for t in tokens[tokens.index(opening) + 1 : idx]) if opening else ""
    if not href or href in (text, f"mailto:{text}"):
        return ""
    return f' <span style="color:#888">({html.escape(href)})</span>'


def _image(
    _self: Any, tokens: Sequence[Token], idx: int, _options: OptionsDict, _env: EnvType
) -> str:
    alt = "".join(t.content for t in tokens[idx].children or [])
    return f"[image: {html.escape(alt)}]" if alt else "[image]"


_MD = _parser()


def render_markdown(text: str, *, code_link_prefix: str = "copy:") -> tuple[str, list[str]]:
    """Render ``text`` to HTML.

    Returns:
        (html, code blocks): each code block gets a "copy" link ``<prefix><index>`` whose
        index points into the returned list.
    """
    codes: list[str] = []
    body = _MD.render(text, {"codes": codes, "prefix": html.escape(code_link_prefix)})
    return body, codes


_FENCE = re.compile(r"(`{3,}|~{3,})(.*)")


class BlockScanner:
    """Where the complete Markdown blocks of a growing text end, so that a streaming answer
    renders each block once, when it is complete, instead of the whole answer again.

    A block ends at a blank line outside a code fence, and at a closing fence. Fences are
    found at any indentation (so a fence in a list item counts); the rendering while the
    answer streams may differ from the final one in rare cases (a list split by a blank
    line), and the finished answer is rendered whole.

    Attributes:
        scanned: where the first line not scanned yet starts.
        fence: the open code fence's marker ("```", "~~~~", ...), "" outside one.
    """

    def __init__(self) -> None:
        self.scanned = 0
        self.fence = ""

    def feed(self, text: str) -> int:
        """Scan the complete lines of ``text`` (the whole text so far) not scanned yet.

        Returns:
            The end of the last complete block found in them, or -1 when none ended.
        """
        end = -1
        while True:
            newline = text.find("\n", self.scanned)
            if newline < 0:
                return end
            line = text[self.scanned : newline].strip()
            self.scanned = newline + 1
            fence = _FENCE.match(line)
            if self.fence:
                marker = fence.group(1) if fence else ""
                closes = marker[:1] == self.fence[:1] and len(marker) >= len(self.fence)
                if fence and closes and not fence.group(2).strip():
                    self.fence = ""
                    end = self.scanned
            elif fence and not (fence.group(1)[0] == "`" and "`" in fence.group(2)):
                self.fence = fence.group(1)
            elif not line:
                end = self.scanned
