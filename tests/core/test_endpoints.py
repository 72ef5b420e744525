"""Remote endpoints and ``mixdesk serve``: a real OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import InferenceClient

from mixdesk.core.chat.template import ChatMessage
from mixdesk.core.engine import LoadConfig, SamplingParams
from mixdesk.core.machine.net import is_loopback
from mixdesk.core.serving.serve import ServeConfig, ServerProcess, start_server
from mixdesk.core.workspace.endpoints import (
    Endpoint,
    EndpointError,
    detect_kind,
    normalize_url,
    remote_chat,
)
from mixdesk.errors import EngineCrashedError, MixdeskError

KEY = "sekrit-test-key"
HELLO = [ChatMessage("system", "Be brief."), ChatMessage("user", "Hello there")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(models: dict[str, Path]) -> Iterator[ServerProcess]:
    """``mixdesk serve``'s server process with the tiny Mixtral model (chat template without a system role)."""
    proc = start_server(
        ServeConfig(
            LoadConfig(str(models["q4_k_m"]), n_ctx=1024, n_threads=2),
            port=free_port(),
            api_key=KEY,
            model_alias="tiny",
        )
    )
    try:
        yield proc
    finally:
        proc.stop()


def endpoint(server: ServerProcess, **kw: object) -> Endpoint:
    return Endpoint(url=server.url, api_key=KEY, kind="llama.cpp", **kw)  # type: ignore[arg-type]


def test_inference_client_talks_to_mixdesk_serve(server: ServerProcess) -> None:
    client = InferenceClient(base_url=server.url, api_key=KEY)
    out = client.chat_completion(
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        max_tokens=8,
        seed=1,
    )
    assert out.choices[0].message.content
    assert out.usage.completion_tokens == 8
    pieces = [
        c.choices[0].delta.content
        for c in client.chat_completion(
            messages=[{"role": "user", "content": "hi"}], max_tokens=8, stream=True
        )
        if c.choices
    ]
    assert len([p for p in pieces if p]) >= 4


def test_streaming_with_live_stats(server: ServerProcess) -> None:
    assert detect_kind(server.url, KEY) == "llama.cpp"
    stream = remote_chat(endpoint(server), HELLO, SamplingParams(max_tokens=32, seed=2))
    deltas = list(stream)
    done = stream.result
    assert done is not None
    assert done.finish_reason == "length"
    assert len(deltas) >= 10
    assert "".join(d.text for d in deltas) == done.text
    assert done.stats.eval_tokens == 32
    assert done.stats.eval_tps > 0
    assert done.stats.ttft_s > 0
    assert deltas[-1].stats.eval_tokens == len(deltas)


def test_stop_and_the_server_stays_usable(server: ServerProcess) -> None:
    stream = remote_chat(endpoint(server), HELLO, SamplingParams(max_tokens=800))
    for i, _ in enumerate(stream):
        if i == 3:
            stream.cancel()
    assert stream.result is not None
    assert stream.result.finish_reason == "cancelled"
    assert 3 <= stream.result.stats.eval_tokens < 800
    again = remote_chat(endpoint(server), HELLO, SamplingParams(max_tokens=5)).wait()
    assert again.stats.eval_tokens == 5


def test_wrong_key_and_bad_urls(server: ServerProcess) -> None:
    with pytest.raises(EndpointError, match=r"refused the API key \(HTTP 401\)"):
        remote_chat(Endpoint(url=server.url, api_key="wrong"), HELLO).wait()
    with pytest.raises(EndpointError, match="nothing answers there"):
        remote_chat(Endpoint(url=f"http://127.0.0.1:{free_port()}"), HELLO).wait()
    with pytest.raises(EndpointError, match="not an endpoint address"):
        normalize_url("ftp://example")
    with pytest.raises(EndpointError, match="no OpenAI-compatible chat API"):
        remote_chat(
            Endpoint(url=server.url.removesuffix("/v1") + "/nothing/v1", api_key=KEY), HELLO
        ).wait()


def test_server_killed_mid_stream(server: ServerProcess) -> None:
    stream = remote_chat(endpoint(server), HELLO, SamplingParams(max_tokens=0))
    next(stream)
    os.kill(server.proc.pid, signal.SIGKILL)
    with pytest.raises(EndpointError, match="broke in the middle of the answer"):
        stream.wait()
    assert stream.text  # what arrived is kept


def test_chat_endpoint_command(server: ServerProcess) -> None:
    import json

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mixdesk",
            "chat",
            "--endpoint",
            server.url,
            "--api-key",
            KEY,
            "--prompt",
            "hi",
            "--system",
            "Be brief.",
            "--max-tokens",
            "6",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["stats"]["eval_tokens"] == 6
    assert data["endpoint"] == server.url
    bad = subprocess.run(
        [sys.executable, "-m", "mixdesk", "chat", "--endpoint", server.url, "--prompt", "hi"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 1
    assert "refused the API key" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_serve_command_warns_off_loopback(models: dict[str, Path]) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mixdesk",
            "serve",
            str(models["q2_k"]),
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
            "--ctx",
            "512",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines = [proc.stderr.readline(), proc.stderr.readline()]
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=30)[1]
    assert "server stopped" in rest
    assert "reachable from other machines without a key" in lines[0]
    assert f"serving tiny.Q2_K at http://127.0.0.1:{port}/v1" in lines[1]
    assert is_loopback("127.0.0.1") and is_loopback("::1") and not is_loopback("0.0.0.0")


def test_serving_a_model_that_aborts_llama_cpp(models: dict[str, Path]) -> None:
    with pytest.raises(EngineCrashedError, match=r"llama\.cpp aborted"):
        start_server(
            ServeConfig(LoadConfig(str(models["duplicate_vocab"]), n_ctx=256), port=free_port())
        )


def test_port_in_use(server: ServerProcess, models: dict[str, Path]) -> None:
    with pytest.raises(MixdeskError, match="already in use"):
        start_server(ServeConfig(LoadConfig(str(models["q2_k"])), port=server.config.port))
