"""Secrets stay where they belong: the Hub token, endpoint keys, logs and private files.

A real HTTP server on 127.0.0.1 plays an OpenAI-compatible endpoint and records the headers
of every request it gets; the commands run as real subprocesses.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest

from mixdesk import paths
from mixdesk.core.chat.template import ChatMessage
from mixdesk.core.workspace.chat_store import ChatStore
from mixdesk.core.workspace.endpoints import Endpoint, may_receive_hub_token, remote_chat
from mixdesk.core.workspace.settings import Settings, endpoint_keys_path, save_endpoint_key

HUB_TOKEN = "hf_saved_hub_token_that_must_not_leak"  # noqa: S105 - a test value


class Recorder:
    """An OpenAI-compatible endpoint on 127.0.0.1 that remembers each request's headers."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: object) -> None:
                pass

            def do_GET(self) -> None:
                recorder.requests.append(("GET", self.path, dict(self.headers)))
                body = json.dumps({"data": [{"id": "remote", "owned_by": "someone"}]}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                self.rfile.read(length)
                recorder.requests.append(("POST", self.path, dict(self.headers)))
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.end_headers()
                for piece in ("Hello", " there"):
                    chunk = {
                        "id": "1",
                        "object": "chat.completion.chunk",
                        "created": 0,
                        "model": "remote",
                        "system_fingerprint": "",
                        "choices": [{"index": 0, "delta": {"role": "assistant", "content": piece}}],
                    }
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def authorizations(self) -> list[str | None]:
        """The Authorization header of each request (None where there was none)."""
        return [
            next((v for k, v in headers.items() if k.lower() == "authorization"), None)
            for _method, _path, headers in self.requests
        ]


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    thread = threading.Thread(target=rec.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        rec.server.shutdown()
        rec.server.server_close()


@pytest.fixture
def hub_token(monkeypatch: pytest.MonkeyPatch) -> str:
    """A saved Hugging Face token, as `HF_TOKEN` gives it."""
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    return HUB_TOKEN


def mixdesk(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mixdesk", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


# -- 1. The Hub token goes to the Hub only ----------------------------------------------------


def test_hub_token_never_reaches_another_endpoint(recorder: Recorder, hub_token: str) -> None:
    stream = remote_chat(Endpoint(url=recorder.url), [ChatMessage("user", "hi")])
    assert stream.wait().text == "Hello there"
    assert [p for _m, p, _h in recorder.requests] == ["/v1/models", "/v1/chat/completions"]
    assert recorder.authorizations() == [None, None]

    recorder.requests.clear()
    endpoint = Endpoint(url=recorder.url, api_key="its-own-key")
    remote_chat(endpoint, [ChatMessage("user", "hi")]).wait()
    assert recorder.authorizations() == ["Bearer its-own-key"]  # the kind is known by now


def test_chat_endpoint_command_sends_no_hub_token(recorder: Recorder, hub_token: str) -> None:
    done = mixdesk("chat", "--endpoint", recorder.url, "--prompt", "hi")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Hello there"
    assert recorder.requests
    assert recorder.authorizations() == [None] * len(recorder.requests)
    assert hub_token not in json.dumps(recorder.requests)


def test_the_hub_itself_gets_the_token(
    recorder: Recorder, hub_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hf_constants, "ENDPOINT", recorder.url)  # a private Hub (HF_ENDPOINT)
    remote_chat(Endpoint(url=recorder.url, kind="openai"), [ChatMessage("user", "hi")]).wait()
    assert recorder.authorizations() == [f"Bearer {hub_token}"]
    assert may_receive_hub_token("https://router.huggingface.co/v1")
    assert may_receive_hub_token("https://abc123.us-east-1.aws.endpoints.huggingface.cloud/v1")
    for other in (
        "http://huggingface.co/v1",  # not over https
        "https://huggingface.co.example.com/v1",
        "https://nothuggingface.co/v1",
        "http://127.0.0.1:8080/v1",
    ):
        assert not may_receive_hub_token(other), other


# -- 2. Keys and prompts stay out of logs and command lines; private files ----------------------


def test_keys_from_environment_key_file_or_saved(recorder: Recorder, tmp_path: Path) -> None:
    env = {**os.environ, "MIXDESK_API_KEY": "key-from-env"}
    assert mixdesk("chat", "--endpoint", recorder.url, "--prompt", "hi", env=env).returncode == 0
    key_file = tmp_path / "key.txt"
    key_file.write_text("key-from-file\n")
    args = ("chat", "--endpoint", recorder.url, "--prompt", "hi", "--api-key-file", str(key_file))
    assert mixdesk(*args).returncode == 0
    save_endpoint_key(recorder.url + "/v1", "key-saved-in-the-app")
    assert mixdesk("chat", "--endpoint", recorder.url, "--prompt", "hi").returncode == 0
    assert set(recorder.authorizations()) == {
        "Bearer key-from-env",
        "Bearer key-from-file",
        "Bearer key-saved-in-the-app",
    }

    key_file.write_text("\n")
    empty = mixdesk(*args)
    assert empty.returncode == 1
    assert f"mixdesk: The key file {key_file} is empty; put the API key on its first line." in (
        empty.stderr
    )


def test_log_has_no_key_or_prompt_and_is_private() -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: nothing answers there
    port = dead.getsockname()[1]
    try:
        done = mixdesk(
            "chat",
            "--endpoint",
            f"http://127.0.0.1:{port}",
            "--api-key",
            "very-secret-key",
            "--prompt",
            "my private question",
        )
    finally:
        dead.close()
    assert done.returncode == 1
    assert "nothing answers there" in done.stderr
    log_file = paths.log_dir() / "mixdesk.log"
    text = log_file.read_text()
    assert "chat" in text  # the command is logged ...
    assert "very-secret-key" not in text  # ... without its key
    assert "my private question" not in text
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(log_file.parent.stat().st_mode) == 0o700


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The common umask 022, under which new files are readable by everyone unless asked."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("open_umask")
def test_private_files_and_folders() -> None:
    store = ChatStore()
    store.create("a private conversation")
    Settings().save()
    save_endpoint_key("http://gpu-box:8080/v1", "k")
    for path in (store.path, Settings.path(), endpoint_keys_path()):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700, path.parent
    store.close()


@pytest.mark.usefixtures("open_umask")
def test_a_readable_key_file_is_tightened_and_replaced_atomically() -> None:
    path = endpoint_keys_path()
    path.parent.mkdir(parents=True)
    path.parent.chmod(0o755)
    path.write_text(json.dumps({"http://old/v1": "old-key"}))
    path.chmod(0o644)
    before = path.stat().st_ino
    save_endpoint_key("http://new/v1", "new-key")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.stat().st_ino != before  # a new file took its place, not a rewrite in place
    assert json.loads(path.read_text()) == {"http://old/v1": "old-key", "http://new/v1": "new-key"}
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary left
