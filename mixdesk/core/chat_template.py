"""Chat templates: pick the right one for a model and turn a conversation into a prompt.

The template normally comes from the GGUF (``tokenizer.chat_template``). Files from 2023
often have none; for a Mistral or Mixtral model MixDesk then uses Mixtral's own ``[INST]``
format. Templates without a system role (Mixtral's) get the system prompt folded into the
first user turn instead of an error.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import BaseLoader, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

log = logging.getLogger(__name__)

#: The chat template of mistralai/Mixtral-8x7B-Instruct-v0.1 (no system role).
MIXTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}{% endfor %}"
)

#: A plain ChatML template for models that carry no template and are not Mistral-family.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_SYSTEM_PROBE = "\x00mixdesk-system-probe\x00"


@dataclass(frozen=True)
class ChatMessage:
    """One turn of a conversation."""

    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(frozen=True)
class ChatTemplate:
    """A chat template and what MixDesk knows about it."""

    text: str
    source: str  # "gguf", "mixtral (built in)" or "chatml (built in)"
    has_system_role: bool


class TemplateRenderError(Exception):
    """The template could not render this conversation."""


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _environment() -> ImmutableSandboxedEnvironment:
    # The template comes from a downloaded file: render it sandboxed, as llama-cpp-python does.
    env = ImmutableSandboxedEnvironment(loader=BaseLoader(), trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    return env


def _render_raw(
    text: str, messages: Sequence[Mapping[str, str]], *, bos: str, eos: str, add_gen: bool
) -> str:
    template = _environment().from_string(text)
    context: dict[str, Any] = {
        "messages": [dict(m) for m in messages],
        "bos_token": bos,
        "eos_token": eos,
        "add_generation_prompt": add_gen,
    }
    return template.render(**context)


def template_has_system_role(text: str) -> bool:
    """Return whether ``text`` renders a system message (rather than raising or dropping it)."""
    probe = [{"role": "system", "content": _SYSTEM_PROBE}, {"role": "user", "content": "hi"}]
    try:
        rendered = _render_raw(text, probe, bos="<s>", eos="</s>", add_gen=True)
    except Exception:  # noqa: BLE001 - any failure of a foreign template means "no system role"
        return False
    return _SYSTEM_PROBE in rendered


def is_mistral_family(metadata: Mapping[str, str]) -> bool:
    """Return whether GGUF metadata describes a Mistral or Mixtral model."""
    name = (metadata.get("general.name", "") + " " + metadata.get("general.basename", "")).lower()
    if "mistral" in name or "mixtral" in name:
        return True
    arch = metadata.get("general.architecture", "")
    # A llama-architecture mixture of experts is how Mixtral is stored in GGUF.
    return arch == "llama" and int(metadata.get("llama.expert_count", "0") or 0) > 0


def select_template(metadata: Mapping[str, str]) -> ChatTemplate:
    """Choose the chat template for a model from its GGUF metadata.

    Args:
        metadata: the GGUF key/value metadata as strings.

    Returns:
        The GGUF's own template when it has one; Mixtral's for a Mistral-family model
        without one; ChatML otherwise.
    """
    text = metadata.get("tokenizer.chat_template")
    if text:
        return ChatTemplate(
            text=text, source="gguf", has_system_role=template_has_system_role(text)
        )
    if is_mistral_family(metadata):
        return ChatTemplate(
            text=MIXTRAL_TEMPLATE, source="mixtral (built in)", has_system_role=False
        )
    log.warning("model has no chat template and is not Mistral-family; using ChatML")
    return ChatTemplate(text=CHATML_TEMPLATE, source="chatml (built in)", has_system_role=True)


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
    template: ChatTemplate, messages: Sequence[ChatMessage], *, bos_token: str, eos_token: str
) -> str:
    """Render a conversation into the prompt text the model continues.

    Raises:
        TemplateRenderError: the template rejects the conversation (e.g. roles that do not
            alternate).
    """
    turns = list(messages) if template.has_system_role else fold_system_prompt(messages)
    try:
        return _render_raw(
            template.text,
            [{"role": m.role, "content": m.content} for m in turns],
            bos=bos_token,
            eos=eos_token,
            add_gen=True,
        )
    except TemplateError as err:
        raise TemplateRenderError(str(err)) from err
