"""Answers exactly as llama.cpp gives them: token-for-token parity on every template path.

Random weights cannot show a wrong answer, but greedy decoding is deterministic whatever the
weights: the same prompt tokens give the same generated tokens. So each chat-template path
MixDesk has is compared with llama.cpp's own path (:mod:`mixdesk.core.engine.reference`,
written on llama.cpp's C API and sharing no code with the engine): the same prompt tokens,
and the same first 32 generated tokens.

The BOS rule is llama.cpp's (``common/chat.cpp``, then ``llama_tokenize`` with
``add_special``): exactly one BOS when the vocabulary asks for it, whether the template
writes it or not, none when it does not. Before it, the engine tokenized with
``add_bos=False`` on every path, and the built-in templates (gemma, phi3, llama3) and a Jinja
template without ``{{ bos_token }}`` lost their BOS: those cases fail on that code, as does the
vocabulary that asks for EOS too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mixdesk.core.chat.template import MIXTRAL_TEMPLATE, ChatMessage
from mixdesk.core.engine import Engine, LoadConfig, SamplingParams, reference
from mixdesk.core.engine.protocol import ChatDone
from mixdesk.core.gguf.synthetic import TINY, ModelSpec, with_changes
from tests.helpers.model_factory import (
    CHATML_TEMPLATE_FOR_TESTS,
    ENDS_AT_ONCE,
    GEMMA_BASE,
    LLAMA3_BASE,
    MIXTRAL_NO_TEMPLATE,
    PHI3_BASE,
    QWEN2_NO_BOS,
    WITH_EOS,
    make_model,
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


def _turns(messages: list[ChatMessage]) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in messages]


def _folded(messages: list[ChatMessage]) -> list[tuple[str, str]]:
    """A system prompt folded into the first user turn (templates with no system role)."""
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    rest = [(m.role, m.content) for m in messages if m.role != "system"]
    if system:
        rest[0] = ("user", f"{system}\n\n{rest[0][1]}")
    return rest


#: name -> (model, conversation, reference turns, reference template kwargs)
CASES: dict[str, tuple[ModelSpec, list[ChatMessage], list[tuple[str, str]], dict[str, str]]] = {
    "gguf-jinja-with-bos": (TINY, QUESTION, _turns(QUESTION), {"template": MIXTRAL_TEMPLATE}),
    "gguf-jinja-without-bos": (
        CHATML_NO_BOS_TEXT,
        QUESTION,
        _turns(QUESTION),
        {"template": CHATML_TEMPLATE_FOR_TESTS},
    ),
    "gguf-jinja-bos-vocab-adds-none": (
        TEMPLATE_BOS_ONLY,
        QUESTION,
        _turns(QUESTION),
        {"template": MIXTRAL_TEMPLATE},
    ),
    "vocab-adds-eos": (WITH_EOS, QUESTION, _turns(QUESTION), {"template": MIXTRAL_TEMPLATE}),
    "mixtral-inst-fallback": (
        MIXTRAL_NO_TEMPLATE,
        MULTI_TURN,
        _turns(MULTI_TURN),
        {"template": MIXTRAL_TEMPLATE},
    ),
    "mixtral-system-folded": (
        MIXTRAL_NO_TEMPLATE,
        WITH_SYSTEM,
        _folded(WITH_SYSTEM),
        {"template": MIXTRAL_TEMPLATE},
    ),
    "builtin-gemma": (GEMMA_BASE, QUESTION, _turns(QUESTION), {"builtin": "gemma"}),
    "builtin-gemma-system": (GEMMA_BASE, WITH_SYSTEM, _turns(WITH_SYSTEM), {"builtin": "gemma"}),
    "builtin-gemma-multi-turn": (GEMMA_BASE, MULTI_TURN, _turns(MULTI_TURN), {"builtin": "gemma"}),
    "builtin-chatml-qwen2-no-bos": (
        QWEN2_NO_BOS,
        WITH_SYSTEM,
        _turns(WITH_SYSTEM),
        {"builtin": "chatml"},
    ),
    "builtin-phi3": (PHI3_BASE, MULTI_TURN, _turns(MULTI_TURN), {"builtin": "phi3"}),
    "builtin-llama3": (LLAMA3_BASE, WITH_SYSTEM, _turns(WITH_SYSTEM), {"builtin": "llama3"}),
}


@pytest.fixture(scope="module")
def parity_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    with Engine(log_dir=tmp_path_factory.mktemp("parity-logs")) as engine:
        engine.start()
        yield engine


@pytest.fixture(scope="module")
def parity_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("parity-models")
    made: dict[ModelSpec, Path] = {}
    out: dict[str, Path] = {}
    for name, (spec, *_rest) in CASES.items():
        if spec not in made:
            made[spec] = make_model(directory, spec, name=name)
        out[name] = made[spec]
    return out


def engine_answer(engine: Engine, model: Path, messages: list[ChatMessage]) -> ChatDone:
    """The engine's greedy answer, with its prompt and answer tokens."""
    if engine.model is None or engine.model.path != str(model):
        engine.load(LoadConfig(str(model), n_ctx=N_CTX, n_threads=2))
    stream = engine.chat(messages, GREEDY, report_tokens=True)
    for _ in stream:
        pass
    assert stream.result is not None
    return stream.result


