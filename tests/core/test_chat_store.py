"""The conversations database keeps sampling and speed figures as their dataclasses."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import fields
from pathlib import Path

from mixdesk.core.engine import GenerationStats, SamplingParams
from mixdesk.core.engine.protocol import PerfCounters
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
    assert "*5 tokens, 12.5 tokens/s*" in reopened.export_markdown(conv.id)
    exported = json.loads(reopened.export_json(conv.id))
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
    every_stat = {f.name: 1 for f in fields(GenerationStats) if f.name != "perf"}
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
