"""What the chat says about a model and an answer, in one place for the window and the CLI."""

from __future__ import annotations

#: A model without a chat template whose name says nothing of instruction tuning.
BASE_MODEL_WORDS = (
    "looks like a base model (no chat template, not instruction-tuned): it continues text, "
    "so chat answers may be odd"
)

#: An answer whose first token was end-of-text.
ENDED_AT_ONCE_WORDS = "The model ended its answer at once (end-of-text as first token)."


def ended_at_once(finish_reason: str | None, eval_tokens: int, text: str) -> bool:
    """Whether an answer has no text because the model's first token was end-of-text."""
    return finish_reason == "stop" and eval_tokens == 0 and not text
