"""llama.cpp's own built-in chat templates (``llama_chat_apply_template``), for models that
carry no template: the format llama.cpp itself uses for the architecture.

Imports llama_cpp when called: only the engine and the API server processes call it (the
window's process never loads llama.cpp).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

from mixdesk.errors import TemplateRenderError


def builtin_names() -> list[str]:
    """The names of llama.cpp's built-in templates (``llama_chat_builtin_templates``)."""
    import llama_cpp

    count = int(llama_cpp.llama_chat_builtin_templates(None, 0))
    names = (ctypes.c_char_p * count)()
    llama_cpp.llama_chat_builtin_templates(names, count)
    return [n.decode() for n in names if n is not None]


def apply_builtin(name: str, turns: Sequence[tuple[str, str]]) -> str:
    """Render ``turns`` (role, content) with llama.cpp's built-in template ``name``, ending
    with the assistant's turn opened.

    Raises:
        TemplateRenderError: llama.cpp does not know ``name``.
    """
    import llama_cpp

    encoded = [(role.encode(), content.encode()) for role, content in turns]
    chat = (llama_cpp.llama_chat_message * max(len(encoded), 1))()
    for i, (role, content) in enumerate(encoded):  # ``encoded`` keeps the bytes alive
        chat[i].role = role
        chat[i].content = content
    size = int(
        llama_cpp.llama_chat_apply_template(name.encode(), chat, len(encoded), True, None, 0)
    )
    if size < 0:
        raise TemplateRenderError(f"llama.cpp has no built-in chat template named {name!r}.")
    buf = ctypes.create_string_buffer(size + 1)
    llama_cpp.llama_chat_apply_template(name.encode(), chat, len(encoded), True, buf, size + 1)
    return buf.raw[:size].decode("utf-8", errors="replace")
