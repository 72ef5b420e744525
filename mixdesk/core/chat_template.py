"""Chat templates: pick the right one for a model and turn a conversation into a prompt.

The template normally comes from the GGUF (``tokenizer.chat_template``). Files from 2023
often have none; for a Mistral or Mixtral model MixDesk then uses Mixtral's own ``[INST]``
format. Templates without a system role (Mixtral's) get the system prompt folded into the
first user turn instead of an error. A template that does not parse, or that cannot render
even a two-line conversation within its budget, is reported and replaced by the built-in
one.

The template is code from a downloaded file, so it runs in Jinja's sandbox with a budget
(see :class:`BudgetedSandbox`): a time limit, a limit on the text it makes, and a stop
check, so that a template that loops or grows without end costs at most a second or two
and the engine stays usable.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from itertools import islice
from typing import Any

from jinja2 import BaseLoader, Environment, TemplateError, TemplateSyntaxError, nodes
from jinja2.ext import Extension
from jinja2.nodes import EvalContext
from jinja2.parser import Parser
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from mixdesk.core.known_templates import CHATML_TEMPLATE, MIXTRAL_TEMPLATE
from mixdesk.core.template_sizes import (
    SEQUENCE_FILTERS,
    filter_result_size,
    format_args,
    format_size,
    method_result_size,
    text_size,
)
from mixdesk.errors import (
    TemplateBudgetError,
    TemplateCancelledError,
    TemplateRenderError,
    TemplateSyntaxBrokenError,
)

log = logging.getLogger(__name__)

__all__ = [
    "CHATML_TEMPLATE",
    "MIXTRAL_TEMPLATE",
    "BudgetedSandbox",
    "ChatMessage",
    "ChatTemplate",
    "TemplateRenderError",
    "builtin_template",
    "check_template",
    "fold_system_prompt",
    "is_mistral_family",
    "render_prompt",
    "select_template",
    "template_has_system_role",
]

#: Seconds a template may take to render one conversation (real ones take milliseconds).
TIME_BUDGET_S = 2.0
#: Characters a template may write, and the largest string or list it may build.
SIZE_BUDGET = 8 << 20
#: Loop iterations between two looks at the clock and the stop flag.
_CHECK_EVERY = 256
_BIG_INT_BITS = 1 << 16
#: A %-format or str.format field with a width or precision of a million or more.
_FORMAT_WIDTH = re.compile(r"%[-#0 +]*\.?\d{7,}|\{[^{}]*:[^{}]*\d{7,}")

_SYSTEM_PROBE = "\x00mixdesk-system-probe\x00"


@dataclass(frozen=True)
class ChatMessage:
    """One turn of a conversation."""

    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(frozen=True)
class ChatTemplate:
    """A chat template and what MixDesk knows about it.

    ``note`` says why a built-in template stands in for the model's own (empty otherwise).
    """

    text: str
    source: str  # "gguf", "mixtral (built in)", "chatml (built in)" or "llama.cpp NAME (...)"
    has_system_role: bool
    note: str = ""
    #: The name of llama.cpp's own built-in template (``llama_chat_apply_template``) that
    #: renders this model's prompts in the engine; empty when ``text`` (Jinja) does.
    llama_builtin: str = ""


class _OverBudget(Exception):  # noqa: N818 - a signal inside a render, never shown
    """Raised inside a render: the template used up its time or size budget."""


class _Stopped(Exception):  # noqa: N818 - a signal inside a render, never shown
    """Raised inside a render: the answer was cancelled."""


class _Budget:
    """What one render may still spend."""

    def __init__(self, *, seconds: float, size: int, stop: Callable[[], bool] | None) -> None:
        self.deadline = time.monotonic() + seconds
        self.seconds = seconds
        self.size = size
        self.stop = stop
        self.steps = 0

    def check(self) -> None:
        """Look at the clock and the stop flag."""
        if self.stop is not None and self.stop():
            raise _Stopped
        if time.monotonic() > self.deadline:
            raise _OverBudget(f"took more than {self.seconds:g} s")

    def step(self) -> None:
        """Count one loop iteration; look at the clock now and then."""
        self.steps += 1
        if self.steps % _CHECK_EVERY == 0:
            self.check()

    def sized(self, value: Any) -> Any:
        """Return ``value``, or stop the render if it is a string or list over the size budget."""
        if isinstance(value, str | bytes | list | tuple | dict) and len(value) > self.size:
            raise _OverBudget(f"built a value of more than {self.size} items")
        return value

    def fits(self, size: int, what: str) -> None:
        """Stop the render before it makes a result of ``size`` characters over the budget."""
        if size > self.size:
            raise _OverBudget(f"{what} past the size budget ({size} characters or more)")

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
            raise _OverBudget(f"built a value of more than {self.size} items")
        return items

    def no_huge_numbers(self, values: Iterable[Any]) -> None:
        """Refuse widths and counts that would make a huge string (``center(10**9)``)."""
        for value in values:
            if isinstance(value, tuple):
                self.no_huge_numbers(value)
            elif isinstance(value, int) and not isinstance(value, bool) and value > self.size:
                raise _OverBudget(f"asked for a size of {value}")

    def no_huge_format(self, fmt: Any) -> None:
        """Refuse a format string whose widths would make a huge string (``'%999999999s'``)."""
        if isinstance(fmt, str) and _FORMAT_WIDTH.search(fmt):
            raise _OverBudget("asked for a format width of a million or more")


class BudgetedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with a time and size budget for one render.

    Every call, attribute and item lookup and every loop iteration looks at the budget (loops
    are rewritten to count their steps); ``*``, ``**``, ``+`` and ``%`` and every filter refuse
    to build a string or list over the size budget; ``~`` and ``{% set %}`` blocks are checked
    as well. Operations whose result can be many times their input (``join``, ``replace``,
    ``format`` and ``%``, ``indent``, writing a list as text) are measured before they run
    (:mod:`mixdesk.core.template_sizes`), so an over-budget result is never made. A render
    over budget raises :class:`_OverBudget`, a cancelled one :class:`_Stopped`.
    """

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, budget: _Budget) -> None:
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
                    raise _OverBudget("repeated a value past the size budget")
        elif operator == "**":
            if isinstance(right, int) and abs(right) > 1024 and abs(left) not in (0, 1):
                raise _OverBudget("raised a number to a huge power")
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
            raise _OverBudget("joined values past the size budget")
        for value in (left, right):
            if isinstance(value, int) and value.bit_length() > _BIG_INT_BITS:
                raise _OverBudget("computed with a huge number")
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
        for parent in list(tree.find_all(nodes.Node)):
            for field in parent.fields:
                child = getattr(parent, field, None)
                if isinstance(child, nodes.Concat):
                    setattr(parent, field, _sized(_text_parts(child)))
                elif isinstance(child, list):
                    setattr(
                        parent,
                        field,
                        [
                            _sized(_text_parts(c)) if isinstance(c, nodes.Concat) else c
                            for c in child
                        ],
                    )
        return tree

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


