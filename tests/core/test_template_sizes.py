"""A hostile chat template is stopped before it makes its oversized value, not after.

Each template below once allocated 100 MB or more before the size budget looked at the
result (``([x]*N)|join`` peaked at 1.67 GB in the engine); the memory a render takes is
measured with tracemalloc.
"""

from __future__ import annotations

import time
import tracemalloc

import pytest

from mixdesk.core.chat.template import ChatMessage, ChatTemplate, render_prompt
from mixdesk.core.chat.template_sizes import (
    format_size,
    indent_size,
    join_size,
    replace_size,
    text_size,
)
from mixdesk.errors import TemplateBudgetError, TemplateRenderError, user_message

#: 100,000 references to one 1,000-character string: an 800 KB list, 100 MB as text.
LIST = "(['x' * 1000] * 100000)"
BIG = "('x' * 1000000)"


def _render(text: str) -> str:
    template = ChatTemplate(text, "gguf", has_system_role=True)
    return render_prompt(template, [ChatMessage("user", "hi")], bos_token="<s>", eos_token="</s>")


@pytest.mark.parametrize(
    "expression",
    [
        f"{LIST}|join",
        f"{LIST}|join(', ')",
        f"''.join({LIST})",
        f"{LIST}|map('upper')|join",
        f"''.join({LIST}|map('upper'))",
        "('a' * 1000000).replace('a', 'b' * 100)",
        "('a' * 1000000)|replace('a', 'b' * 100)",
        f"('{{0}}' * 100).format({BIG})",
        f"('%s' * 100)|format(*([{BIG}] * 100))",
        f"('%s' * 100) % (({BIG},) * 100)",
        LIST,
        f"{LIST}|string",
        f"{LIST} ~ ''",
        f"{LIST}|tojson",
        f"{LIST}|pprint",
        f"{LIST}|upper",
        "('x\\n' * 1000000)|indent(100)",
        "('\\t' * 1000000).expandtabs(100)",
    ],
)
def test_an_oversized_result_is_refused_before_it_is_made(expression: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(TemplateBudgetError) as info:
            _render("{{ " + expression + " }}")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"the render peaked at {peak >> 20} MiB"
    assert user_message(info.value).startswith(
        "MixDesk stopped the model's chat template because it "
    )
    assert "past the size budget" in user_message(info.value)


@pytest.mark.timeout(60)
def test_adding_up_lists_is_refused_before_it_copies_for_minutes() -> None:
    start = time.monotonic()
    with pytest.raises(TemplateBudgetError, match="made text with sum past the size budget"):
        _render("{{ ([[0] * 1000] * 3000)|sum(start=[]) }}")  # 4.5 billion items copied
    assert time.monotonic() - start < 1


def test_lipsum_is_not_there_to_run_for_minutes() -> None:
    with pytest.raises(TemplateRenderError, match="'lipsum' is undefined"):
        _render("{{ lipsum(100000) }}")


def test_what_real_templates_do_still_renders() -> None:
    text = (
        "{% for m in messages %}{{ m['content']|trim|replace('h', 'H') }}"
        "{{ [m.role, m.content]|join('|') }}{{ m|tojson }}{{ ('%s:%s' % (m.role, 1)) }}"
        "{{ '{}-{}'.format('a', 2) }}{{ ['a', 'b']|map('upper')|join }}"
        "{{ 'x\\ny'|indent(2) }}{{ [[1], [2]]|sum(start=[]) }}{{ messages|length }}{% endfor %}"
    )
    assert _render(text) == ('Hiuser|hi{"content": "hi", "role": "user"}user:1a-2ABx\n  y[1, 2]1')


def test_the_estimates_match_what_python_makes() -> None:
    limit = 1 << 20
    values = [["ab", 12, 3.5, None, True], {"k": ("v", -7)}, "x" * 40]
    assert text_size(values, limit) >= len(str(values))
    assert text_size(values, limit) <= 2 * len(str(values))
    assert join_size(["ab", "c", "d"], "--", limit) == len("ab--c--d")
    assert len("ab--12") <= join_size(["ab", 12], "--", limit) <= len("ab--12") + 1
    for old, new in (("a", "bb"), ("", "-"), ("ab", "")):
        assert replace_size("aabab", old, new) == len("aabab".replace(old, new))
    assert replace_size("aaaa", "a", "bbb", 2) == len("aaaa".replace("a", "bbb", 2))
    assert format_size("%s and %s", ("x" * 10, "y"), limit) >= len(f"{'x' * 10} and y")
    assert indent_size("a\nb\nc", 4) >= len("a\nb\nc".replace("\n", "\n    "))


def test_counting_stops_at_the_limit() -> None:
    nested: list[object] = ["x" * 10]
    for _ in range(30):
        nested = [nested, nested]  # 2**30 strings when written out
    assert 1000 < text_size(nested, 1000) < 1100


@pytest.mark.parametrize(
    "template",
    [
        # Jinja compiles a slice to plain Python, past the sandbox: 200 slices of 8 MB
        "{% set s = 'x' * 8000000 %}{{ ["
        + ", ".join(f"s[{i}:]" for i in range(200))
        + "]|length }}",
        # a slice of a slice of a slice
        "{% set s = 'x' * 8000000 %}{% for i in range(200) %}{{ s[1:][1:][1:]|length }}{% endfor %}",
        # many values each under the size budget, adding up
        "{% set s = 'x' * 8000000 %}{{ ["
        + ", ".join(f"s ~ '{i}'" for i in range(200))
        + "]|length }}",
    ],
    ids=["slices", "nested-slices", "many-joins"],
)
def test_many_values_under_the_budget_cannot_add_up_to_gigabytes(template: str) -> None:
    """Each value stays under the size budget, but all the values of one render count too
    (the first of these peaked at 6 GB in 19 s before)."""
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(TemplateBudgetError):
            _render(template)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 160 << 20
    assert time.monotonic() - started < 5
