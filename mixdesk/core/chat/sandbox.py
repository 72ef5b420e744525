"""The sandbox a chat template renders in: Jinja's immutable sandbox with a budget.

A template is code from a downloaded file. It renders with a time limit, a limit on the text
it makes (every operation that could build a huge value is measured before it runs:
:mod:`.template_sizes`), and a stop check, so that a template that loops or grows without end
costs at most a second or two and the engine stays usable.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from itertools import islice
from typing import Any

from jinja2 import BaseLoader, Environment, TemplateError, nodes
from jinja2.ext import Extension
from jinja2.nodes import EvalContext
from jinja2.parser import Parser
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from mixdesk.core.chat.template_sizes import (
    SEQUENCE_FILTERS,
    filter_result_size,
    format_args,
    format_size,
    method_result_size,
    text_size,
)

#: Seconds a template may take to render one conversation (real ones take milliseconds).
TIME_BUDGET_S = 2.0
#: Characters a template may write, and the largest string or list it may build.
SIZE_BUDGET = 8 << 20
#: All the values one render makes may add up to this many times the size budget.
TOTAL_FACTOR = 8
#: Loop iterations between two looks at the clock and the stop flag.
_CHECK_EVERY = 256
_BIG_INT_BITS = 1 << 16
#: A %-format or str.format field with a width or precision of a million or more.
_FORMAT_WIDTH = re.compile(r"%[-#0 +]*\.?\d{7,}|\{[^{}]*:[^{}]*\d{7,}")


class OverBudget(Exception):  # noqa: N818 - a signal inside a render, never shown
    """Raised inside a render: the template used up its time or size budget."""


class Stopped(Exception):  # noqa: N818 - a signal inside a render, never shown
    """Raised inside a render: the answer was cancelled."""


class Budget:
    """What one render may still spend."""

    def __init__(self, *, seconds: float, size: int, stop: Callable[[], bool] | None) -> None:
        self.deadline = time.monotonic() + seconds
        self.seconds = seconds
        self.size = size
        self.stop = stop
        self.steps = 0
        #: Items (characters, elements) of every value made so far, and the most in all: many
        #: values each under the size budget must not add up to gigabytes.
        self.made = 0
        self.total = TOTAL_FACTOR * size

    def check(self) -> None:
        """Look at the clock and the stop flag."""
        if self.stop is not None and self.stop():
            raise Stopped
        if time.monotonic() > self.deadline:
            raise OverBudget(f"took more than {self.seconds:g} s")

    def step(self) -> None:
        """Count one loop iteration; look at the clock now and then."""
        self.steps += 1
        if self.steps % _CHECK_EVERY == 0:
            self.check()

    def sized(self, value: Any) -> Any:
        """Return ``value``, or stop the render if it is a string or list over the size budget."""
        if isinstance(value, str | bytes | list | tuple | dict):
            if len(value) > self.size:
                raise OverBudget(f"built a value of more than {self.size} items")
            self.made += len(value)
            if self.made > self.total:
                raise OverBudget(f"built values of more than {self.total} items in all")
        return value

    def fits(self, size: int, what: str) -> None:
        """Stop the render before it makes a result of ``size`` characters over the budget."""
        if size > self.size:
            raise OverBudget(f"{what} past the size budget ({size} characters or more)")

    def sequence(self, value: Any) -> Any:
        """``value`` as a sequence that can be measured (an iterator becomes a list).

        The items are measured as they arrive (``map`` may make each one), and the list is
        given up once their text passes the size budget.
        """
        if isinstance(value, Sequence) or not isinstance(value, Iterable):
            return value
        items = []
        text = 0
        for item in islice(value, self.size + 1):
            text += text_size(item, self.size)
            self.fits(text, "collected items")
            items.append(item)
        if len(items) > self.size:
            raise OverBudget(f"built a value of more than {self.size} items")
        return items

    def no_huge_numbers(self, values: Iterable[Any]) -> None:
        """Refuse widths and counts that would make a huge string (``center(10**9)``)."""
        for value in values:
            if isinstance(value, tuple):
                self.no_huge_numbers(value)
            elif isinstance(value, int) and not isinstance(value, bool) and value > self.size:
                raise OverBudget(f"asked for a size of {value}")

    def no_huge_format(self, fmt: Any) -> None:
        """Refuse a format string whose widths would make a huge string (``'%999999999s'``)."""
        if isinstance(fmt, str) and _FORMAT_WIDTH.search(fmt):
            raise OverBudget("asked for a format width of a million or more")


class BudgetedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with a time and size budget for one render.

    Every call, attribute and item lookup and every loop iteration looks at the budget (loops
    are rewritten to count their steps); ``*``, ``**``, ``+`` and ``%`` and every filter refuse
    to build a string or list over the size budget; ``~`` and ``{% set %}`` blocks are checked
    as well. Operations whose result can be many times their input (``join``, ``replace``,
    ``format`` and ``%``, ``indent``, writing a list as text) are measured before they run
    (:mod:`mixdesk.core.chat.template_sizes`), so an over-budget result is never made. A render
    over budget raises :class:`OverBudget`, a cancelled one :class:`Stopped`.
    """

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, budget: Budget) -> None:
        # The same dialect as llama-cpp-python's and Transformers' template renderers.
        super().__init__(
            loader=BaseLoader(),
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[_GenerationTag, "jinja2.ext.loopcontrols"],
        )
        self.budget = budget
        self.finalize = self._check_text  # every {{ value }}, before it becomes text
        self.globals["raise_exception"] = _raise_exception
        self.globals["strftime_now"] = _strftime_now
        del self.globals["lipsum"]  # lipsum(10**6) runs for minutes in one call
        for name, func in list(self.filters.items()):
            self.filters[name] = self._guarded_filter(name, func)
        self.filters["mixdesk_steps"] = self._count_steps
        self.filters["mixdesk_sized"] = self._check_size
        self.filters["mixdesk_slice"] = self._slice
        self.filters["mixdesk_text"] = self._check_text

    # -- hooks of the sandbox ---------------------------------------------------------

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 - Jinja's own signature
        budget = __self.budget
        budget.check()
        budget.no_huge_numbers(args)
        budget.no_huge_numbers(kwargs.values())
        if getattr(__obj, "__name__", "") == "join" and args:
            args = (budget.sequence(args[0]), *args[1:])
        budget.fits(method_result_size(__obj, args, kwargs, budget.size), "made text")
        return budget.sized(super().call(__context, __obj, *args, **kwargs))

    def getattr(self, obj: Any, attribute: str) -> Any:
        self.budget.check()
        if isinstance(obj, str) and attribute in ("format", "format_map"):
            self.budget.no_huge_format(obj)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        self.budget.check()
        return super().getitem(obj, argument)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = self.budget
        budget.check()
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | bytes | list | tuple)
                    and isinstance(count, int)
                    and len(seq) * max(count, 0) > budget.size
                ):
                    raise OverBudget("repeated a value past the size budget")
        elif operator == "**":
            if isinstance(right, int) and abs(right) > 1024 and abs(left) not in (0, 1):
                raise OverBudget("raised a number to a huge power")
        elif operator == "%":
            budget.no_huge_format(left)
            budget.no_huge_numbers([right])
            if isinstance(left, str):
                budget.fits(format_size(left, format_args(right), budget.size), "formatted text")
        elif (
            operator == "+"
            and isinstance(left, str | bytes | list | tuple)
            and isinstance(right, str | bytes | list | tuple)
            and len(left) + len(right) > budget.size
        ):
            raise OverBudget("joined values past the size budget")
        for value in (left, right):
            if isinstance(value, int) and value.bit_length() > _BIG_INT_BITS:
                raise OverBudget("computed with a huge number")
        return budget.sized(super().call_binop(context, operator, left, right))

    # -- loops, concatenation and set blocks ------------------------------------------

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        """Parse, then rewrite the tree so that loops count their steps and joins their size.

        The parts of a ``~`` join are measured as text before they become text.
        """
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, "mixdesk_steps", [], [], None, None)
        for assign in tree.find_all(nodes.AssignBlock):
            assign.filter = _chain_filter(assign.filter, "mixdesk_sized")
        for block in tree.find_all(nodes.FilterBlock):
            block.filter = _chain_filter(block.filter, "mixdesk_sized")
        for parent in reversed(list(tree.find_all(nodes.Node))):  # children first
            for field in parent.fields:
                child = getattr(parent, field, None)
                if isinstance(child, list):
                    setattr(parent, field, [_guarded_node(c) for c in child])
                elif isinstance(child, nodes.Node):
                    setattr(parent, field, _guarded_node(child))
        return tree

    def _slice(self, value: Any, start: Any, stop: Any, step: Any) -> Any:
        """``value[start:stop:step]``: Jinja compiles a slice to plain Python, past the
        sandbox's ``getitem``; here it looks at the clock and is measured like any value."""
        self.budget.check()
        return self.budget.sized(value[start:stop:step])

    def _count_steps(self, iterable: Any) -> Iterator[Any]:
        budget = self.budget
        for item in iterable:
            budget.step()
            yield item

    def _check_size(self, value: Any) -> Any:
        self.budget.check()
        return self.budget.sized(value)

    def _check_text(self, value: Any) -> Any:
        """Return ``value``, or stop the render if its text would be over the size budget."""
        self.budget.fits(text_size(value, self.budget.size), "wrote a value as text")
        return value

    def _guarded_filter(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        budget = self.budget

        def guarded(*args: Any, **kwargs: Any) -> Any:
            budget.check()
            values = [a for a in args if not isinstance(a, Context | EvalContext | Environment)]
            budget.no_huge_numbers(values[1:])
            budget.no_huge_numbers(kwargs.values())
            if name == "format" and values:
                budget.no_huge_format(values[0])
            if name in SEQUENCE_FILTERS and values:
                first = len(args) - len(values)
                values[0] = budget.sequence(values[0])
                args = (*args[:first], values[0], *args[first + 1 :])
            budget.fits(
                filter_result_size(name, values, kwargs, budget.size), f"made text with {name}"
            )
            return budget.sized(func(*args, **kwargs))

        # Jinja passes the context or environment to filters marked for it: keep the marks.
        guarded.__dict__.update(getattr(func, "__dict__", {}))
        if hasattr(func, "jinja_pass_arg"):
            guarded.jinja_pass_arg = func.jinja_pass_arg  # type: ignore[attr-defined]
        guarded.__name__ = func.__name__
        return guarded


def _chain_filter(existing: nodes.Filter | None, name: str) -> nodes.Filter:
    """A filter node applying ``name`` after ``existing`` (Jinja nests filters on ``node``)."""
    added = nodes.Filter(None, name, [], [], None, None)
    if existing is None:
        return added
    innermost = existing
    while isinstance(innermost.node, nodes.Filter):
        innermost = innermost.node
    innermost.node = added
    return existing


def _guarded_node(node: Any) -> Any:
    """``node`` measured where it can build a value the sandbox would not see: a ``~`` join
    (its parts measured as text first) and a slice (checked like an item lookup)."""
    if isinstance(node, nodes.Concat):
        return _sized(_text_parts(node))
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Slice):
        bounds = [
            b if b is not None else nodes.Const(None)
            for b in (node.arg.start, node.arg.stop, node.arg.step)
        ]
        return nodes.Filter(node.node, "mixdesk_slice", bounds, [], None, None)
    return node


