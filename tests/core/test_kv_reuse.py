"""Regenerate, edit and a trimmed long conversation read only what changed (real llama.cpp in
real engine processes, a generated model); the engine's memory budget is a setting."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from mixdesk.core.chat.template import ChatMessage
from mixdesk.core.engine import Engine, LoadConfig
from mixdesk.core.engine.kv_store import common_prefix
from mixdesk.core.engine.protocol import ChatDone, KvCacheRequest, SamplingParams
from mixdesk.core.gguf.synthetic import TINY
from mixdesk.core.workspace.settings import Settings
from tests.helpers.model_factory import make_model
from tests.helpers.parity_cases import GREEDY, N_CTX

QUESTIONS = [
    "Tell me about the rivers of France, please.",
    "Which of them is the longest, and where does it rise?",
    "And which one flows through Paris?",
]
OTHER = [ChatMessage("user", "Name three mountains of Europe.")]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("model"), TINY)


def ask(
    engine: Engine,
    messages: list[ChatMessage],
    cache: KvCacheRequest | None,
    sampling: SamplingParams = GREEDY,
) -> ChatDone:
    stream = engine.chat(messages, sampling, report_tokens=True, cache=cache)
    for _ in stream:
        pass
    assert stream.result is not None
    return stream.result


def converse(
    engine: Engine, questions: list[str], cache: KvCacheRequest, sampling: SamplingParams = GREEDY
) -> tuple[list[ChatMessage], list[ChatDone]]:
    """Ask ``questions`` in turn in one conversation: its messages and every answer."""
    messages: list[ChatMessage] = []
    answers = []
    for question in questions:
        messages.append(ChatMessage("user", question))
        done = ask(engine, messages, cache, sampling)
        messages.append(ChatMessage("assistant", done.text))
        answers.append(done)
    return messages, answers


def test_the_memory_budget_is_a_setting(model: Path, tmp_path: Path) -> None:
    """With no memory for states, switching back resumes from disk; by default from memory."""
    assert Settings().kv_cache("c").memory_budget_bytes == 1 << 30
    assert Settings(kv_memory_gib=0.25).kv_cache("c").memory_budget_bytes == 1 << 28
    sources = []
    with Engine(log_dir=tmp_path / "logs") as engine:
        engine.load(LoadConfig(str(model), n_ctx=N_CTX, n_threads=2))
        for memory_gib in (0.0, 1.0):
            settings = Settings(kv_memory_gib=memory_gib)
            first = [ChatMessage("user", f"{QUESTIONS[0]} ({memory_gib})")]
            ask(engine, first, settings.kv_cache(f"chat-{memory_gib}"))
            ask(engine, OTHER, settings.kv_cache("other"))
            again = ask(engine, first, settings.kv_cache(f"chat-{memory_gib}"))
            sources.append(again.stats.reused_from)
    assert sources == ["disk", "memory"]


def test_regenerating_reads_only_the_last_prompt_token(model: Path, tmp_path: Path) -> None:
    cache = KvCacheRequest("chat-1", directory=str(tmp_path / "kv"))
    sampling = replace(GREEDY, temperature=0.8, seed=1)
    with Engine(log_dir=tmp_path / "logs") as engine:
        engine.load(LoadConfig(str(model), n_ctx=N_CTX, n_threads=2))
        messages, answers = converse(engine, QUESTIONS[:2], cache, sampling)
        question = messages[:-1]  # the last answer goes: answer the same question again
        again = ask(engine, question, cache, replace(sampling, seed=2))
        ask(engine, OTHER, KvCacheRequest("chat-2"))  # switch away, then regenerate again
        from_memory = ask(engine, question, cache, replace(sampling, seed=3))
    for done, source in ((again, "live"), (from_memory, "memory")):
        assert done.prompt_token_ids == answers[-1].prompt_token_ids
        stats = done.stats
        assert (stats.reused_from, stats.prompt_reused) == (source, stats.prompt_tokens - 1)
        assert stats.prompt_eval_tokens == 1


def test_editing_the_second_question_reuses_exactly_what_comes_before_it(
    model: Path, tmp_path: Path
) -> None:
    cache = KvCacheRequest("chat-1", directory=str(tmp_path / "kv"))
    config = LoadConfig(str(model), n_ctx=N_CTX, n_threads=2)
    with Engine(log_dir=tmp_path / "logs") as engine:
        engine.load(config)
        messages, answers = converse(engine, QUESTIONS, cache)
        edited = [*messages[:2], ChatMessage("user", "Which of them is the shortest?")]
        live = ask(engine, edited, cache)
        engine.load(config)  # a fresh engine process: the last state comes from disk
        converse(engine, QUESTIONS, cache)  # the unedited conversation again, its state saved
        engine.load(config)
        from_disk = ask(engine, edited, cache)
    before_edit = common_prefix(answers[-1].prompt_token_ids, live.prompt_token_ids)
    # everything up to the edited question: the first question and its answer, at least
    assert before_edit >= len(answers[0].prompt_token_ids)
    for done, source in ((live, "live"), (from_disk, "disk")):
        assert (done.stats.reused_from, done.stats.prompt_reused) == (source, before_edit)
        assert done.stats.prompt_eval_tokens == done.stats.prompt_tokens - before_edit


def test_the_turn_after_a_trim_reuses_the_trimmed_prompt(model: Path, tmp_path: Path) -> None:
    """A conversation longer than its context: once older turns are left out, the next turn
    leaves out the same ones (while what follows fits), so its prompt starts as the trimmed
    one did and only the new turn is read."""
    cache = KvCacheRequest("chat-1", directory=str(tmp_path / "kv"))
    sampling = replace(GREEDY, max_tokens=8)
    questions = [f"{i}: tell me more about the rivers" for i in range(30)]
    with Engine(log_dir=tmp_path / "logs") as engine:
        engine.load(LoadConfig(str(model), n_ctx=N_CTX, n_threads=2))
        _messages, answers = converse(engine, questions, cache, sampling)
    trimmed = [i for i, done in enumerate(answers) if done.dropped_messages]
    assert trimmed and trimmed[-1] == len(answers) - 1, "the conversation outgrew its context"
    kept = [
        i for i in trimmed[1:] if answers[i].dropped_messages == answers[i - 1].dropped_messages
    ]
    assert len(kept) >= 2 * len(trimmed) // 3  # most turns after a trim keep its cut
    for i in kept:
        before, done = answers[i - 1], answers[i]
        shared = common_prefix(before.prompt_token_ids, done.prompt_token_ids)
        assert shared >= len(before.prompt_token_ids) - 1  # the trimmed prompt, whole
        assert done.stats.reused_from == "live"
        assert done.stats.prompt_reused >= shared - 1 >= len(before.prompt_token_ids) - 2
