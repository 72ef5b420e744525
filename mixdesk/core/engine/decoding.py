"""llama.cpp's decode loop, driven directly through its C API: the prompt into the KV cache
(keeping the prefix it already holds), then one token at a time, each chosen by llama.cpp's
own sampler chain.

``Llama.generate`` does the same with Python work around every token (a sampler built per
call, keyword arguments through three layers, a numpy copy of every token, a Python loop
filling the batch); here a token costs one ``llama_sampler_sample`` and one ``llama_decode``
of a batch made once. The semantics are llama-cpp-python's, so answers do not change:
:class:`SamplerChain` builds the chain ``Llama._init_sampler`` builds (penalties over the last
64 tokens, then greedy at temperature 0, else top-k, typical 1.0, top-p, min-p, temperature
and the seeded distribution), prompt tokens are not fed to the penalties, and
:class:`KvDecoder` reuses the cached prefix as ``Llama.generate`` does (at least one token is
decoded again, so the logits are fresh).

Imports llama_cpp: only the engine process uses this module.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import llama_cpp as lc

from mixdesk.core.engine.protocol import SamplingParams

#: llama-cpp-python's ``Llama.last_n_tokens_size``: the window the repeat penalty looks at.
PENALTY_LAST_N = 64
#: ``llama_decode``'s answer when the abort callback stopped it.
DECODE_ABORTED = 2


class DecodeError(RuntimeError):
    """``llama_decode`` failed; ``code`` is its return value."""

    def __init__(self, code: int) -> None:
        super().__init__(f"llama_decode returned {code}")
        self.code = code

    @property
    def aborted(self) -> bool:
        """Whether the abort callback stopped it (a cancel during the prompt)."""
        return self.code == DECODE_ABORTED


class SamplerChain:
    """llama.cpp's sampler chain for ``sampling`` (``Llama._init_sampler``'s chain).

    Args:
        sampling: temperature, top-k, top-p, min-p and repeat penalty.
        n_vocab: the model's vocabulary size (the penalties sampler's table).
        seed: the distribution's seed.
    """

    def __init__(self, sampling: SamplingParams, *, n_vocab: int, seed: int) -> None:
        self._chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        for sampler in self.stages(sampling, n_vocab=n_vocab, seed=seed):
            lc.llama_sampler_chain_add(self._chain, sampler)  # the chain owns it now

    @staticmethod
    def stages(sampling: SamplingParams, *, n_vocab: int, seed: int) -> list[Any]:
        """The samplers, in the chain's order."""
        temp = sampling.temperature
        stages = [
            lc.llama_sampler_init_penalties(
                n_vocab, PENALTY_LAST_N, sampling.repeat_penalty, 0.0, 0.0
            )
        ]
        if temp < 0.0:
            stages.append(lc.llama_sampler_init_dist(seed))
        elif temp == 0.0:
            stages.append(lc.llama_sampler_init_greedy())
        else:
            stages += [
                lc.llama_sampler_init_top_k(sampling.top_k),
                lc.llama_sampler_init_typical(1.0, 1),
                lc.llama_sampler_init_top_p(sampling.top_p, 1),
                lc.llama_sampler_init_min_p(sampling.min_p, 1),
                lc.llama_sampler_init_temp(temp),
                lc.llama_sampler_init_dist(seed),
            ]
        return stages

    @property
    def length(self) -> int:
        """How many samplers the chain holds."""
        return int(lc.llama_sampler_chain_n(self._chain))

    def sample(self, ctx: Any) -> int:
        """Choose the next token from the last logits of ``ctx`` (and remember it for the
        penalties)."""
        return int(lc.llama_sampler_sample(self._chain, ctx, -1))

    def close(self) -> None:
        """Free the chain and its samplers."""
        if self._chain is not None:
            lc.llama_sampler_free(self._chain)
            self._chain = None

    def __enter__(self) -> SamplerChain:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()


