"""Choosing and rendering chat templates (pure Python, no model needed)."""

from __future__ import annotations

import pytest

from mixdesk.core.chat_template import (
    CHATML_TEMPLATE,
    MIXTRAL_TEMPLATE,
    ChatMessage,
    ChatTemplate,
    TemplateRenderError,
    fold_system_prompt,
    render_prompt,
    select_template,
    template_has_system_role,
)

MIXTRAL = ChatTemplate(MIXTRAL_TEMPLATE, "gguf", has_system_role=False)


def test_mixtral_format_matches_the_model_card() -> None:
    messages = [
        ChatMessage("user", "question"),
        ChatMessage("assistant", "answer"),
        ChatMessage("user", "next"),
    ]
    prompt = render_prompt(MIXTRAL, messages, bos_token="<s>", eos_token="</s>")
    assert prompt == "<s>[INST] question [/INST]answer</s>[INST] next [/INST]"


def test_system_prompt_is_folded_into_the_first_user_turn() -> None:
    messages = [ChatMessage("system", "Be brief."), ChatMessage("user", "Hi")]
    prompt = render_prompt(MIXTRAL, messages, bos_token="<s>", eos_token="</s>")
    assert prompt == "<s>[INST] Be brief.\n\nHi [/INST]"


def test_fold_without_user_turn_and_without_system() -> None:
    assert fold_system_prompt([ChatMessage("system", "S")]) == [ChatMessage("user", "S")]
    plain = [ChatMessage("user", "a")]
    assert fold_system_prompt(plain) == plain


def test_system_role_detection() -> None:
    assert not template_has_system_role(MIXTRAL_TEMPLATE)
    assert template_has_system_role(CHATML_TEMPLATE)
    assert not template_has_system_role("{{ broken")  # a template that does not even parse


def test_template_selection() -> None:
    own = select_template({"tokenizer.chat_template": CHATML_TEMPLATE, "general.name": "Mixtral"})
    assert own.source == "gguf"
    assert own.has_system_role
    mixtral = select_template(
        {"general.name": "mixtral-8x7b-instruct-v0.1", "general.architecture": "llama"}
    )
    assert mixtral.source == "mixtral (built in)"
    assert not mixtral.has_system_role
    moe = select_template({"general.architecture": "llama", "llama.expert_count": "8"})
    assert moe.source == "mixtral (built in)"
    other = select_template({"general.name": "something", "general.architecture": "qwen2"})
    assert other.source == "chatml (built in)"


def test_roles_that_do_not_alternate_are_reported() -> None:
    messages = [ChatMessage("user", "a"), ChatMessage("user", "b")]
    with pytest.raises(TemplateRenderError, match="alternate"):
        render_prompt(MIXTRAL, messages, bos_token="<s>", eos_token="</s>")


def test_templates_are_sandboxed() -> None:
    evil = ChatTemplate(
        "{{ ''.__class__.__mro__[1].__subclasses__() }}", "gguf", has_system_role=True
    )
    with pytest.raises(Exception, match=r"unsafe|access"):
        render_prompt(evil, [ChatMessage("user", "x")], bos_token="", eos_token="")
