"""Choosing and rendering chat templates (pure Python, no model needed)."""

from __future__ import annotations

import pytest

from mixdesk.core.chat.template import (
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
    assert other.llama_builtin == "chatml"  # llama.cpp's own template for the architecture
    unknown = select_template({"general.name": "something", "general.architecture": "new"})
    assert unknown.source == "chatml (built in)"


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


LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


def _render(text: str, **kwargs: object) -> str:
    template = ChatTemplate(text, "gguf", has_system_role=True)
    return render_prompt(
        template,
        [ChatMessage("user", "x")],
        bos_token="<s>",
        eos_token="</s>",
        **kwargs,  # type: ignore[arg-type]
    )


def test_a_template_that_loops_is_stopped_within_its_budget() -> None:
    import time

    from mixdesk.errors import TemplateBudgetError

    start = time.monotonic()
    with pytest.raises(TemplateBudgetError, match=r"stopped the model's chat template .*0\.5 s"):
        _render(LOOPS, seconds=0.5)
    assert time.monotonic() - start < 1.5


@pytest.mark.parametrize(
    "text",
    [
        "{% set x = range(100000)|list %}{% for i in x %}{% for j in x %}{% endfor %}{% endfor %}",
        "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "{% set ns = namespace(x=3) %}{% for i in range(64) %}{% set ns.x = ns.x * ns.x %}{% endfor %}",
        "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set t %}{{ ns.s }}{{ ns.s }}"
        "{% endset %}{% set ns.s = t %}{% endfor %}",
        "{% for i in range(100000) %}{% for j in range(100000) %}xxxx{% endfor %}{% endfor %}",
        "{% macro m(n) %}{% if n %}{{ m(n - 1) }}{{ m(n - 1) }}{% endif %}{% endmacro %}{{ m(60) }}",
        "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
        "{{ 'x'|center(1000000000) }}",
        "{{ 'x'.ljust(1000000000) }}",
        "{{ '{:>999999999}'.format('a') }}",
        "{{ '%999999999s'|format('a') }}",
        "{{ '%999999999s' % 'a' }}",
        "{{ ('a' * 1000000)|replace('a', 'bbbbbbbbbbbbbbbbbbbb') }}",
        "{{ 'ab' * 100000000 }}",
        "{{ 3 ** 100000000 }}",
    ],
)
def test_templates_cannot_run_away(text: str) -> None:
    import time

    from mixdesk.errors import TemplateBudgetError

    start = time.monotonic()
    with pytest.raises(TemplateBudgetError, match=r"broken or hostile|calls itself"):
        _render(text, seconds=0.5)
    assert time.monotonic() - start < 3


def test_a_stop_ends_a_render_at_once() -> None:
    import time

    from mixdesk.errors import TemplateCancelledError

    start = time.monotonic()
    with pytest.raises(TemplateCancelledError, match="Stopped"):
        _render(LOOPS, cancelled=lambda: time.monotonic() - start > 0.2)
    assert time.monotonic() - start < 0.7


def test_a_template_that_does_not_parse_is_replaced_and_reported() -> None:
    from mixdesk.errors import TemplateSyntaxBrokenError

    broken = "{% for m in messages %}{{ m.content }}"  # no endfor
    chosen = select_template({"tokenizer.chat_template": broken, "general.name": "Mixtral"})
    assert chosen.text == MIXTRAL_TEMPLATE
    assert chosen.note == (
        "The model's chat template is broken (Unexpected end of template at line 1). "
        "MixDesk uses its built-in Mixtral [INST] template instead."
    )
    assert "broken" in chosen.source
    with pytest.raises(TemplateSyntaxBrokenError, match="chat template is broken"):
        _render(broken)


def test_a_template_that_cannot_render_two_lines_is_replaced() -> None:
    chosen = select_template({"tokenizer.chat_template": LOOPS, "general.architecture": "qwen2"})
    assert chosen.llama_builtin == "chatml"  # llama.cpp's own for the architecture
    assert "took more than" in chosen.note and "llama.cpp chatml" in chosen.note
    other = select_template({"tokenizer.chat_template": LOOPS, "general.architecture": "new"})
    assert other.text == CHATML_TEMPLATE
    assert "took more than" in other.note and "ChatML" in other.note


def test_template_errors_are_sentences() -> None:
    from mixdesk.errors import TemplateRenderError as Typed
    from mixdesk.errors import user_message

    with pytest.raises(Typed) as info:
        _render("{{ 1 / 0 }}")
    assert user_message(info.value) == (
        "The model's chat template failed on this conversation (ZeroDivisionError: division by zero)."
    )


def test_ordinary_and_transformers_template_features_work() -> None:
    ordinary = (
        "{% for m in messages if m.role == 'user' %}{{ loop.index }}/{{ loop.length }}"
        "{{ m.content|upper|trim }}{% if loop.last %}.{% endif %}{% else %}none{% endfor %}"
        "{% for k, v in {'a': 1}.items() %}{{ k }}={{ v }}{% endfor %}"
        "{% filter upper %}abc{% endfilter %}{% set t %}[{{ bos_token ~ eos_token }}]{% endset %}{{ t }}"
        "{{ messages|map(attribute='content')|join(',') }}{{ '%5s|%-3d' % ('a', 7) }}"
        "{{ '{:>4}'.format('b') }}{{ 'x' * 3 }}{{ 2 ** 10 }}{{ 'aXa'|replace('a', 'yy') }}"
    )
    assert _render(ordinary) == "1/1X.a=1ABC[<s></s>]x    a|7     bxxx1024yyXyy"
    # Hugging Face's dialect, as llama-cpp-python and Transformers accept it
    text = (
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
        "{% generation %}{{ m.content }}{% endgeneration %}{% continue %}{% endfor %}"
        "{{ strftime_now('%Y')|length }}"
    )
    assert _render(text) == "x4"
    assert select_template({"tokenizer.chat_template": text}).source == "gguf"
