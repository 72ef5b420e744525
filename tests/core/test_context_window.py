"""The overflow policy on its own: what is left out, what is always kept, and the refusals."""

from __future__ import annotations

import pytest

from mixdesk.core.chat.context_window import answer_room, fit_messages
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
