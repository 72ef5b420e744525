"""How a rendered chat prompt becomes tokens: llama.cpp's own rule, in one place.

llama.cpp's server renders a conversation with the chat template, then tokenizes the text
with ``add_special`` and ``parse_special`` (``tokenize_input_prompts(..., true, true)``): the
vocabulary's BOS is added when ``llama_vocab_get_add_bos`` says so, its EOS when
``llama_vocab_get_add_eos`` does (SEP/CLS for the vocabularies that use them, inside
``llama_tokenize``), and special texts such as ``<start_of_turn>`` or ``[INST]`` become their
tokens. A template that writes ``{{ bos_token }}`` itself would then give two BOS, so
llama.cpp first removes a leading BOS text (and a trailing EOS text) from the rendered prompt
when the vocabulary adds that token itself (``common/chat.cpp``). The result is exactly one BOS
whether the template writes it or not, and none for a vocabulary that wants none.

The engine (chat in the window and in ``mixdesk chat``, Measure) and ``mixdesk serve`` both
prepare prompts with :func:`for_tokenizer` and tokenize with ``add_special`` and
``parse_special`` on; the parity tests compare them with llama.cpp's C API token for token.

Imports llama_cpp only inside the functions that read a vocabulary: only the engine and
server processes call those.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SpecialTokens:
    """A vocabulary's BOS and EOS texts and whether llama.cpp adds them when tokenizing."""

    bos: str
    eos: str
    add_bos: bool
    add_eos: bool


def for_tokenizer(prompt: str, special: SpecialTokens) -> str:
    """The rendered ``prompt`` as llama.cpp hands it to the tokenizer (``add_special`` on):
    without a leading BOS text when the vocabulary adds BOS itself, and without a trailing
    EOS text when it adds EOS itself."""
    if special.add_bos and special.bos and prompt.startswith(special.bos):
        prompt = prompt[len(special.bos) :]
    if special.add_eos and special.eos and prompt.endswith(special.eos):
        prompt = prompt[: -len(special.eos)]
    return prompt


def special_tokens(vocab: Any) -> SpecialTokens:
    """Read ``vocab``'s (a ``llama_vocab`` pointer) BOS/EOS texts and flags from llama.cpp."""
    import llama_cpp as lc

    def text(token: int) -> str:
        if token < 0:
            return ""
        raw: bytes | None = lc.llama_vocab_get_text(vocab, token)
        return (raw or b"").decode("utf-8", errors="replace")

    return SpecialTokens(
        bos=text(int(lc.llama_vocab_bos(vocab))),
        eos=text(int(lc.llama_vocab_eos(vocab))),
        add_bos=bool(lc.llama_vocab_get_add_bos(vocab)),
        add_eos=bool(lc.llama_vocab_get_add_eos(vocab)),
    )


def tokenize(vocab: Any, text: str) -> list[int]:
    """Tokenize a prepared prompt (:func:`for_tokenizer`) as llama.cpp's server does:
    ``add_special`` (BOS/EOS as the vocabulary says) and ``parse_special`` on."""
    import llama_cpp as lc

    data = text.encode("utf-8")
    room = len(data) + 8
    while True:
        buf = (lc.llama_token * room)()
        n = int(lc.llama_tokenize(vocab, data, len(data), buf, room, True, True))
        if n >= 0:
            return list(buf[:n])
        room = -n  # llama.cpp says how many tokens it needs


@dataclass(frozen=True)
class VocabFile:
    """What a model file says about its chat: all metadata (strings) and its special tokens."""

    metadata: dict[str, str]
    special: SpecialTokens


@contextmanager
def _vocab_only_model(path: str) -> Iterator[Any]:
    import llama_cpp as lc

    params = lc.llama_model_default_params()
    params.vocab_only = True
    model = lc.llama_model_load_from_file(path.encode("utf-8"), params)
    if not model:
        raise ValueError(f"llama.cpp could not read the vocabulary of {path}")
    try:
        yield model
    finally:
        lc.llama_model_free(model)


def read_vocab_file(path: str) -> VocabFile:
    """Load only the vocabulary of the model at ``path`` (no weights) and return its metadata
    and special tokens, exactly as llama.cpp reads them when it loads the model.

    Raises:
        ValueError: llama.cpp cannot read the file.
    """
    import llama_cpp as lc

    with _vocab_only_model(path) as model:
        metadata: dict[str, str] = {}
        for i in range(int(lc.llama_model_meta_count(model))):
            key = _meta_string(lc.llama_model_meta_key_by_index, model, i)
            value = _meta_string(lc.llama_model_meta_val_str_by_index, model, i)
            if key is not None and value is not None:
                metadata[key] = value
        return VocabFile(metadata, special_tokens(lc.llama_model_get_vocab(model)))


def _meta_string(read: Any, model: Any, index: int) -> str | None:
    """One metadata key or value (``snprintf`` style: asked again when it did not fit)."""
    size = 1024
    for _ in range(2):
        buf = ctypes.create_string_buffer(size)
        n = int(read(model, index, buf, size))
        if n < 0:
            return None
        if n < size:
            return buf.value.decode("utf-8", errors="replace")
        size = n + 1
    return None
