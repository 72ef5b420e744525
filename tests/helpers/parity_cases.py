"""The chat-template paths the parity tests cover: each a model, a conversation, and the
turns and template llama.cpp's own path (:mod:`mixdesk.core.engine.reference`) renders it with
(tests/core/test_parity.py, and tests/core/test_kv_resume.py for resumed conversations)."""

from __future__ import annotations

from mixdesk.core.chat.template import MIXTRAL_TEMPLATE, ChatMessage
from mixdesk.core.engine import SamplingParams
from mixdesk.core.gguf.synthetic import TINY, ModelSpec, with_changes
from tests.helpers.model_factory import (
    CHATML_TEMPLATE_FOR_TESTS,
    GEMMA_BASE,
    LLAMA3_BASE,
    MIXTRAL_NO_TEMPLATE,
    PHI3_BASE,
    QWEN2_NO_BOS,
    WITH_EOS,
)

GREEDY = SamplingParams(temperature=0.0, repeat_penalty=1.0, max_tokens=32, seed=0)
N_CTX = 512

QUESTION = [ChatMessage("user", "What is the capital of France?")]
WITH_SYSTEM = [
    ChatMessage("system", "You answer in one word."),
    ChatMessage("user", "What is the capital of France?"),
]
MULTI_TURN = [
    ChatMessage("user", "What is the capital of France?"),
    ChatMessage("assistant", "Paris."),
    ChatMessage("user", "And of Italy?"),
]

#: A Jinja template (ChatML) that does not write BOS, on a vocabulary that wants one.
CHATML_NO_BOS_TEXT = with_changes(
    TINY, chat_template=CHATML_TEMPLATE_FOR_TESTS, name="Chat tiny chatml"
)
#: Mixtral's template writes {{ bos_token }} on a vocabulary that does not add BOS itself.
TEMPLATE_BOS_ONLY = with_changes(TINY, add_bos=False, name="Mixtral tiny template-bos")


def turns(messages: list[ChatMessage]) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in messages]


def folded(messages: list[ChatMessage]) -> list[tuple[str, str]]:
    """A system prompt folded into the first user turn (templates with no system role)."""
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    rest = [(m.role, m.content) for m in messages if m.role != "system"]
    if system:
        rest[0] = ("user", f"{system}\n\n{rest[0][1]}")
    return rest


#: name -> (model, conversation, reference turns, reference template kwargs)
CASES: dict[str, tuple[ModelSpec, list[ChatMessage], list[tuple[str, str]], dict[str, str]]] = {
    "gguf-jinja-with-bos": (TINY, QUESTION, turns(QUESTION), {"template": MIXTRAL_TEMPLATE}),
    "gguf-jinja-without-bos": (
        CHATML_NO_BOS_TEXT,
        QUESTION,
        turns(QUESTION),
        {"template": CHATML_TEMPLATE_FOR_TESTS},
    ),
    "gguf-jinja-bos-vocab-adds-none": (
        TEMPLATE_BOS_ONLY,
        QUESTION,
        turns(QUESTION),
        {"template": MIXTRAL_TEMPLATE},
    ),
    "vocab-adds-eos": (WITH_EOS, QUESTION, turns(QUESTION), {"template": MIXTRAL_TEMPLATE}),
    "mixtral-inst-fallback": (
        MIXTRAL_NO_TEMPLATE,
        MULTI_TURN,
        turns(MULTI_TURN),
        {"template": MIXTRAL_TEMPLATE},
    ),
    "mixtral-system-folded": (
        MIXTRAL_NO_TEMPLATE,
        WITH_SYSTEM,
        folded(WITH_SYSTEM),
        {"template": MIXTRAL_TEMPLATE},
    ),
    "builtin-gemma": (GEMMA_BASE, QUESTION, turns(QUESTION), {"builtin": "gemma"}),
    "builtin-gemma-system": (GEMMA_BASE, WITH_SYSTEM, turns(WITH_SYSTEM), {"builtin": "gemma"}),
    "builtin-gemma-multi-turn": (GEMMA_BASE, MULTI_TURN, turns(MULTI_TURN), {"builtin": "gemma"}),
    "builtin-chatml-qwen2-no-bos": (
        QWEN2_NO_BOS,
        WITH_SYSTEM,
        turns(WITH_SYSTEM),
        {"builtin": "chatml"},
    ),
    "builtin-phi3": (PHI3_BASE, MULTI_TURN, turns(MULTI_TURN), {"builtin": "phi3"}),
    "builtin-llama3": (LLAMA3_BASE, WITH_SYSTEM, turns(WITH_SYSTEM), {"builtin": "llama3"}),
}