@pytest.mark.parametrize("case", list(CASES))
def test_engine_answers_token_for_token_as_llama_cpp(
    case: str, parity_engine: Engine, parity_models: dict[str, Path]
) -> None:
    spec, messages, ref_turns, ref_template = CASES[case]
    model = parity_models[case]
    done = engine_answer(parity_engine, model, messages)
    ref = reference.answer(
        str(model),
        ref_turns,
        template=ref_template.get("template"),
        builtin=ref_template.get("builtin"),
        n_predict=32,
        n_ctx=N_CTX,
    )

    assert list(done.prompt_token_ids) == ref.prompt_tokens, ref.prompt
    assert list(done.token_ids) == ref.tokens
    assert len(ref.tokens) == 32  # a real comparison: no early end-of-text
    assert done.text == ref.text.lstrip()  # MixDesk drops the answer's leading space only
    # exactly one BOS when the vocabulary asks for it (from the template or the tokenizer)
    bos_count = done.prompt_token_ids.count(1)
    assert bos_count == (1 if spec.add_bos or "bos_token" in str(ref_template) else 0)
    if spec.add_eos:
        assert done.prompt_token_ids[-1] == 2


def test_a_base_model_is_named_as_one_and_chosen_builtin_templates(
    parity_engine: Engine, parity_models: dict[str, Path]
) -> None:
    """The reference's built-in template is the one the engine chose for each architecture."""
    for case, builtin in (
        ("builtin-gemma", "gemma"),
        ("builtin-phi3", "phi3"),
        ("builtin-llama3", "llama3"),
        ("builtin-chatml-qwen2-no-bos", "chatml"),
    ):
        parity_engine.load(LoadConfig(str(parity_models[case]), n_ctx=N_CTX, n_threads=2))
        info = parity_engine.model
        assert info is not None
        assert info.chat_template_source.startswith(f"llama.cpp {builtin} ")
        assert info.base_model


def test_an_answer_that_ends_at_once_is_marked(
    parity_engine: Engine, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """End-of-text as the first token: an empty answer the app can name (not "0 tokens")."""
    model = make_model(tmp_path_factory.mktemp("eos-first"), ENDS_AT_ONCE, name="eos-first")
    done = engine_answer(parity_engine, model, QUESTION)
    ref = reference.answer(str(model), _turns(QUESTION), builtin="llama2", n_ctx=N_CTX)
    assert ref.tokens == [2] and list(done.token_ids) == [2]
    assert done.ended_at_once
    assert (done.text, done.finish_reason, done.stats.eval_tokens) == ("", "stop", 0)
