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
) -> FittedPrompt:
    """Leave out what the policy allows until the prompt plus ``reserve`` fits ``n_ctx``.

    Args:
        messages: the conversation, oldest first.
        count_tokens: the prompt's length in tokens for some messages (the template applied).
        n_ctx: the context size.
        reserve: tokens to keep free for the answer.
        policy: one of :data:`OVERFLOW_POLICIES`.

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
    last_user = max((i for i, m in enumerate(kept) if m.role == "user"), default=len(kept))
    dropped = 0
    while True:
        # the oldest message that is neither a system prompt nor the last user message
        victim = next((i for i, m in enumerate(kept) if m.role != "system" and i < last_user), None)
        if victim is None:
            raise ContextOverflowError(
                f"The last message with the system prompt is too long for the context of "
                f"{n_ctx} tokens (with {reserve} kept for the answer): shorten it, or load the "
                "model with a larger context."
            )
        del kept[victim]
        last_user -= 1
        dropped += 1
        # a conversation starts with a user turn after the system prompt: drop a lone answer too
        while victim < last_user and kept[victim].role == "assistant":
            del kept[victim]
            last_user -= 1
            dropped += 1
        if count_tokens(kept) <= limit:
            return FittedPrompt(kept, dropped)
