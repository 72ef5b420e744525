"""The overflow policy on its own: what is left out, what is always kept, and the refusals."""

from __future__ import annotations

import itertools

import pytest

from mixdesk.core.chat.context_window import answer_room, fit_messages, page_starts
from mixdesk.core.chat.template import ChatMessage
from mixdesk.errors import ContextOverflowError, user_message


def _words(messages: list[ChatMessage]) -> int:
    return sum(len(m.content.split()) + 2 for m in messages)  # a stand-in tokenizer


CONVERSATION = [
    ChatMessage("system", "be brief"),
    ChatMessage("user", "one two three four"),
    ChatMessage("assistant", "a b c d"),
    ChatMessage("user", "five six seven eight"),
    ChatMessage("assistant", "e f g h"),
    ChatMessage("user", "last question here"),
]


def test_the_oldest_turns_go_first_keeping_the_system_prompt_and_the_last_question() -> None:
    fitted = fit_messages(CONVERSATION, _words, n_ctx=30, reserve=8)
    assert fitted.dropped == 2  # the first question and its answer
    assert [m.role for m in fitted.messages] == ["system", "user", "assistant", "user"]
    assert fitted.messages[0].content == "be brief"
    assert fitted.messages[-1].content == "last question here"
    assert _words(fitted.messages) <= 30 - 8  # room kept for the answer


def test_what_fits_is_sent_whole() -> None:
    fitted = fit_messages(CONVERSATION, _words, n_ctx=1000, reserve=100)
    assert fitted.dropped == 0 and fitted.messages == CONVERSATION


def test_stop_at_the_limit_refuses_with_a_sentence() -> None:
    with pytest.raises(ContextOverflowError) as caught:
        fit_messages(CONVERSATION, _words, n_ctx=30, reserve=8, policy="stop")
    assert "reached the context limit of 30 tokens" in user_message(caught.value)


def test_a_last_question_too_long_for_any_context_is_refused() -> None:
    with pytest.raises(ContextOverflowError, match="too long for the context of 12 tokens"):
        fit_messages(CONVERSATION, _words, n_ctx=12, reserve=4)


def test_room_for_the_answer_is_at_most_a_quarter_of_the_context() -> None:
    assert answer_room(4096, 256) == 256
    assert answer_room(2048, 0) == 512
    assert answer_room(1024, 4000) == 256


def _length(message: ChatMessage) -> int:
    return len(message.content.split())


def test_a_growing_conversation_keeps_its_trimmed_start_for_a_page_of_turns() -> None:
    """Trimmed a page at a time, a conversation growing turn by turn keeps the start of its
    prompt for several turns (so a KV cache of that prompt serves them); trimmed as little as
    possible, it starts elsewhere at every turn."""
    conversation = [ChatMessage("system", "be brief")]
    paged: list[int] = []
    least: list[int] = []
    for i in range(40):
        conversation.append(ChatMessage("user", f"question {i} about rivers"))
        for starts, words in ((paged, _length), (least, None)):
            fitted = fit_messages(conversation, _words, n_ctx=120, reserve=20, message_tokens=words)
            assert _words(fitted.messages) <= 100
            assert fitted.messages[0].role == "system" and fitted.messages[1].role == "user"
            assert fitted.messages[-1] == conversation[-1]
            starts.append(fitted.dropped)
        conversation.append(ChatMessage("assistant", f"answer {i} is a river"))
    assert paged == sorted(paged) and paged[-1] > 0
    moves = len([1 for a, b in itertools.pairwise(paged) if a != b])
    least_moves = len([1 for a, b in itertools.pairwise(least) if a != b])
    assert least_moves >= 25 and moves <= least_moves // 3


def test_pages_depend_only_on_the_turns_before_them() -> None:
    turns = [ChatMessage("system", "s")]
    for i in range(10):
        turns += [ChatMessage("user", "a b c"), ChatMessage("assistant", f"d e {i}")]
    pages = page_starts(turns, _length, page=10)
    assert pages == [5, 9, 13, 17]  # every user turn after 10 words or more
    assert page_starts(turns[:12], _length, page=10) == [5, 9]