def _sized(concat: nodes.Concat) -> nodes.Filter:
    return nodes.Filter(concat, "mixdesk_sized", [], [], None, None)


def _text_parts(concat: nodes.Concat) -> nodes.Concat:
    """``concat`` with each part measured as text before it becomes text."""
    concat.nodes = [nodes.Filter(part, "mixdesk_text", [], [], None, None) for part in concat.nodes]
    return concat


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)  # the local time, as templates expect


class _GenerationTag(Extension):
    """Pass-through for Hugging Face's ``{% generation %}`` tag (marks the assistant's text)."""

    tags = {"generation"}  # noqa: RUF012 - Jinja's own class attribute

    def parse(self, parser: Parser) -> list[nodes.Node]:
        parser.stream.skip(1)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def render_raw(
    text: str,
    messages: Sequence[Mapping[str, str]],
    *,
    bos: str,
    eos: str,
    add_gen: bool,
    budget: Budget,
) -> str:
    """Render ``text`` within ``budget``.

    Raises:
        TemplateSyntaxError: the template does not parse.
        OverBudget, Stopped: the render was stopped.
        Exception: whatever the template raised (``raise_exception``, a type error...).
    """
    env = BudgetedSandbox(budget)
    template = env.from_string(text)
    context: dict[str, Any] = {
        "messages": [dict(m) for m in messages],
        "bos_token": bos,
        "eos_token": eos,
        "add_generation_prompt": add_gen,
    }
    out: list[str] = []
    written = 0
    for chunk in template.generate(**context):
        written += len(chunk)
        if written > budget.size:
            raise OverBudget(f"wrote more than {budget.size} characters")
        out.append(chunk)
    return "".join(out)
