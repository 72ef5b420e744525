"""Conversations in a SQLite file: saved as tokens arrive, searchable, exportable.

Each answer is written while it streams (the app saves every fraction of a second), so an
app or engine crash loses nothing that was already on screen. One connection stays open, with
WAL journaling; writes are small and quick. Sampling and speed figures are stored as JSON of
:class:`SamplingParams` and :class:`GenerationStats`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mixdesk import paths
from mixdesk.core.engine.protocol import GenerationStats, SamplingParams
from mixdesk.core.engine.wire import from_dict

_SIDE_FILES = ("-wal", "-shm", "-journal")

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS conversations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        title TEXT NOT NULL,
        system_prompt TEXT NOT NULL DEFAULT '',
        sampling TEXT NOT NULL DEFAULT '{}',
        model TEXT NOT NULL DEFAULT '',
        created REAL NOT NULL,
        updated REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        role TEXT NOT NULL,
        content TEXT NOT NULL,
        stats TEXT,
        finish_reason TEXT,
        created REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, id)",
]


@dataclass(frozen=True)
class StoredMessage:
    """One message of a conversation; an answer keeps the speed figures it ended with."""

    id: int
    role: str
    content: str
    stats: GenerationStats | None = None
    finish_reason: str | None = None
    created: float = 0.0


@dataclass(frozen=True)
class Conversation:
    """A conversation and its settings; ``sampling`` None: the app's defaults."""

    id: int
    title: str
    system_prompt: str = ""
    sampling: SamplingParams | None = None
    model: str = ""
    created: float = 0.0
    updated: float = 0.0