def _render_raw(
    text: str,
    messages: Sequence[Mapping[str, str]],
    *,
    bos: str,
    eos: str,
    add_gen: bool,
    budget: _Budget,
) -> str:
    """Render ``text`` within ``budget``.

    Raises:
        TemplateSyntaxError: the template does not parse.
        _OverBudget, _Stopped: the render was stopped.
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
            raise _OverBudget(f"wrote more than {budget.size} characters")
        out.append(chunk)
    return "".join(out)


def _probe_system_role(text: str, *, seconds: float) -> bool:
    """Render a system message with ``text``; whether it shows in the prompt.

    Raises:
        TemplateSyntaxError: the template does not parse.
        _OverBudget: it cannot render even this two-line conversation within its budget.
    """
    probe = [{"role": "system", "content": _SYSTEM_PROBE}, {"role": "user", "content": "hi"}]
    budget = _Budget(seconds=seconds, size=SIZE_BUDGET, stop=None)
    try:
        rendered = _render_raw(text, probe, bos="<s>", eos="</s>", add_gen=True, budget=budget)
    except (TemplateSyntaxError, _OverBudget):
        raise
    except Exception:  # noqa: BLE001 - any other failure of a foreign template: "no system role"
        return False
    return _SYSTEM_PROBE in rendered


def template_has_system_role(text: str) -> bool:
    """Return whether ``text`` renders a system message (rather than raising or dropping it)."""
    try:
        return _probe_system_role(text, seconds=TIME_BUDGET_S)
    except (TemplateSyntaxError, _OverBudget):
        return False


def check_template(text: str, *, seconds: float = TIME_BUDGET_S) -> bool:
    """Check that a model's template parses and renders a short conversation within budget.

    Returns:
        Whether it renders a system message.

    Raises:
        TemplateSyntaxBrokenError: it does not parse.
        TemplateBudgetError: it takes too long or writes too much for a two-line conversation.
    """
    try:
        return _probe_system_role(text, seconds=seconds)
    except TemplateSyntaxError as err:
        raise TemplateSyntaxBrokenError(_syntax_message(err)) from None
    except _OverBudget as err:
        raise TemplateBudgetError(
            f"The model's chat template is broken: it {err} for a two-line conversation."
        ) from None


def _syntax_message(err: TemplateSyntaxError) -> str:
    what = (err.message or "syntax error").split(". ")[0].rstrip(".")
    where = f" at line {err.lineno}" if err.lineno else ""
    return f"The model's chat template is broken ({what}{where})."


def is_mistral_family(metadata: Mapping[str, str]) -> bool:
    """Return whether GGUF metadata describes a Mistral or Mixtral model."""
    name = (metadata.get("general.name", "") + " " + metadata.get("general.basename", "")).lower()
    if "mistral" in name or "mixtral" in name:
        return True
    arch = metadata.get("general.architecture", "")
    # A llama-architecture mixture of experts is how Mixtral is stored in GGUF.
    return arch == "llama" and int(metadata.get("llama.expert_count", "0") or 0) > 0


#: llama.cpp's built-in chat template (one of ``llama_chat_builtin_templates``) for a model of
#: each architecture that carries no template of its own. A dense ``llama`` file without one
#: is a Llama 2 era model ([INST], as Mistral's); Mixtral (llama with experts) is caught first.
ARCH_BUILTIN_TEMPLATES = {
    "llama": "llama2",
    "llama4": "llama4",
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "gemma3n": "gemma",
    "qwen": "chatml",
    "qwen2": "chatml",
    "qwen2moe": "chatml",
    "qwen3": "chatml",
    "qwen3moe": "chatml",
    "phi3": "phi3",
    "command-r": "command-r",
    "cohere2": "command-r",
    "deepseek": "deepseek",
    "deepseek2": "deepseek3",
    "chatglm": "chatglm4",
    "glm4": "chatglm4",
    "falcon": "falcon3",
    "granite": "granite",
    "granitemoe": "granite",
    "exaone": "exaone3",
    "exaone4": "exaone4",
    "minicpm": "minicpm",
    "orion": "orion",
    "bailingmoe": "bailing",
    "hunyuan-moe": "hunyuan-moe",
    "hunyuan-dense": "hunyuan-dense",
    "seed_oss": "seed_oss",
}
_INSTRUCT_WORDS = ("instruct", "chat", "-it", "_it", " it ", "rlhf", "dpo", "sft", "assistant")


def looks_like_base_model(metadata: Mapping[str, str]) -> bool:
    """Whether a model looks like a base (not instruction-tuned) model: it carries no chat
    template and its name says nothing of instruct/chat tuning. Such a model continues text;
    in a chat it answers oddly (a Gemma base model answered "<" forty times)."""
    if metadata.get("tokenizer.chat_template"):
        return False
    name = " ".join(
        metadata.get(k, "") for k in ("general.name", "general.basename", "general.finetune")
    )
    name = f" {name.lower()} "
    return not any(word in name for word in _INSTRUCT_WORDS)


def builtin_template(metadata: Mapping[str, str]) -> ChatTemplate:
    """The built-in template for a model: Mixtral's for the Mistral family, llama.cpp's own
    for the architecture when it has one, ChatML otherwise."""
    if is_mistral_family(metadata):
        return ChatTemplate(
            text=MIXTRAL_TEMPLATE, source="mixtral (built in)", has_system_role=False
        )
    arch = metadata.get("general.architecture", "")
    name = ARCH_BUILTIN_TEMPLATES.get(arch)
    if arch == "llama" and metadata.get("tokenizer.ggml.pre") == "llama-bpe":
        name = "llama3"  # a Llama 3 vocabulary: Llama 3's header format, not Llama 2's [INST]
    if name is not None:
        # llama.cpp places a system prompt itself where the format has none (e.g. Gemma's)
        return ChatTemplate(
            text="",
            source=f"llama.cpp {name} (built in, for the {arch} architecture)",
            has_system_role=True,
            llama_builtin=name,
        )
    return ChatTemplate(text=CHATML_TEMPLATE, source="chatml (built in)", has_system_role=True)


def select_template(metadata: Mapping[str, str]) -> ChatTemplate:
    """Choose the chat template for a model from its GGUF metadata.

    Args:
        metadata: the GGUF key/value metadata as strings.

    Returns:
        The GGUF's own template when it has one that works; Mixtral's for a Mistral-family
        model without one; llama.cpp's built-in template for the architecture when llama.cpp
        has one (:data:`ARCH_BUILTIN_TEMPLATES`); ChatML otherwise. A broken template of the model's own is
        replaced by the built-in one, and ``note`` says so.
    """
    text = metadata.get("tokenizer.chat_template")
    if text:
        try:
            return ChatTemplate(text=text, source="gguf", has_system_role=check_template(text))
        except (TemplateSyntaxBrokenError, TemplateBudgetError) as err:
            fallback = builtin_template(metadata)
            name = (
                "Mixtral [INST]"
                if fallback.text is MIXTRAL_TEMPLATE
                else f"llama.cpp {fallback.llama_builtin}"
                if fallback.llama_builtin
                else "ChatML"
            )
            note = f"{err} MixDesk uses its built-in {name} template instead."
            log.warning("%s", note)
            return replace(
                fallback, source=f"{fallback.source}; the model's own is broken", note=note
            )
    fallback = builtin_template(metadata)
    if fallback.text is CHATML_TEMPLATE:
        log.warning("model has no chat template and is not Mistral-family; using ChatML")
    return fallback


def fold_system_prompt(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """Merge system messages into the first user turn, for templates with no system role."""
    system = "\n\n".join(m.content for m in messages if m.role == "system" and m.content)
    rest = [m for m in messages if m.role != "system"]
    if not system:
        return rest
    for i, message in enumerate(rest):
        if message.role == "user":
            rest[i] = ChatMessage("user", f"{system}\n\n{message.content}")
            return rest
    return [ChatMessage("user", system), *rest]


def render_prompt(
    template: ChatTemplate,
    messages: Sequence[ChatMessage],
    *,
    bos_token: str,
    eos_token: str,
    cancelled: Callable[[], bool] | None = None,
    seconds: float = TIME_BUDGET_S,
) -> str:
    """Render a conversation into the prompt text the model continues.

    Args:
        template: the chat template.
        messages: the conversation.
        bos_token, eos_token: the model's special tokens as text.
        cancelled: polled while rendering; when it returns True the render stops.
        seconds: the time budget.

    Raises:
        TemplateRenderError: the template rejects the conversation (e.g. roles that do not
            alternate) or fails on it.
        TemplateBudgetError: the template took too long or wrote too much.
        TemplateSyntaxBrokenError: the template does not parse.
        TemplateCancelledError: ``cancelled`` said stop.
    """
    turns = list(messages) if template.has_system_role else fold_system_prompt(messages)
    if template.llama_builtin:
        from mixdesk.core.llama_templates import apply_builtin

        return apply_builtin(template.llama_builtin, [(m.role, m.content) for m in turns])
    budget = _Budget(seconds=seconds, size=SIZE_BUDGET, stop=cancelled)
    try:
        return _render_raw(
            template.text,
            [{"role": m.role, "content": m.content} for m in turns],
            bos=bos_token,
            eos=eos_token,
            add_gen=True,
            budget=budget,
        )
    except _Stopped:
        raise TemplateCancelledError("Stopped while the prompt was being prepared.") from None
    except _OverBudget as err:
        raise TemplateBudgetError(
            f"MixDesk stopped the model's chat template because it {err} for this conversation "
            "(the template is broken or hostile; use another copy of the model)."
        ) from None
    except TemplateSyntaxError as err:
        raise TemplateSyntaxBrokenError(_syntax_message(err)) from None
    except TemplateError as err:
        raise TemplateRenderError(
            f"The model's chat template rejected this conversation: {err}."
        ) from None
    except RecursionError:
        raise TemplateBudgetError(
            "The model's chat template calls itself without end; use another copy of the model."
        ) from None
    except Exception as err:  # noqa: BLE001 - a foreign template can fail in any way
        raise TemplateRenderError(
            f"The model's chat template failed on this conversation ({type(err).__name__}: {err})."
        ) from None
