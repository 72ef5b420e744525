"""``mixdesk serve`` gives the same tokens as ``mixdesk chat`` for the same conversation.

A real llama-cpp-python server process on 127.0.0.1 and the real engine, greedy, on a model
whose prompt needs the BOS rule (a Gemma base model without a template: llama.cpp's built-in
``gemma`` template, whose text has no BOS) and on one whose Jinja template writes BOS itself
(where adding another would double it). Before the rule, serve tokenized the rendered text
without BOS (``added_special=True``) and picked its template from four hand-picked keys.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from mixdesk.core.chat.template import ChatMessage
from mixdesk.core.engine import Engine, LoadConfig, SamplingParams, reference
from mixdesk.core.gguf.synthetic import TINY
from mixdesk.core.serving.serve import ServeConfig, start_server
from tests.helpers.model_factory import GEMMA_BASE, make_model
from tests.helpers.net import free_port

CONVERSATION = [
    ChatMessage("system", "You answer in one word."),
    ChatMessage("user", "What is the capital of France?"),
    ChatMessage("assistant", "Paris."),
    ChatMessage("user", "And of Italy?"),
]
N_CTX = 512


def _served_answer(url: str) -> dict[str, object]:
    body = json.dumps(
        {
            "model": "parity",
            "messages": [{"role": m.role, "content": m.content} for m in CONVERSATION],
            "temperature": 0,
            "repeat_penalty": 1.0,
            "max_tokens": 24,
            "seed": 0,
        }
    ).encode()
    req = urllib.request.Request(  # noqa: S310 - http on 127.0.0.1
        f"{url}/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as response:  # noqa: S310
        result: dict[str, object] = json.loads(response.read())
    return result


@pytest.mark.parametrize("spec", [GEMMA_BASE, TINY], ids=["builtin-gemma", "jinja-with-bos"])
def test_serve_answers_with_the_engines_tokens(tmp_path: Path, spec: object) -> None:
    model = make_model(tmp_path, spec, name="served")  # type: ignore[arg-type]
    load = LoadConfig(str(model), n_ctx=N_CTX, n_threads=2)
    with Engine(log_dir=tmp_path) as engine:
        engine.load(load)
        stream = engine.chat(
            CONVERSATION,
            SamplingParams(temperature=0.0, repeat_penalty=1.0, max_tokens=24, seed=0),
            report_tokens=True,
        )
        for _ in stream:
            pass
        done = stream.result
    assert done is not None
    assert len(done.token_ids) == 24

    server = start_server(ServeConfig(load=load, port=free_port(), model_alias="parity"))
    try:
        served = _served_answer(server.url)
    finally:
        server.stop()
    usage = served["usage"]
    assert isinstance(usage, dict)
    assert usage["prompt_tokens"] == len(done.prompt_token_ids)
    assert usage["completion_tokens"] == len(done.token_ids)
    choices = served["choices"]
    assert isinstance(choices, list)
    text = choices[0]["message"]["content"]
    assert text.strip() == done.text.strip()
    # and both are llama.cpp's own answer
    ref_turns = [(m.role, m.content) for m in CONVERSATION]
    if spec is GEMMA_BASE:
        ref = reference.answer(str(model), ref_turns, builtin="gemma", n_predict=24, n_ctx=N_CTX)
        assert list(done.prompt_token_ids) == ref.prompt_tokens
        assert text.strip() == ref.text.strip()
