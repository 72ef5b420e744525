"""What ``mixdesk`` prints: no control characters from model output, GGUF metadata or the
network reach the terminal; a second Ctrl-C ends a chat whose engine does not answer."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mixdesk.core.chat.template import ChatMessage
from mixdesk.core.engine import Engine, LoadConfig, SamplingParams
from tests.helpers import model_factory as mf

#: Retitles the terminal, clears it, rings the bell; 8-bit CSI (``\x9b``) and DEL too.
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x1b[31mEvil\x9b1m model\x7f\x00"
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def mixdesk(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mixdesk", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )


@pytest.fixture(scope="module")
def hostile_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = mf.with_changes(mf.TINY, name=HOSTILE)
    return mf.make_model(tmp_path_factory.mktemp("hostile"), spec, name="hostile")


def test_gguf_metadata_is_printed_without_control_characters(hostile_model: Path) -> None:
    proc = mixdesk("plan", str(hostile_model), "--gpu", "none", "--ram", "8GiB")
    assert proc.returncode == 0, proc.stderr
    assert not CONTROL.search(proc.stdout + proc.stderr)
    assert proc.stdout.startswith("]0;pwned[2J[31mEvil1m model: llama, 4 layers")
    as_json = mixdesk("plan", str(hostile_model), "--gpu", "none", "--ram", "8GiB", "--json")
    assert not CONTROL.search(as_json.stdout.replace("\n", ""))  # escaped, not dropped:
    assert json.loads(as_json.stdout)["profile"]["name"] == HOSTILE


class _Answers(BaseHTTPRequestHandler):
    """An OpenAI-compatible server whose answer is made of escape sequences."""

    def do_GET(self) -> None:
        self._send(200, "application/json", b'{"object": "list", "data": []}')

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        events: list[dict[str, Any]] = [
            {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            for piece in ("\x1b]0;pwned\x07Hello", "\x1b[2J world\x9b31m", "\r\n\tdone\x08")
        ]
        events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
        self._send(200, "text/event-stream", body + b"data: [DONE]\n\n")

    def _send(self, status: int, kind: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def answers() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_model_output_is_printed_without_control_characters(answers: str) -> None:
    proc = mixdesk("chat", "--endpoint", answers, "--prompt", "hi")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "]0;pwnedHello[2J world31m\n\tdone\n"
    assert not CONTROL.search(proc.stderr)


@pytest.mark.timeout(60)
def test_a_second_ctrl_c_ends_a_chat_whose_engine_does_not_answer(
    engine: Engine, models: dict[str, Path]
) -> None:
    from mixdesk.commands.chat import _stream

    engine.load(LoadConfig(str(models["f32"]), n_ctx=512, n_threads=2))
    stream = engine.chat([ChatMessage("user", "Hi")], SamplingParams(max_tokens=0))
    next(stream)  # the answer streams...
    assert engine.pid is not None
    os.kill(engine.pid, signal.SIGSTOP)  # ...then the engine stops answering at all

    def two_ctrl_c() -> None:
        for _ in range(2):
            time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=two_ctrl_c, daemon=True).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            _stream(stream, echo=False)
    finally:
        os.kill(engine.pid, signal.SIGCONT)
