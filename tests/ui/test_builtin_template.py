"""A model with no chat template gets llama.cpp's built-in template for its architecture, and
a base model is named as one (a generated Gemma-architecture model, real engine)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from mixdesk.core.chat.template import (
    CHATML_TEMPLATE,
    ChatMessage,
    looks_like_base_model,
    render_prompt,
    select_template,
)
from mixdesk.core.chat.words import BASE_MODEL_WORDS, ENDED_AT_ONCE_WORDS
from mixdesk.core.gguf.synthetic import with_changes
from tests.helpers.model_factory import ENDS_AT_ONCE, GEMMA_BASE, make_model
from tests.helpers.window import ask, load, make_window


@pytest.fixture(scope="module")
def gemma_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("gemma")
    return make_model(directory, with_changes(GEMMA_BASE, n_layers=2), name="gemma-tiny-base")


def test_a_gemma_model_without_a_template_chats_in_gemmas_format(
    qtbot: QtBot, tmp_path: Path, gemma_base: Path
) -> None:
    window = make_window(qtbot, tmp_path)
    with qtbot.waitSignal(window.modelLoaded, timeout=30_000) as loaded:
        load(qtbot, window, gemma_base)
    info = loaded.args[0]
    assert info.architecture == "gemma"
    assert info.chat_template_source.startswith("llama.cpp gemma")  # not Mixtral's [INST]
    assert info.base_model
    line = window.model_bar.info.text()
    assert "chat template: llama.cpp gemma" in line and BASE_MODEL_WORDS in line
    window.set_sampling(max_tokens=8, seed=1)
    done = ask(qtbot, window, "Hello there")
    assert done.stats.prompt_tokens > 0 and done.stats.eval_tokens > 0
    window.close()


def test_the_window_answers_as_llama_cpp_does(
    qtbot: QtBot, tmp_path: Path, gemma_base: Path
) -> None:
    """Greedy, the window's answer on a base model without a template is llama.cpp's own
    (the prompt with its BOS: before the rule it was not, and the answer differed)."""
    from mixdesk.core.engine import reference

    window = make_window(qtbot, tmp_path)
    load(qtbot, window, gemma_base)
    window.set_sampling(temperature=0.0, repeat_penalty=1.0, max_tokens=24, seed=0)
    done = ask(qtbot, window, "The capital of France is")
    window.close()
    ref = reference.answer(
        str(gemma_base),
        [("user", "The capital of France is")],
        builtin="gemma",
        n_predict=24,
        n_ctx=512,
    )
    assert done.stats.prompt_tokens == len(ref.prompt_tokens)
    assert done.text == ref.text.lstrip()


def test_the_choice_by_architecture() -> None:
    gemma = select_template({"general.architecture": "gemma3", "general.name": "Gemma 3 270m"})
    assert gemma.llama_builtin == "gemma" and gemma.text == ""
    prompt = render_prompt(
        gemma,
        [ChatMessage("system", "Be brief."), ChatMessage("user", "Hi")],
        bos_token="<bos>",
        eos_token="<eos>",
    )
    assert prompt == "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    assert select_template({"general.architecture": "qwen2"}).llama_builtin == "chatml"
    mixtral = select_template({"general.architecture": "llama", "llama.expert_count": "8"})
    assert mixtral.source == "mixtral (built in)"  # Mixtral files still get [INST]
    unknown = select_template({"general.architecture": "somethingnew"})
    assert unknown.text is CHATML_TEMPLATE and not unknown.llama_builtin


def test_base_models_are_told_apart_from_instruct_ones() -> None:
    assert looks_like_base_model({"general.name": "gemma-3-270m"})
    assert not looks_like_base_model({"general.name": "gemma-3-270m-it"})
    assert not looks_like_base_model({"general.name": "Mixtral 8x7B Instruct v0.1"})
    assert not looks_like_base_model({"general.name": "x", "tokenizer.chat_template": "{{x}}"})


def test_an_answer_that_ends_at_once_says_why(qtbot: QtBot, tmp_path: Path) -> None:
    """End-of-text as the first token: one sentence in place of an empty block with
    "0 tokens · 0.0 tok/s"."""
    model = make_model(tmp_path, ENDS_AT_ONCE, name="ends-at-once")
    window = make_window(qtbot, tmp_path)
    load(qtbot, window, model)
    done = ask(qtbot, window, "The capital of France is")
    assert done.ended_at_once and done.text == "" and done.stats.eval_tokens == 0
    shown = window.view.toPlainText()
    assert ENDED_AT_ONCE_WORDS in shown
    assert "0 tokens" not in shown and "0.0 tok/s" not in shown
    assert window.statusBar().currentMessage() == ENDED_AT_ONCE_WORDS
    window.close()
