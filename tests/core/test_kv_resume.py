"""A conversation resumed from a kept KV state answers exactly as a cold one.

Real llama.cpp in real engine processes: a conversation is answered once (its state kept),
the engine switches to another conversation, then the conversation goes on; the same again
in a fresh engine process (the state comes from disk). Each time the prompt's prefix is taken
from the kept state, only the rest is evaluated, and the greedy answer is llama.cpp's own
for the whole prompt evaluated cold (:mod:`mixdesk.core.engine.reference`), on every chat
template path of tests/core/test_parity.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mixdesk.core.chat.template import ChatMessage
from mixdesk.core.engine import Engine, LoadConfig, reference
from mixdesk.core.engine.protocol import ChatDone, KvCacheRequest
from mixdesk.core.gguf.synthetic import TINY
from tests.helpers.model_factory import make_model
from tests.helpers.parity_cases import CASES, GREEDY, N_CTX

FOLLOW_UP = "And of Italy?"
OTHER = [ChatMessage("user", "Name three rivers of Europe and their lengths, please.")]


def saved_states(directory: Path, count: int = 1) -> list[Path]:
    """The state files in ``directory``, once ``count`` of them are there (the engine writes
    them from a thread of its own after the answer's end)."""
    deadline = time.monotonic() + 30
    while len(found := sorted(directory.glob("*/*.mdkv"))) < count:
        assert time.monotonic() < deadline, f"{len(found)} state files, not {count}"
        time.sleep(0.05)
    return found


def ask(engine: Engine, messages: list[ChatMessage], cache: KvCacheRequest | None) -> ChatDone:
    stream = engine.chat(messages, GREEDY, report_tokens=True, cache=cache)
    for _ in stream:
        pass
    assert stream.result is not None
    return stream.result


@pytest.mark.parametrize("case", list(CASES))
def test_a_resumed_conversation_answers_as_a_cold_one(case: str, tmp_path: Path) -> None:
    spec, messages, ref_turns, ref_template = CASES[case]
    model = make_model(tmp_path, spec, name=case)
    config = LoadConfig(str(model), n_ctx=N_CTX, n_threads=2)
    cache = KvCacheRequest("chat-1", directory=str(tmp_path / "kv"))
    other = KvCacheRequest("chat-2", directory=str(tmp_path / "kv"))
    with Engine(log_dir=tmp_path / "logs") as engine:
        engine.load(config)
        first = ask(engine, messages, cache)
        longer = [*messages, ChatMessage("assistant", first.text), ChatMessage("user", FOLLOW_UP)]
        ask(engine, OTHER, other)  # switch away: the live KV cache now holds another prompt
        from_memory = ask(engine, longer, cache)
        engine.load(config)  # a fresh engine process: only the disk has the state
        from_disk = ask(engine, longer, cache)
    ref = reference.answer(
        str(model),
        [*ref_turns, ("assistant", first.text), ("user", FOLLOW_UP)],
        template=ref_template.get("template"),
        builtin=ref_template.get("builtin"),
        n_predict=32,
        n_ctx=N_CTX,
    )
    # from memory: the first prompt at least (the answer's text may tokenize otherwise than it
    # was generated); from disk, the state the same prompt left: all of it but its last token
    for done, source, reused in (
        (from_memory, "memory", len(first.prompt_token_ids) - 1),
        (from_disk, "disk", len(ref.prompt_tokens) - 1),
    ):
        stats = done.stats
        assert stats.reused_from == source
        assert reused <= stats.prompt_reused < stats.prompt_tokens == len(ref.prompt_tokens)
        assert stats.prompt_eval_tokens == stats.prompt_tokens - stats.prompt_reused
        assert list(done.prompt_token_ids) == ref.prompt_tokens
        assert list(done.token_ids) == ref.tokens, source
    assert len(ref.tokens) == 32  # a real comparison: no early end-of-text


def test_a_damaged_or_foreign_state_is_never_used_and_the_answer_is_cold(tmp_path: Path) -> None:
    model = make_model(tmp_path, TINY)
    config = LoadConfig(str(model), n_ctx=N_CTX, n_threads=2)
    directory = tmp_path / "kv"
    cache = KvCacheRequest("chat-1", directory=str(directory))
    question = [ChatMessage("user", "What is the capital of France?")]
    with Engine(log_dir=tmp_path / "logs") as engine:
        engine.load(config)
        first = ask(engine, question, cache)
        (path,) = saved_states(directory)
        data = bytearray(path.read_bytes())
        data[-100] ^= 0x01  # one bit of the llama.cpp state
        path.write_bytes(bytes(data))
        engine.load(config)
        again = ask(engine, question, cache)
        assert (again.stats.reused_from, again.stats.prompt_reused) == ("none", 0)
        assert again.token_ids == first.token_ids
        # the damaged file went; the answer's own state took its place
        deadline = time.monotonic() + 30
        while not path.exists() or path.read_bytes() == bytes(data):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # a model replaced by another file at the same path: the old states are not its own
        other = make_model(tmp_path / "other", TINY, name="other")
        model.write_bytes(other.read_bytes().replace(b"Mixtral tiny test", b"Mixtral tiny best"))
        engine.load(config)
        third = ask(engine, question, cache)
        assert third.stats.reused_from == "none"
    assert len(saved_states(directory, 2)) == 2  # one per model identity


def test_states_within_the_memory_budget_and_switching_back(tmp_path: Path) -> None:
    """Three conversations, memory for two: the last one is still in the KV cache, the one
    before comes back from memory, the oldest from disk; a request without a folder writes
    nothing."""
    model = make_model(tmp_path, TINY)
    topics = ["France", "Italy", "Spain"]
    convs = [[ChatMessage("user", f"Tell me a long story about {t}.")] for t in topics]
    directory = tmp_path / "kv"
    with Engine(log_dir=tmp_path / "logs") as engine:
        engine.load(LoadConfig(str(model), n_ctx=N_CTX, n_threads=2))
        ask(engine, convs[0], KvCacheRequest("probe", directory=str(tmp_path / "probe")))
        (probe,) = saved_states(tmp_path / "probe")
        budget = probe.stat().st_size * 5 // 2  # two states, not three
        requests = [
            KvCacheRequest(f"c-{i}", directory=str(directory), memory_budget_bytes=budget)
            for i in range(3)
        ]
        for conv, request in zip(convs, requests, strict=True):
            ask(engine, conv, request)
        saved_states(directory, 3)
        sources = [ask(engine, convs[i], requests[i]).stats.reused_from for i in (2, 1, 0)]
        ask(engine, convs[0], KvCacheRequest("memory only"))
    assert sources == ["live", "memory", "disk"]
    assert len(saved_states(directory, 3)) == 3
