"""A conversation written out: Markdown for people, JSON for programs (the branch it shows)."""

from __future__ import annotations

import json
from dataclasses import asdict

from mixdesk.core.workspace.chat_store import ChatStore


def export_markdown(store: ChatStore, conversation_id: int) -> str:
    """The conversation as Markdown."""
    conv = store.get(conversation_id)
    if conv is None:
        raise KeyError(conversation_id)
    out = [f"# {conv.title}", ""]
    if conv.model:
        out += [f"Model: `{conv.model}`", ""]
    if conv.system_prompt:
        out += [f"**System:** {conv.system_prompt}", ""]
    for m in store.messages(conversation_id):
        who = {"user": "You", "assistant": "Assistant", "system": "System"}.get(m.role, m.role)
        out += [f"## {who}", "", m.content, ""]
        if m.stats and m.role == "assistant":
            out += [
                f"*{m.stats.eval_tokens} tokens, {m.stats.eval_tps:.1f} tokens/s*",
                "",
            ]
    return "\n".join(out)


def export_json(store: ChatStore, conversation_id: int) -> str:
    """The conversation as JSON."""
    conv = store.get(conversation_id)
    if conv is None:
        raise KeyError(conversation_id)
    return json.dumps(
        {**asdict(conv), "messages": [asdict(m) for m in store.messages(conversation_id)]},
        indent=2,
        ensure_ascii=False,
    )