class ChatStore:
    """The conversations database.

    Args:
        path: the SQLite file (default: ``<data dir>/chats.sqlite``).
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or paths.ensure_private_dir(paths.data_dir()) / "chats.sqlite"
        # Conversations are private: the file is 0600 before SQLite opens it, and SQLite gives
        # its -wal and -shm files the database's mode.
        paths.private_file(self.path)
        for suffix in _SIDE_FILES:  # left readable by an older version
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                paths.private_file(side)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            for statement in _SCHEMA:
                db.execute(statement)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        # One connection, kept open: opening and closing per write would checkpoint the WAL
        # each time (tens of milliseconds while an answer streams).
        with self._lock:
            if self._conn is None:
                self._conn = sqlite3.connect(self.path, timeout=10, check_same_thread=False)
                self._conn.execute("PRAGMA foreign_keys=ON")
                # WAL + NORMAL: each commit survives an app crash; a power cut may lose the last one
                self._conn.execute("PRAGMA synchronous=NORMAL")
            with self._conn:
                yield self._conn

    def close(self) -> None:
        """Close the database connection (it reopens when needed)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- conversations --------------------------------------------------------------------

    def create(
        self,
        title: str = "New conversation",
        *,
        system_prompt: str = "",
        model: str = "",
        sampling: SamplingParams | None = None,
    ) -> Conversation:
        """Start a conversation (``sampling`` None: it follows the app's defaults)."""
        now = time.time()
        with self._db() as db:
            cur = db.execute(
                "INSERT INTO conversations (title, system_prompt, sampling, model, created, updated) VALUES (?,?,?,?,?,?)",
                (title, system_prompt, _sampling_json(sampling), model, now, now),
            )
            cid = int(cur.lastrowid or 0)
        return Conversation(cid, title, system_prompt, sampling, model, now, now)

    def conversations(self, search: str = "") -> list[Conversation]:
        """All conversations, most recent first; ``search`` matches titles and message text."""
        query = "SELECT * FROM conversations"
        params: tuple[Any, ...] = ()
        if search:
            like = f"%{search}%"
            query += " WHERE title LIKE ? OR id IN (SELECT conversation_id FROM messages WHERE content LIKE ?)"
            params = (like, like)
        with self._db() as db:
            rows = db.execute(query + " ORDER BY updated DESC, id DESC", params).fetchall()
        return [self._conversation(r) for r in rows]

    def get(self, conversation_id: int) -> Conversation | None:
        """One conversation."""
        with self._db() as db:
            row = db.execute(
                "SELECT * FROM conversations WHERE id = ?", (conversation_id,)
            ).fetchone()
        return self._conversation(row) if row else None

    def update(self, conversation_id: int, **fields: Any) -> None:
        """Change title, system_prompt, sampling (a :class:`SamplingParams`) or model."""
        allowed = {"title", "system_prompt", "sampling", "model"}
        sets = []
        values: list[Any] = []
        for key, value in fields.items():
            if key not in allowed:
                raise ValueError(f"unknown conversation field {key}")
            sets.append(f"{key} = ?")
            values.append(_sampling_json(value) if key == "sampling" else value)
        with self._db() as db:
            db.execute(
                f"UPDATE conversations SET {', '.join(sets)}, updated = ? WHERE id = ?",  # noqa: S608 - names from the allow-list above
                (*values, time.time(), conversation_id),
            )

    def delete(self, conversation_id: int) -> None:
        """Delete a conversation and its messages."""
        with self._db() as db:
            db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    # -- messages -------------------------------------------------------------------------

    def add_message(
        self,
        conversation_id: int,
        role: str,
        content: str,
        *,
        stats: GenerationStats | None = None,
        finish_reason: str | None = None,
    ) -> StoredMessage:
        """Append a message."""
        now = time.time()
        with self._db() as db:
            cur = db.execute(
                "INSERT INTO messages (conversation_id, role, content, stats, finish_reason, created) VALUES (?,?,?,?,?,?)",
                (
                    conversation_id,
                    role,
                    content,
                    _stats_json(stats),
                    finish_reason,
                    now,
                ),
            )
            db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, conversation_id))
            mid = int(cur.lastrowid or 0)
        return StoredMessage(mid, role, content, stats, finish_reason, now)

    def update_message(
        self,
        message_id: int,
        content: str,
        *,
        stats: GenerationStats | None = None,
        finish_reason: str | None = None,
    ) -> None:
        """Replace a message's text (and its stats when given): used while an answer streams."""
        with self._db() as db:
            if stats is None and finish_reason is None:
                db.execute("UPDATE messages SET content = ? WHERE id = ?", (content, message_id))
            else:
                db.execute(
                    "UPDATE messages SET content = ?, stats = ?, finish_reason = ? WHERE id = ?",
                    (content, _stats_json(stats), finish_reason, message_id),
                )

    def messages(self, conversation_id: int) -> list[StoredMessage]:
        """A conversation's messages in order."""
        with self._db() as db:
            rows = db.execute(
                "SELECT id, role, content, stats, finish_reason, created FROM messages WHERE conversation_id = ? ORDER BY id",
                (conversation_id,),
            ).fetchall()
        return [StoredMessage(r[0], r[1], r[2], _stats_from_json(r[3]), r[4], r[5]) for r in rows]

    def truncate_after(self, conversation_id: int, message_id: int, *, keep: bool) -> None:
        """Delete the messages after ``message_id`` (and it too unless ``keep``): regenerate, edit."""
        op = ">" if keep else ">="
        with self._db() as db:
            db.execute(
                f"DELETE FROM messages WHERE conversation_id = ? AND id {op} ?",  # noqa: S608 - op is one of two constants
                (conversation_id, message_id),
            )

    # -- export ---------------------------------------------------------------------------

    def export_markdown(self, conversation_id: int) -> str:
        """The conversation as Markdown."""
        conv = self.get(conversation_id)
        if conv is None:
            raise KeyError(conversation_id)
        out = [f"# {conv.title}", ""]
        if conv.model:
            out += [f"Model: `{conv.model}`", ""]
        if conv.system_prompt:
            out += [f"**System:** {conv.system_prompt}", ""]
        for m in self.messages(conversation_id):
            who = {"user": "You", "assistant": "Assistant", "system": "System"}.get(m.role, m.role)
            out += [f"## {who}", "", m.content, ""]
            if m.stats and m.role == "assistant":
                out += [
                    f"*{m.stats.eval_tokens} tokens, {m.stats.eval_tps:.1f} tokens/s*",
                    "",
                ]
        return "\n".join(out)

    def export_json(self, conversation_id: int) -> str:
        """The conversation as JSON."""
        conv = self.get(conversation_id)
        if conv is None:
            raise KeyError(conversation_id)
        return json.dumps(
            {**asdict(conv), "messages": [asdict(m) for m in self.messages(conversation_id)]},
            indent=2,
            ensure_ascii=False,
        )

    @staticmethod
    def _conversation(row: tuple[Any, ...]) -> Conversation:
        return Conversation(
            row[0], row[1], row[2], _sampling_from_json(row[3]), row[4], row[5], row[6]
        )


def _sampling_json(sampling: SamplingParams | None) -> str:
    return json.dumps(asdict(sampling)) if sampling is not None else "{}"


def _sampling_from_json(text: str | None) -> SamplingParams | None:
    """A stored sampling; "{}" (the app's defaults) is None. Missing fields take
    :class:`SamplingParams`' defaults, unknown ones (a newer version's) are ignored."""
    data = json.loads(text or "{}")
    return from_dict(SamplingParams, data) if isinstance(data, dict) and data else None


def _stats_json(stats: GenerationStats | None) -> str | None:
    return json.dumps(asdict(stats)) if stats is not None else None


def _stats_from_json(text: str | None) -> GenerationStats | None:
    data = json.loads(text) if text else None
    return from_dict(GenerationStats, data) if isinstance(data, dict) else None
