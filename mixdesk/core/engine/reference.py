"""llama.cpp's own path from a conversation to greedy tokens, written on its C API alone.

This is the yardstick MixDesk's answers are measured against (the parity tests, and the
doctor's check that a broken install or a changed llama-cpp-python shows up as one sentence).
It shares nothing with the engine's prompt code: it imports nothing from MixDesk (a test
holds it to that), renders a GGUF Jinja template with plain Jinja as llama-cpp-python and
Transformers do or a built-in one with ``llama_chat_apply_template``, removes a leading BOS
text and a trailing EOS text when the vocabulary adds them itself (``common/chat.cpp``),
tokenizes with ``add_special`` and ``parse_special`` as llama.cpp's server does, then decodes
with llama.cpp's greedy sampler.

Random weights are fine for a comparison: greedy decoding is deterministic whatever the
weights, so the same prompt tokens must give the same generated tokens.

Run as ``python -m mixdesk.core.engine.reference`` with a JSON request on stdin, it prints
the result as JSON (the doctor runs it in a child process: llama.cpp may abort).
"""

from __future__ import annotations

import ctypes
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import llama_cpp as lc


@dataclass(frozen=True)
class ReferenceAnswer:
    """What llama.cpp's own path makes of a conversation."""

    prompt: str  # the text handed to the tokenizer
    prompt_tokens: list[int]
    tokens: list[int]  # greedy, end-of-text included when it came
    text: str  # the generated tokens as text (end-of-text not rendered)


def _text(vocab: Any, token: int) -> str:
    if token < 0:
        return ""
    raw: bytes | None = lc.llama_vocab_get_text(vocab, token)
    return (raw or b"").decode("utf-8", errors="replace")


def _render_builtin(name: str, messages: Sequence[tuple[str, str]]) -> str:
    encoded = [(role.encode(), content.encode()) for role, content in messages]
    chat = (lc.llama_chat_message * max(len(encoded), 1))()
    for i, (role, content) in enumerate(encoded):
        chat[i].role = role
        chat[i].content = content
    size = int(lc.llama_chat_apply_template(name.encode(), chat, len(encoded), True, None, 0))
    if size < 0:
        raise ValueError(f"llama.cpp has no built-in chat template {name!r}")
    buf = ctypes.create_string_buffer(size + 1)
    lc.llama_chat_apply_template(name.encode(), chat, len(encoded), True, buf, size + 1)
    return buf.raw[:size].decode("utf-8")


def _render_jinja(template: str, messages: Sequence[tuple[str, str]], bos: str, eos: str) -> str:
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(
        messages=[{"role": r, "content": c} for r, c in messages],
        bos_token=bos,
        eos_token=eos,
        add_generation_prompt=True,
        raise_exception=raise_exception,
    )


def _tokenize(vocab: Any, text: str) -> list[int]:
    data = text.encode("utf-8")
    room = len(data) + 8
    buf = (lc.llama_token * room)()
    n = int(lc.llama_tokenize(vocab, data, len(data), buf, room, True, True))
    if n < 0:
        room = -n
        buf = (lc.llama_token * room)()
        n = int(lc.llama_tokenize(vocab, data, len(data), buf, room, True, True))
    return list(buf[:n])


def _piece(vocab: Any, token: int) -> bytes:
    buf = ctypes.create_string_buffer(256)
    n = int(lc.llama_token_to_piece(vocab, token, buf, len(buf), 0, False))
    return buf.raw[: max(n, 0)]


def _greedy(model: Any, tokens: list[int], n_predict: int, n_ctx: int, threads: int) -> list[int]:
    params = lc.llama_context_default_params()
    params.n_ctx = n_ctx
    params.n_batch = max(512, len(tokens))
    params.n_ubatch = params.n_batch
    params.n_threads = params.n_threads_batch = threads
    params.flash_attn_type = 0  # off, as the engine loads by default
    ctx = lc.llama_init_from_model(model, params)
    if not ctx:
        raise ValueError("llama.cpp could not make a context")
    vocab = lc.llama_model_get_vocab(model)
    sampler = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
    lc.llama_sampler_chain_add(sampler, lc.llama_sampler_init_greedy())
    out: list[int] = []
    try:
        batch_tokens = (lc.llama_token * len(tokens))(*tokens)
        if lc.llama_decode(ctx, lc.llama_batch_get_one(batch_tokens, len(tokens))) != 0:
            raise ValueError("llama_decode failed on the prompt")
        for _ in range(n_predict):
            token = int(lc.llama_sampler_sample(sampler, ctx, -1))
            out.append(token)
            if lc.llama_vocab_is_eog(vocab, token):
                break
            one = (lc.llama_token * 1)(token)
            if lc.llama_decode(ctx, lc.llama_batch_get_one(one, 1)) != 0:
                raise ValueError("llama_decode failed on a generated token")
    finally:
        lc.llama_sampler_free(sampler)
        lc.llama_free(ctx)
    return out


def answer(
    model_path: str,
    messages: Sequence[tuple[str, str]],
    *,
    template: str | None = None,
    builtin: str | None = None,
    n_predict: int = 32,
    n_ctx: int = 512,
    threads: int = 2,
) -> ReferenceAnswer:
    """Greedy answer of llama.cpp's own path to ``messages`` (role, content).

    Args:
        model_path: a GGUF file.
        messages: the conversation, rendered as given (no system prompt folding).
        template: a Jinja chat template; or
        builtin: the name of one of llama.cpp's built-in templates.
        n_predict: tokens to generate at most.
    """
    lc.llama_backend_init()
    params = lc.llama_model_default_params()
    params.n_gpu_layers = 0
    model = lc.llama_model_load_from_file(model_path.encode(), params)
    if not model:
        raise ValueError(f"llama.cpp could not load {model_path}")
    try:
        vocab = lc.llama_model_get_vocab(model)
        bos, eos = _text(vocab, lc.llama_vocab_bos(vocab)), _text(vocab, lc.llama_vocab_eos(vocab))
        prompt = (
            _render_builtin(builtin, messages)
            if builtin is not None
            else _render_jinja(template or "", messages, bos, eos)
        )
        # common/chat.cpp: the tokenizer adds BOS/EOS itself when the vocabulary says so
        if lc.llama_vocab_get_add_bos(vocab) and bos and prompt.startswith(bos):
            prompt = prompt[len(bos) :]
        if lc.llama_vocab_get_add_eos(vocab) and eos and prompt.endswith(eos):
            prompt = prompt[: -len(eos)]
        prompt_tokens = _tokenize(vocab, prompt)
        tokens = _greedy(model, prompt_tokens, n_predict, n_ctx, threads)
        text = b"".join(
            _piece(vocab, t) for t in tokens if not lc.llama_vocab_is_eog(vocab, t)
        ).decode("utf-8", errors="replace")
        return ReferenceAnswer(prompt, prompt_tokens, tokens, text)
    finally:
        lc.llama_model_free(model)


def main() -> int:
    """Read a request (JSON: model_path, messages, template or builtin, n_predict) from stdin;
    print the :class:`ReferenceAnswer` as JSON."""
    request = json.loads(sys.stdin.read())
    result = answer(
        request["model_path"],
        [(str(r), str(c)) for r, c in request["messages"]],
        template=request.get("template"),
        builtin=request.get("builtin"),
        n_predict=int(request.get("n_predict", 32)),
        n_ctx=int(request.get("n_ctx", 512)),
    )
    sys.stdout.write(json.dumps(asdict(result)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
