"""A conversation written out: Markdown for people, JSON for programs (the branch it shows).

What a model wrote is text, not markup for the reader's viewer: raw HTML in it is escaped in
the Markdown (``<script>`` shows as text in any Markdown viewer; code keeps its ``<`` as
written), and neither format names a folder of this machine (a local model is named by its
file name, an endpoint without its credentials).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, replace
from pathlib import PurePath
from urllib.parse import urlsplit, urlunsplit

from markdown_it import MarkdownIt

from mixdesk.core.workspace.chat_store import ChatStore, Conversation

#: Finds code blocks (fenced or indented) exactly as Markdown viewers do.
_BLOCKS = MarkdownIt("commonmark")
#: A code span: a run of backticks, anything, the same run again (CommonMark 6.1).
_CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.DOTALL)


def escape_html(markdown: str) -> str:
    """``markdown`` with every ``<`` outside code written as ``&lt;``: no tag, comment or
    autolink a viewer would render as HTML; code blocks and code spans are left as written
    (a viewer shows them literally)."""
    lines = markdown.split("\n")
    in_code = [False] * len(lines)
    for token in _BLOCKS.parse(markdown):
        if token.type in ("fence", "code_block") and token.map is not None:
            for i in range(*token.map):
                in_code[i] = True
    out: list[str] = []
    run: list[str] = []  # prose lines since the last code block (code spans may span lines)

    def flush() -> None:
        if run:
            out.append(_escape_prose("\n".join(run)))
            run.clear()

    for line, code in zip(lines, in_code, strict=True):
        if code:
            flush()
            out.append(line)
        else:
            run.append(line)
    flush()
    return "\n".join(out)


def _escape_prose(text: str) -> str:
    """Escape ``<`` in ``text`` except inside its code spans."""
    parts: list[str] = []
    pos = 0
    for span in _CODE_SPAN.finditer(text):
        parts.append(text[pos : span.start()].replace("<", "&lt;"))
        parts.append(span.group())
        pos = span.end()
    parts.append(text[pos:].replace("<", "&lt;"))
    return "".join(parts)


def model_name(model: str) -> str:
    """How an export names the model: a local file by its name (no folder of this machine),
    an endpoint by its URL without user name or password."""
    if "://" in model:
        url = urlsplit(model)
        host = url.hostname or ""
        host = f"[{host}]" if ":" in host else host  # an IPv6 address keeps its brackets
        netloc = host if url.port is None else f"{host}:{url.port}"
        return urlunsplit(url._replace(netloc=netloc))
    return PurePath(model.replace("\\", "/")).name if model else ""


def _conversation(store: ChatStore, conversation_id: int) -> Conversation:
    conv = store.get(conversation_id)
    if conv is None:
        raise KeyError(conversation_id)
    return replace(conv, model=model_name(conv.model))


def export_markdown(store: ChatStore, conversation_id: int) -> str:
    """The conversation as Markdown."""
    conv = _conversation(store, conversation_id)
    out = [f"# {escape_html(conv.title)}", ""]
    if conv.model:
        out += [f"Model: `{conv.model.replace('`', '')}`", ""]
    if conv.system_prompt:
        out += [f"**System:** {escape_html(conv.system_prompt)}", ""]
    for m in store.messages(conversation_id):
        who = {"user": "You", "assistant": "Assistant", "system": "System"}.get(m.role, m.role)
        out += [f"## {who}", "", escape_html(m.content), ""]
        if m.stats and m.role == "assistant":
            out += [
                f"*{m.stats.eval_tokens} tokens, {m.stats.eval_tps:.1f} tokens/s*",
                "",
            ]
    return "\n".join(out)


def export_json(store: ChatStore, conversation_id: int) -> str:
    """The conversation as JSON (the text as written: JSON readers show no HTML)."""
    conv = _conversation(store, conversation_id)
    return json.dumps(
        {**asdict(conv), "messages": [asdict(m) for m in store.messages(conversation_id)]},
        indent=2,
        ensure_ascii=False,
    )