class KvDecoder:
    """Feeds one context's sequence 0, and knows which tokens its KV cache holds.

    Args:
        ctx: the ``llama_context *``.
        n_batch: the most tokens one ``llama_decode`` takes (the context's ``n_batch``).
    """

    def __init__(self, ctx: Any, *, n_batch: int) -> None:
        self._ctx = ctx
        self._n_batch = max(1, n_batch)
        self._memory = lc.llama_get_memory(ctx)
        #: The tokens in the KV cache, in order (positions 0..n-1).
        self.tokens: list[int] = []
        self._one = (lc.llama_token * 1)()
        # A batch of one token, made once: positions and the sequence come from llama.cpp
        # (after the last one in the cache), and its logits are the ones sampled.
        self._one_batch = lc.llama_batch_get_one(self._one, 1)

    def feed_prompt(self, prompt: Sequence[int]) -> int:
        """Put ``prompt`` in the KV cache, keeping the longest prefix it already holds
        (but decoding at least the last token again, so its logits are fresh).

        Returns:
            How many tokens were decoded.

        Raises:
            DecodeError: llama.cpp failed, or the abort callback stopped it.
        """
        keep = 0
        for cached, wanted in zip(self.tokens, prompt, strict=False):
            if cached != wanted:
                break
            keep += 1
        keep = min(keep, len(prompt) - 1)
        if not lc.llama_memory_seq_rm(self._memory, -1, keep, -1):
            keep = 0  # this memory cannot drop a suffix: start over
            lc.llama_memory_clear(self._memory, True)
        del self.tokens[keep:]
        rest = list(prompt[keep:])
        for start in range(0, len(rest), self._n_batch):
            chunk = rest[start : start + self._n_batch]
            array = (lc.llama_token * len(chunk))(*chunk)
            self._decode(lc.llama_batch_get_one(array, len(chunk)))
            self.tokens += chunk
        return len(rest)

    def feed(self, token: int) -> None:
        """Decode one token after the cached ones.

        Raises:
            DecodeError: llama.cpp failed.
        """
        self._one[0] = token
        self._decode(self._one_batch)
        self.tokens.append(token)

    def clear(self) -> None:
        """Empty the KV cache."""
        lc.llama_memory_clear(self._memory, True)
        self.tokens = []

    def snapshot(self) -> memoryview:
        """The state of the sequence (llama.cpp's ``llama_state_seq_get_data``): what
        :meth:`restore` puts back for :attr:`tokens`."""
        size = int(lc.llama_state_seq_get_size(self._ctx, 0))
        buffer = (ctypes.c_uint8 * size)()
        written = int(lc.llama_state_seq_get_data(self._ctx, buffer, size, 0))
        if not 0 < written <= size:
            raise RuntimeError(f"llama_state_seq_get_data wrote {written} of {size} bytes")
        return memoryview(buffer).cast("B")[:written]

    def restore(self, tokens: Sequence[int], state: bytearray | memoryview) -> bool:
        """Replace the cache by a state :meth:`snapshot` took when it held ``tokens`` (checked
        by the caller: only MixDesk's own files reach this). False, and an empty cache, when
        llama.cpp refuses it or it does not hold exactly those positions."""
        lc.llama_memory_clear(self._memory, True)
        self.tokens = []
        size = len(state)
        if isinstance(state, memoryview) and state.readonly:
            state = bytearray(state)
        buffer = (ctypes.c_uint8 * size).from_buffer(state)
        read = int(lc.llama_state_seq_set_data(self._ctx, buffer, size, 0))
        if read != size or lc.llama_memory_seq_pos_max(self._memory, 0) != len(tokens) - 1:
            lc.llama_memory_clear(self._memory, True)
            return False
        self.tokens = list(tokens)
        return True

    def _decode(self, batch: Any) -> None:
        code = lc.llama_decode(self._ctx, batch)
        if code:
            # A failed batch may have left some of its tokens in the cache: forget them all.
            lc.llama_memory_seq_rm(self._memory, -1, len(self.tokens), -1)
            raise DecodeError(code)
