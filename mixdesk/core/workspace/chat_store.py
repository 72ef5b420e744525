"""Conversations in a SQLite file: saved as tokens arrive, searchable, exportable.

A conversation is a tree: every message has a parent (the one before it), and editing a
message or regenerating an answer adds a *version* beside it (a sibling) instead of deleting
anything. The conversation shows one branch, from its head (its last message) back to the
first; :meth:`ChatStore.select_version` moves between versions.

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
from mixdesk.core.engine.kv_store import KvStore, default_directory
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

#: Columns added after the first release, with what fills them in an older file.
_MIGRATIONS = (
    (
        "messages",
        "parent_id",
        # an older file's conversations are linear: each message follows the one before it
        "UPDATE messages SET parent_id = (SELECT MAX(m2.id) FROM messages m2 WHERE "
        "m2.conversation_id = messages.conversation_id AND m2.id < messages.id)",
    ),
    ("conversations", "head_id", ""),
)

#: ``add_message(parent=HEAD)``: after the message the conversation shows last.
HEAD = -1


@dataclass(frozen=True)
class StoredMessage:
    """One message of a conversation; an answer keeps the speed figures it ended with."""

    id: int
    role: str
    content: str
    stats: GenerationStats | None = None
    finish_reason: str | None = None
    created: float = 0.0
    #: The message before it (None: the first), and which of its versions it is (1-based,
    #: of ``versions``: an edited message or a regenerated answer has several).
    parent_id: int | None = None
    version: int = 1
    versions: int = 1


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


def kv_conversation(conversation_id: int) -> str:
    """The name a conversation's KV states are kept under
    (:class:`~mixdesk.core.engine.protocol.KvCacheRequest`)."""
    return f"chat-{conversation_id}"


class ChatStore:
    """The conversations database.

    Args:
        path: the SQLite file (default: ``<data dir>/chats.sqlite``).
        kv_states: the engine's saved KV states (a deleted conversation's go with it).
    """

    def __init__(self, path: Path | None = None, *, kv_states: KvStore | None = None) -> None:
        self.path = path or paths.ensure_private_dir(paths.data_dir()) / "chats.sqlite"
        self.kv_states = kv_states or KvStore(default_directory())
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
            for table, column, fill in _MIGRATIONS:
                columns = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
                if column not in columns:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} INTEGER")
                    if fill:
                        db.execute(fill)

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
        """Delete a conversation, its messages and its saved KV states."""
        with self._db() as db:
            db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
        self.kv_states.delete_conversation(kv_conversation(conversation_id))

    # -- messages -------------------------------------------------------------------------

    def add_message(
        self,
        conversation_id: int,
        role: str,
        content: str,
        *,
        stats: GenerationStats | None = None,
        finish_reason: str | None = None,
        parent: int | None = HEAD,
    ) -> StoredMessage:
        """Add a message after ``parent`` (by default the last one shown; another message: a
        new version beside its other children; None: a new first message) and show it."""
        now = time.time()
        with self._db() as db:
            after = self._head(db, conversation_id) if parent == HEAD else parent
            cur = db.execute(
                "INSERT INTO messages (conversation_id, role, content, stats, finish_reason, "
                "created, parent_id) VALUES (?,?,?,?,?,?,?)",
                (
                    conversation_id,
                    role,
                    content,
                    _stats_json(stats),
                    finish_reason,
                    now,
                    after,
                ),
            )
            mid = int(cur.lastrowid or 0)
            db.execute(
                "UPDATE conversations SET updated = ?, head_id = ? WHERE id = ?",
                (now, mid, conversation_id),
            )
        return StoredMessage(mid, role, content, stats, finish_reason, now, after)

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
        """The messages the conversation shows, in order: its branch from the first message
        to its head, each saying which of its versions it is."""
        with self._db() as db:
            rows = db.execute(
                "SELECT id, role, content, stats, finish_reason, created, parent_id FROM messages "
                "WHERE conversation_id = ? ORDER BY id",
                (conversation_id,),
            ).fetchall()
            head = self._head(db, conversation_id)
        by_id = {r[0]: r for r in rows}
        children: dict[int | None, list[int]] = {}
        for r in rows:
            children.setdefault(r[6], []).append(r[0])
        path: list[Any] = []
        node = head
        while node is not None and node in by_id and len(path) <= len(rows):
            path.append(by_id[node])
            node = by_id[node][6]
        shown = []
        for r in reversed(path):
            siblings = children.get(r[6], [r[0]])
            shown.append(
                StoredMessage(
                    r[0],
                    r[1],
                    r[2],
                    _stats_from_json(r[3]),
                    r[4],
                    r[5],
                    r[6],
                    siblings.index(r[0]) + 1,
                    len(siblings),
                )
            )
        return shown

    def show_after(self, conversation_id: int, message_id: int | None) -> None:
        """Make ``message_id`` the conversation's last shown message (None: none), so that
        the next message goes after it (regenerate: a new answer beside the old)."""
        with self._db() as db:
            db.execute(
                "UPDATE conversations SET head_id = ? WHERE id = ?",
                (message_id if message_id is not None else 0, conversation_id),
            )

    def select_version(self, conversation_id: int, message_id: int, step: int) -> None:
        """Show the version ``step`` away (-1: the one before, +1: the one after) of
        ``message_id``, with the latest messages that followed it."""
        with self._db() as db:
            row = db.execute(
                "SELECT parent_id FROM messages WHERE id = ? AND conversation_id = ?",
                (message_id, conversation_id),
            ).fetchone()
            if row is None:
                return
            siblings = [
                r[0]
                for r in db.execute(
                    "SELECT id FROM messages WHERE conversation_id = ? AND parent_id IS ? ORDER BY id",
                    (conversation_id, row[0]),
                )
            ]
            index = siblings.index(message_id) + step
            if not 0 <= index < len(siblings):
                return
            node = siblings[index]
            while True:  # down to the latest message that followed it
                child = db.execute(
                    "SELECT MAX(id) FROM messages WHERE parent_id = ?", (node,)
                ).fetchone()[0]
                if child is None:
                    break
                node = child
            db.execute("UPDATE conversations SET head_id = ? WHERE id = ?", (node, conversation_id))

    @staticmethod
    def _head(db: sqlite3.Connection, conversation_id: int) -> int | None:
        """The last shown message (an older file's conversation: its latest message)."""
        row = db.execute(
            "SELECT head_id FROM conversations WHERE id = ?", (conversation_id,)
        ).fetchone()
        if row is not None and row[0] is not None:
            return int(row[0]) if row[0] else None  # 0: shows no message
        latest = db.execute(
            "SELECT MAX(id) FROM messages WHERE conversation_id = ?", (conversation_id,)
        ).fetchone()[0]
        return int(latest) if latest is not None else None

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
