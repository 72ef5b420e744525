"""The engine's decode loop (llama.cpp's C API, driven directly) against llama-cpp-python's.

The engine used to run ``Llama.generate``; it now feeds llama.cpp itself (:mod:`.decoding`)
to drop the Python work around every token. Answers must not change: with the same seed and
sampling settings, the loop chooses exactly the tokens ``Llama.generate`` chooses, for every
branch of the sampler chain (greedy, the seeded distribution with top-k/top-p/min-p and a
repeat penalty, and a negative temperature). Greedy parity with llama.cpp's own path is
tests/core/test_parity.py's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mixdesk.core.engine.protocol import SamplingParams

lc = pytest.importorskip("llama_cpp")

from mixdesk.core.engine import llama_adapter  # noqa: E402
from mixdesk.core.engine.decoding import DecodeError, KvDecoder, SamplerChain  # noqa: E402

PROMPT = [1, *range(40, 70)]
N = 24


@pytest.fixture(scope="module")
def llm(models: dict[str, Path]) -> Iterator[Any]:
    llama = lc.Llama(str(models["q4_k_m"]), n_ctx=256, n_threads=2, n_batch=8, verbose=False)
    yield llama
    llama.close()


def ours(llm: Any, decoder: KvDecoder, sampling: SamplingParams, seed: int) -> list[int]:
    """N tokens from the engine's loop: sample, then feed the token back."""
    ctx = llama_adapter.context_pointer(llm)
    decoder.feed_prompt(PROMPT)
    out: list[int] = []
    n_vocab = llama_adapter.model_handle(llm).n_vocab()
    with SamplerChain(sampling, n_vocab=n_vocab, seed=seed) as chain:
        while True:
            out.append(chain.sample(ctx))
            if len(out) == N:
                return out
            decoder.feed(out[-1])


def theirs(llm: Any, sampling: SamplingParams, seed: int) -> list[int]:
    """N tokens from llama-cpp-python's ``Llama.generate``, as the engine used to run it."""
    llm.reset()
    llm.set_seed(seed)
    out: list[int] = []
    for token in llm.generate(
        PROMPT,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        min_p=sampling.min_p,
        temp=sampling.temperature,
        repeat_penalty=sampling.repeat_penalty,
    ):
        out.append(token)
        if len(out) == N:
            return out
    raise AssertionError("unreachable")


SETTINGS = {
    "greedy": SamplingParams(temperature=0.0, repeat_penalty=1.0),
    "greedy-with-penalty": SamplingParams(temperature=0.0, repeat_penalty=1.5),
    "top-k-p-min-p": SamplingParams(temperature=0.9, top_k=20, top_p=0.9, min_p=0.02),
    "hot-penalised": SamplingParams(
        temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.3
    ),
    "negative-temperature": SamplingParams(temperature=-1.0),
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_the_loop_samples_exactly_as_llama_generate(llm: Any, name: str) -> None:
    sampling = SETTINGS[name]
    expected = theirs(llm, sampling, seed=42)
    decoder = KvDecoder(llama_adapter.context_pointer(llm), n_batch=llm.n_batch)
    decoder.clear()
    assert ours(llm, decoder, sampling, seed=42) == expected
    # the prompt and every token but the last are in the cache, as after Llama.generate
    assert decoder.tokens == PROMPT + expected[:-1]


def test_the_seed_is_what_makes_a_sampled_answer_repeat(llm: Any) -> None:
    """The comparison above can fail: another seed gives another answer."""
    sampling = SETTINGS["hot-penalised"]
    decoder = KvDecoder(llama_adapter.context_pointer(llm), n_batch=llm.n_batch)
    decoder.clear()
    first = ours(llm, decoder, sampling, seed=1)
    assert ours(llm, decoder, sampling, seed=1) == first
    assert ours(llm, decoder, sampling, seed=2) != first


def test_the_cached_prefix_is_kept_and_nothing_stale_stays(llm: Any) -> None:
    decoder = KvDecoder(llama_adapter.context_pointer(llm), n_batch=llm.n_batch)
    decoder.clear()
    greedy = SETTINGS["greedy"]
    fresh = ours(llm, decoder, greedy, seed=0)
    # the same prompt again: only its last token is decoded again (for fresh logits)
    assert decoder.feed_prompt(PROMPT) == 1
    assert decoder.tokens == PROMPT
    # a longer conversation that starts the same: only the new part is decoded
    assert decoder.feed_prompt(PROMPT + fresh[:5]) == 5
    # one that differs after the first token: all but that token, in batches of n_batch
    other = [1, 41, *PROMPT[2:]]
    assert decoder.feed_prompt(other) == len(other) - 1
    assert decoder.tokens == other
    # back to the first prompt through that cache: the answer of a cache that held only the
    # first token (batches split where they split decide the last bits of the logits, so
    # that is the comparison that holds on random weights)
    through_cache = ours(llm, decoder, greedy, seed=0)
    decoder.clear()
    decoder.feed_prompt(PROMPT[:1])
    assert ours(llm, decoder, greedy, seed=0) == through_cache


@pytest.mark.parametrize(
    ("name", "stages"),
    [("greedy", 2), ("negative-temperature", 2), ("top-k-p-min-p", 7)],
)
def test_the_chain_is_llama_cpp_pythons(name: str, stages: int) -> None:
    """Penalties first, then greedy, the plain distribution or the six-stage chain."""
    with SamplerChain(SETTINGS[name], n_vocab=400, seed=0) as chain:
        assert chain.length == stages


def test_an_aborted_prompt_leaves_the_cache_as_it_was(llm: Any) -> None:
    ctx = llama_adapter.context_pointer(llm)
    decoder = KvDecoder(ctx, n_batch=llm.n_batch)
    decoder.clear()
    decoder.feed_prompt(PROMPT[:9])
    stop = lc.ggml_abort_callback(lambda _data: True)
    lc.llama_set_abort_callback(ctx, stop, None)
    try:
        with pytest.raises(DecodeError) as caught:
            decoder.feed_prompt(PROMPT)
    finally:
        lc.llama_set_abort_callback(ctx, lc.ggml_abort_callback(0), None)
    assert caught.value.aborted
    assert decoder.tokens == PROMPT[:9]  # what was there; the aborted batch is forgotten
    after_abort = ours(llm, decoder, SETTINGS["greedy"], seed=0)
    decoder.clear()
    decoder.feed_prompt(PROMPT[:9])
    assert ours(llm, decoder, SETTINGS["greedy"], seed=0) == after_abort
