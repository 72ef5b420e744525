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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from jinja2 import TemplateError, TemplateSyntaxError

from mixdesk.core.chat.sandbox import (
    SIZE_BUDGET,
    TIME_BUDGET_S,
    Budget,
    BudgetedSandbox,
    OverBudget,
    Stopped,
    render_raw,
)
from mixdesk.core.gguf.templates import CHATML_TEMPLATE, MIXTRAL_TEMPLATE
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


def _probe_system_role(text: str, *, seconds: float) -> bool:
    """Render a system message with ``text``; whether it shows in the prompt.

    Raises:
        TemplateSyntaxError: the template does not parse.
        OverBudget: it cannot render even this two-line conversation within its budget.
    """
    probe = [{"role": "system", "content": _SYSTEM_PROBE}, {"role": "user", "content": "hi"}]
    budget = Budget(seconds=seconds, size=SIZE_BUDGET, stop=None)
    try:
        rendered = render_raw(text, probe, bos="<s>", eos="</s>", add_gen=True, budget=budget)
    except (TemplateSyntaxError, OverBudget):
        raise
    except Exception:  # noqa: BLE001 - any other failure of a foreign template: "no system role"
        return False
    return _SYSTEM_PROBE in rendered


def template_has_system_role(text: str) -> bool:
    """Return whether ``text`` renders a system message (rather than raising or dropping it)."""
    try:
        return _probe_system_role(text, seconds=TIME_BUDGET_S)
    except (TemplateSyntaxError, OverBudget):
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
    except OverBudget as err:
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
        from mixdesk.core.chat.llama_templates import apply_builtin

        return apply_builtin(template.llama_builtin, [(m.role, m.content) for m in turns])
    budget = Budget(seconds=seconds, size=SIZE_BUDGET, stop=cancelled)
    try:
        return render_raw(
            template.text,
            [{"role": m.role, "content": m.content} for m in turns],
            bos=bos_token,
            eos=eos_token,
            add_gen=True,
            budget=budget,
        )
    except Stopped:
        raise TemplateCancelledError("Stopped while the prompt was being prepared.") from None
    except OverBudget as err:
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
