"""``mixdesk chat MODEL --session FILE``: a conversation that continues where it stopped.

llama.cpp's CLI keeps a prompt cache in a file (``--prompt-cache``); here FILE holds the
conversation and its KV state, in MixDesk's state file format
(:mod:`mixdesk.core.engine.kv_format`): after every answer the engine rewrites it, and the
next run reads the conversation back, and the engine skips evaluating every token its state
holds (checked whole first; a state for another model or other settings is not used, and the
conversation goes on from the text alone).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mixdesk.core.chat.template import ChatMessage
from mixdesk.core.engine import ChatDone
from mixdesk.core.engine.kv_format import StateFileError, digest, read_header
from mixdesk.core.engine.kv_store import MAX_FILE_BYTES
from mixdesk.core.engine.protocol import KvCacheRequest
from mixdesk.core.workspace.settings import Settings
from mixdesk.errors import InvalidArgumentError

_ROLES = ("system", "user", "assistant")


@dataclass
class ChatSession:
    """A session file and the conversation it held when the command started."""

    path: Path
    #: The conversation read from the file (empty: a new session).
    messages: list[ChatMessage]
    cache: KvCacheRequest

    def note(self, done: ChatDone) -> str:
        """What the first answer of a continued session says on stderr."""
        if not self.messages:
            return f"mixdesk: a new session, kept in {self.path}."
        stats = done.stats
        skipped = stats.prompt_reused if stats.reused_from == "disk" else 0
        line = (
            f"mixdesk: continued the session in {self.path} ({len(self.messages)} messages): "
            f"{skipped} of {stats.prompt_tokens} prompt tokens skipped (read from its saved state)"
        )
        if not skipped:
            line += "; its state was not usable with this model and these settings"
        return line + "."


def open_session(path_text: str, settings: Settings) -> ChatSession:
    """The session in ``path_text`` (a new one when the file does not exist).

    Raises:
        InvalidArgumentError: the file exists but is not a MixDesk session.
    """
    path = Path(path_text).expanduser().resolve()
    messages: list[ChatMessage] = []
    if path.exists():
        try:
            messages = _messages(read_header(path, max_bytes=MAX_FILE_BYTES).payload)
        except (StateFileError, ValueError) as err:
            raise InvalidArgumentError(
                f"{path} is not a MixDesk chat session ({err}); name a new file to start one."
            ) from None
    budget = int(max(settings.kv_cache_gib, 0.0) * (1 << 30))
    cache = KvCacheRequest(
        f"session:{digest(str(path))}",
        disk_budget_bytes=budget,  # the largest state the file keeps (else the text only)
        session_file=str(path),
    )
    return ChatSession(path, messages, cache)


def _messages(payload: str) -> list[ChatMessage]:
    """The conversation of a session file's payload.

    Raises:
        ValueError: it is not one.
    """
    turns = json.loads(payload)
    if not isinstance(turns, list) or not all(
        isinstance(t, dict)
        and t.get("role") in _ROLES
        and isinstance(t.get("content"), str)
        and len(t) == 2
        for t in turns
    ):
        raise ValueError("no conversation in it")
    return [ChatMessage(t["role"], t["content"]) for t in turns]
