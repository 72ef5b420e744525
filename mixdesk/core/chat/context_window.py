"""What of a long conversation goes to the model: the overflow policy.

A conversation can outgrow the model's context. The policy decides what then happens:

- ``drop_oldest`` (the default, as LM Studio's "truncate middle" keeps the start): the oldest
  turns are left out, never the system prompt or the last user message, until the prompt
  and the room reserved for the answer fit the context;
- ``stop``: the answer is refused with a sentence saying the limit is reached.

The conversation itself stays whole (in chats.sqlite and on screen); only the prompt is cut.
Plain Python: the engine counts the tokens with the model's own template and tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from mixdesk.core.chat.template import ChatMessage
from mixdesk.errors import ContextOverflowError

#: What to do when a conversation outgrows the context: leave out its oldest turns, or stop.
OverflowPolicy = Literal["drop_oldest", "stop"]
OVERFLOW_POLICIES: tuple[OverflowPolicy, ...] = ("drop_oldest", "stop")
#: A trim leaves out turns of at least 1/PAGES_PER_CONTEXT of the room for the prompt (a
#: page): half, as llama.cpp's context shift discards half of the context (llama-server).
PAGES_PER_CONTEXT = 2
#: Room kept for the answer when its length is not limited (tokens).
DEFAULT_ANSWER_ROOM = 512


@dataclass(frozen=True)
class FittedPrompt:
    """The messages that go to the model, and how many were left out."""

    messages: list[ChatMessage]
    dropped: int = 0


def answer_room(n_ctx: int, max_tokens: int) -> int:
    """Tokens kept free for the answer: what it may use, at most a quarter of the context."""
    wanted = max_tokens if max_tokens > 0 else DEFAULT_ANSWER_ROOM
    return max(1, min(wanted, n_ctx // 4))


def fit_messages(
    messages: Sequence[ChatMessage],
    count_tokens: Callable[[list[ChatMessage]], int],
    *,
    n_ctx: int,
    reserve: int,
    policy: str = "drop_oldest",
    message_tokens: Callable[[ChatMessage], int] | None = None,
) -> FittedPrompt:
    """Leave out what the policy allows until the prompt plus ``reserve`` fits ``n_ctx``.

    The prompt then starts at a user turn. With ``message_tokens`` it starts at a page's
    first turn (:func:`page_starts`): a trim leaves out a page of the oldest turns at least,
    so the turns that follow keep the same start (and the engine reads only what is new, the
    trimmed prompt coming from its KV cache) until they fill that page's room.

    Args:
        messages: the conversation, oldest first.
        count_tokens: the prompt's length in tokens for some messages (the template applied).
        n_ctx: the context size.
        reserve: tokens to keep free for the answer.
        policy: one of :data:`OVERFLOW_POLICIES`.
        message_tokens: one message's length in tokens (without the template), to make
            pages of; None: leave out as few turns as possible.

    Raises:
        ContextOverflowError: ``stop`` and the conversation is too long, or even the system
            prompt with the last user message does not fit.
    """
    kept = list(messages)
    limit = n_ctx - reserve
    if count_tokens(kept) <= limit:
        return FittedPrompt(kept)
    if policy == "stop":
        raise ContextOverflowError(
            f"The conversation has reached the context limit of {n_ctx} tokens (the overflow "
            "setting is 'stop at the limit'): start a new conversation, or choose 'drop the "
            "oldest turns' in the settings."
        )
    starts = turn_starts(kept)
    if message_tokens is not None:
        pages = page_starts(kept, message_tokens, page=max(1, limit // PAGES_PER_CONTEXT))
        # a page's start when one fits; past the last one, any turn's (a long last page)
        starts = [*pages, *(i for i in starts if not pages or i > pages[-1])]

    def without_start(start: int) -> list[ChatMessage]:
        return [m for i, m in enumerate(kept) if i >= start or m.role == "system"]

    # the first start that fits (the prompt only shrinks as the start moves on)
    low, high = 0, len(starts)
    while low < high:
        middle = (low + high) // 2
        if count_tokens(without_start(starts[middle])) <= limit:
            high = middle
        else:
            low = middle + 1
    if low == len(starts):
        raise ContextOverflowError(
            f"The last message with the system prompt is too long for the context of "
            f"{n_ctx} tokens (with {reserve} kept for the answer): shorten it, or load the "
            "model with a larger context."
        )
    start = starts[low]
    dropped = sum(1 for m in kept[:start] if m.role != "system")
    return FittedPrompt(without_start(start), dropped)


def turn_starts(messages: Sequence[ChatMessage]) -> list[int]:
    """Where a trimmed prompt may start: every user message after the first message that can
    be left out, up to the last user message (kept always)."""
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    first = next((i for i, m in enumerate(messages) if m.role != "system"), len(messages))
    return [i for i in range(first + 1, last_user + 1) if messages[i].role == "user"]


def page_starts(
    messages: Sequence[ChatMessage], message_tokens: Callable[[ChatMessage], int], *, page: int
) -> list[int]:
    """The turn starts (:func:`turn_starts`) at which the turns since the previous one (or
    since the first turn) hold ``page`` tokens or more.

    Each depends only on the messages before it, so a growing conversation keeps its pages:
    a prompt trimmed at a page's start keeps that start until the turns after it outgrow
    the context.
    """
    found: list[int] = []
    since = 0
    previous = next((i for i, m in enumerate(messages) if m.role != "system"), len(messages))
    for start in turn_starts(messages):
        since += sum(message_tokens(m) for m in messages[previous:start] if m.role != "system")
        previous = start
        if since >= page:
            found.append(start)
            since = 0
    return found
