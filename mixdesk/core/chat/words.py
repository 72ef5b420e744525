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


def no_text_words(finish_reason: str | None, eval_tokens: int, text: str) -> str:
    """Why an answer shows no text ("" when it has some): an answer is never just blank.

    Args:
        finish_reason: how the answer ended ("stop", "length", "cancelled", "error").
        eval_tokens: the tokens the model generated.
        text: the answer's text.
    """
    if text.strip():
        return ""
    if ended_at_once(finish_reason, eval_tokens, text):
        return ENDED_AT_ONCE_WORDS
    if finish_reason == "cancelled":
        return "Stopped before the model wrote anything."
    if finish_reason == "error":
        return "The answer failed before the model wrote anything."
    if eval_tokens == 0:
        return "The model wrote nothing."
    tokens = f"{eval_tokens} token{'s' if eval_tokens != 1 else ''}"
    return f"The model's {tokens} were only spaces, line breaks or control tokens: nothing to show."


def prompt_speed_words(evaluated: int, *, tps: float) -> str:
    """The prompt's speed as shown with an answer: "prompt 512 tok/s", or "prompt cached"
    when the prompt was already in the KV cache (a regenerated answer's: only its last token
    is read again, for its logits, and llama.cpp times no prompt speed for it; "prompt 0
    tok/s" would read as a fault).

    Args:
        evaluated: the prompt tokens llama.cpp evaluated (its ``n_p_eval``).
        tps: its prompt speed for them.
    """
    if evaluated <= 1 or tps <= 0:
        return "prompt cached"
    return f"prompt {tps:.0f} tok/s"
