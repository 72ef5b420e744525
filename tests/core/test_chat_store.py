"""The conversations database keeps sampling and speed figures as their dataclasses."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import fields
from pathlib import Path
from typing import Any

from mixdesk.core.engine import GenerationStats, SamplingParams
from mixdesk.core.engine.protocol import PerfCounters
from mixdesk.core.workspace.chat_export import export_json, export_markdown
from mixdesk.core.workspace.chat_store import ChatStore


def test_sampling_and_stats_come_back_as_dataclasses(tmp_path: Path) -> None:
    store = ChatStore(tmp_path / "chats.sqlite")
    sampling = SamplingParams(temperature=0.0, max_tokens=5, seed=3, stop=("</s>",))
    conv = store.create(sampling=sampling)
    answer = store.add_message(conv.id, "assistant", "")
    stats = GenerationStats(
        prompt_tokens=9, eval_tokens=5, eval_tps=12.5, perf=PerfCounters(n_eval=5, t_eval_ms=400)
    )
    store.update_message(answer.id, "Hello", stats=stats, finish_reason="length")
    store.close()

    reopened = ChatStore(tmp_path / "chats.sqlite")
    got = reopened.get(conv.id)
    assert got is not None and got.sampling == sampling
    (message,) = reopened.messages(conv.id)
    assert message.stats == stats
    assert "*5 tokens, 12.5 tokens/s*" in export_markdown(reopened, conv.id)
    exported = json.loads(export_json(reopened, conv.id))
    assert exported["messages"][0]["stats"]["perf"]["n_eval"] == 5
    reopened.update(conv.id, sampling=SamplingParams(top_k=1))
    changed = reopened.get(conv.id)
    assert changed is not None and changed.sampling == SamplingParams(top_k=1)


def test_rows_written_by_an_older_version_are_read(tmp_path: Path) -> None:
    path = tmp_path / "chats.sqlite"
    store = ChatStore(path)
    conv = store.create()
    answer = store.add_message(conv.id, "assistant", "hi")
    store.close()
    every_stat: dict[str, Any] = {
        f.name: 1 for f in fields(GenerationStats) if f.name not in ("perf", "reused_from")
    }
    with sqlite3.connect(path) as db:  # as the app wrote them: plain dicts, a partial sampling
        db.execute(
            "UPDATE conversations SET sampling = ? WHERE id = ?",
            (json.dumps({"max_tokens": 7, "unknown": 1}), conv.id),
        )
        db.execute(
            "UPDATE messages SET stats = ? WHERE id = ?",
            (json.dumps({**every_stat, "perf": {"n_eval": 1}}), answer.id),
        )
    store = ChatStore(path)
    got = store.get(conv.id)
    assert got is not None and got.sampling == SamplingParams(max_tokens=7)
    assert store.messages(conv.id)[0].stats == GenerationStats(
        **every_stat, perf=PerfCounters(n_eval=1)
    )
    assert store.create().sampling is None  # none given: the app's defaults apply


def test_edits_and_regenerations_are_versions_never_deletions(tmp_path: Path) -> None:
    store = ChatStore(tmp_path / "chats.sqlite")
    conv = store.create()
    u1 = store.add_message(conv.id, "user", "one")
    a1 = store.add_message(conv.id, "assistant", "answer one")
    u2 = store.add_message(conv.id, "user", "two")
    a2 = store.add_message(conv.id, "assistant", "answer two")
    # regenerate the last answer: a sibling of a2
    store.show_after(conv.id, u2.id)
    a2b = store.add_message(conv.id, "assistant", "answer two, again")
    shown = store.messages(conv.id)
    assert [m.id for m in shown] == [u1.id, a1.id, u2.id, a2b.id]
    assert (shown[3].version, shown[3].versions) == (2, 2)
    # edit the second question: a sibling of u2; what followed u2 is kept
    u2b = store.add_message(conv.id, "user", "two, edited", parent=a1.id)
    assert [m.id for m in store.messages(conv.id)] == [u1.id, a1.id, u2b.id]
    store.select_version(conv.id, u2b.id, -1)  # back to u2 and its latest answer
    assert [m.id for m in store.messages(conv.id)] == [u1.id, a1.id, u2.id, a2b.id]
    store.select_version(conv.id, a2b.id, -1)
    assert [m.id for m in store.messages(conv.id)][-1] == a2.id
    # edit the first message: a new first message
    u1b = store.add_message(conv.id, "user", "one, edited", parent=None)
    assert [m.id for m in store.messages(conv.id)] == [u1b.id]
    assert store.messages(conv.id)[0].versions == 2
    reopened = ChatStore(tmp_path / "chats.sqlite")
    assert [m.id for m in reopened.messages(conv.id)] == [u1b.id]


def test_an_older_file_is_read_as_one_branch(tmp_path: Path) -> None:
    """A chats file from before versions (no parent column) opens with its order kept."""
    import sqlite3

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE conversations (id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT NOT NULL,"
        " system_prompt TEXT NOT NULL DEFAULT '', sampling TEXT NOT NULL DEFAULT '{}',"
        " model TEXT NOT NULL DEFAULT '', created REAL NOT NULL, updated REAL NOT NULL)"
    )
    db.execute(
        "CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, conversation_id INTEGER"
        " NOT NULL, role TEXT NOT NULL, content TEXT NOT NULL, stats TEXT, finish_reason TEXT,"
        " created REAL NOT NULL)"
    )
    db.execute("INSERT INTO conversations VALUES (1, 'old', '', '{}', '', 0, 0)")
    for i, role in enumerate(["user", "assistant", "user"]):
        db.execute(
            "INSERT INTO messages (conversation_id, role, content, created) VALUES (1, ?, ?, 0)",
            (role, f"m{i}"),
        )
    db.commit()
    db.close()
    store = ChatStore(path)
    assert [m.content for m in store.messages(1)] == ["m0", "m1", "m2"]
    store.add_message(1, "assistant", "m3")
    assert [m.content for m in store.messages(1)] == ["m0", "m1", "m2", "m3"]
