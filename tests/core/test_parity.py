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

from mixdesk.core.chat.template import ChatMessage
from mixdesk.core.engine import Engine, LoadConfig, reference
from mixdesk.core.engine.protocol import ChatDone
from mixdesk.core.gguf.synthetic import ModelSpec
from tests.helpers.model_factory import ENDS_AT_ONCE, make_model
from tests.helpers.parity_cases import CASES, GREEDY, N_CTX, QUESTION, turns


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
    ref = reference.answer(str(model), turns(QUESTION), builtin="llama2", n_ctx=N_CTX)
    assert ref.tokens == [2] and list(done.token_ids) == [2]
    assert done.ended_at_once
    assert (done.text, done.finish_reason, done.stats.eval_tokens) == ("", "stop", 0)
