"""``mixdesk serve`` is safe to leave running: a real server on 127.0.0.1 with a tiny model.

The key on every route, no cross-origin access unless named, no settings taken from the
environment, the key never on a command line, a server that ends with its parent, only
loopback Host names on loopback, request bodies capped and checked, and the model named by
its alias.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from pydantic import BaseModel

from mixdesk.core.engine import LoadConfig
from mixdesk.core.machine.net import is_loopback
from mixdesk.core.serving.middleware import is_local_network_name, is_loopback_name
from mixdesk.core.serving.security import check_origins, secure_app, url_host
from mixdesk.core.serving.serve import ServeConfig, ServerProcess, start_server
from mixdesk.errors import InvalidArgumentError

KEY = "serve-test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(
    url: str, *, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of one HTTP request."""
    req = urllib.request.Request(url, method=method, headers=headers or {})  # noqa: S310 - http on 127.0.0.1
    try:
        with urllib.request.urlopen(req, timeout=30) as response:  # noqa: S310
            status, head, body = response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        status, head, body = err.code, err.headers, err.read()
    return status, {k.lower(): v for k, v in head.items()}, body


@pytest.fixture
def guarded(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ServerProcess]:
    """A server with a key, started where ``CONFIG_FILE`` names settings without one."""
    hijack = tmp_path / "llama-server.json"
    hijack.write_text(
        json.dumps({"models": [{"model": str(models["q2_k"]), "model_alias": "hijacked"}]})
    )
    monkeypatch.setenv("CONFIG_FILE", str(hijack))
    server = start_server(
        ServeConfig(
            LoadConfig(str(models["q2_k"]), n_ctx=256, n_threads=1),
            port=free_port(),
            api_key=KEY,
            model_alias="tiny",
        )
    )
    try:
        yield server
    finally:
        server.stop()


def test_every_route_needs_the_key(guarded: ServerProcess) -> None:
    root = guarded.url.removesuffix("/v1")
    for path in ("/v1/models", "/docs", "/openapi.json", "/redoc", "/no-such-route"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            status, head, body = request(root + path, headers=headers)
            assert status == 401, (path, headers)
            assert json.loads(body)["error"]["code"] == "invalid_api_key"
            assert head["www-authenticate"] == "Bearer"
    status, _, _ = request(root + "/v1/chat/completions", method="POST")
    assert status == 401
    for path in ("/v1/models", "/openapi.json"):
        status, _, _ = request(root + path, headers={"Authorization": f"Bearer {KEY}"})
        assert status == 200, path


def test_config_file_in_the_environment_changes_nothing(guarded: ServerProcess) -> None:
    status, _, body = request(guarded.url + "/models", headers={"Authorization": f"Bearer {KEY}"})
    assert status == 200
    assert [m["id"] for m in json.loads(body)["data"]] == ["tiny"]  # not "hijacked"
    assert request(guarded.url + "/models")[0] == 401  # the key still counts


def test_no_cross_origin_access_by_default(guarded: ServerProcess) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    status, head, _ = request(
        guarded.url + "/models", headers={**auth, "Origin": "https://a.example"}
    )
    assert status == 200
    assert not any(name.startswith("access-control-") for name in head)
    _, head, _ = request(
        guarded.url + "/chat/completions",
        method="OPTIONS",
        headers={
            "Origin": "https://a.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert not any(name.startswith("access-control-") for name in head)


def test_key_is_not_on_the_server_command_line(guarded: ServerProcess) -> None:
    child = psutil.Process(guarded.proc.pid)
    assert KEY not in " ".join(child.cmdline())
    assert KEY not in json.dumps(child.environ())
    assert "CONFIG_FILE" not in child.environ()


def test_only_loopback_addresses_are_loopback() -> None:
    for host in ("", "0.0.0.0", "::", "192.168.1.10", "fe80::1", "no-such-host.invalid"):
        assert not is_loopback(host), host  # "" listens on every interface
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost", "::ffff:127.0.0.1"):
        assert is_loopback(host), host
    assert url_host("::1") == "[::1]"
    assert url_host("") == "127.0.0.1"


def test_cors_origins_are_checked() -> None:
    assert check_origins(["https://App.example/", "http://localhost:3000"]) == (
        "https://app.example",
        "http://localhost:3000",
    )
    with pytest.raises(InvalidArgumentError, match=r"'app\.example/x' is not a web origin"):
        check_origins(["app.example/x"])


@pytest.fixture
def serve_command(models: dict[str, Path]) -> Iterator[Callable[..., tuple[int, psutil.Popen]]]:
    """Start ``mixdesk serve`` on the tiny model; returns its port and process once it serves."""
    started: list[psutil.Process] = []

    def start(*options: str, env: dict[str, str] | None = None) -> tuple[int, psutil.Popen]:
        port = free_port()
        command = ["serve", str(models["q2_k"]), "--port", str(port), "--ctx", "256"]
        parent = psutil.Popen(
            [sys.executable, "-m", "mixdesk", *command, "--threads", "1", *options],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        started.append(parent)
        line = parent.stderr.readline()
        assert f"at http://127.0.0.1:{port}/v1" in line, line + parent.stderr.read()
        started.extend(parent.children())
        return port, parent

    yield start
    for proc in started:  # only what a failed test left running (a server outliving its parent)
        if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
            proc.kill()
        if isinstance(proc, psutil.Popen):
            proc.wait()
            proc.stderr.close()


def test_serve_ends_when_its_parent_is_killed(serve_command: Callable[..., Any]) -> None:
    port, parent = serve_command()
    (child,) = parent.children()
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(10)
    child.wait(20)  # psutil.TimeoutExpired if the server outlives its parent
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", port), timeout=2),
    ):
        pass  # the port is free again


def test_serve_command_key_from_environment_and_named_origins(
    serve_command: Callable[..., Any],
) -> None:
    allowed = "http://localhost:3000"
    port, parent = serve_command("--cors", allowed, env={**os.environ, "MIXDESK_API_KEY": KEY})
    (child,) = parent.children()
    assert KEY not in " ".join([*parent.cmdline(), *child.cmdline()])
    url = f"http://127.0.0.1:{port}/v1/models"
    assert request(url)[0] == 401  # MIXDESK_API_KEY is the key
    auth = {"Authorization": f"Bearer {KEY}"}
    status, head, _ = request(url, headers={**auth, "Origin": allowed})
    assert status == 200
    assert head["access-control-allow-origin"] == allowed
    assert "access-control-allow-credentials" not in head
    _, head, _ = request(url, headers={**auth, "Origin": "https://elsewhere.example"})
    assert "access-control-allow-origin" not in head
    _, head, _ = request(  # a browser's preflight from the named origin, before it sends the key
        url,
        method="OPTIONS",
        headers={"Origin": allowed, "Access-Control-Request-Method": "GET"},
    )
    assert head["access-control-allow-origin"] == allowed
    parent.send_signal(signal.SIGINT)
    assert "server stopped" in parent.communicate(timeout=30)[1]
    child.wait(10)


# -- Host names, request bodies and the model's name ----------------------------------------

REFUSED_HOST = (
    "This server answers only requests to localhost or a loopback address; "
    "use http://127.0.0.1:PORT."
)


def send_raw(port: int, data: bytes) -> tuple[int, bytes]:
    """Send ``data`` as it is; the status and body of the answer (the server closes after it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(data)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(  # noqa: S310 - http on 127.0.0.1
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as response:  # noqa: S310
            return int(response.status), response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture
def keyless(models: dict[str, Path]) -> Iterator[ServerProcess]:
    """A server with no key and no alias given: the one a rebinding page would aim at."""
    server = start_server(
        ServeConfig(LoadConfig(str(models["q2_k"]), n_ctx=256, n_threads=1), port=free_port())
    )
    try:
        yield server
    finally:
        server.stop()


def test_a_server_without_a_key_answers_only_loopback_host_names(keyless: ServerProcess) -> None:
    port = keyless.config.port
    url = keyless.url + "/models"
    for host in ("attacker.example", f"rebind.attacker.example:{port}", "localhost.evil.example"):
        status, _, body = request(url, headers={"Host": host})
        assert status == 403, host
        assert json.loads(body)["error"]["message"] == REFUSED_HOST
    for host in (
        f"localhost:{port}",
        f"127.0.0.1:{port}",
        f"[::1]:{port}",
        "LocalHost",
        "a.localhost",
    ):
        assert request(url, headers={"Host": host})[0] == 200, host


def test_bodies_are_capped_and_checked_and_the_model_has_its_alias(
    keyless: ServerProcess, models: dict[str, Path]
) -> None:
    port, url = keyless.config.port, keyless.url
    path = str(models["q2_k"])
    # 200 MiB announced: refused before a byte of it is read
    status, body = send_raw(
        port,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 209715200\r\n\r\n",
    )
    assert status == 413
    assert json.loads(body)["error"]["message"] == (
        "The request body is larger than 8 MiB, the most this server reads."
    )
    status, body = post(url + "/chat/completions", b'{"messages": [')
    assert (status, json.loads(body)["error"]["code"]) == (400, "invalid_json")
    status, body = post(url + "/chat/completions", b'{"messages": 5}')
    assert status == 422
    assert json.loads(body)["error"]["message"] == (
        "The request does not fit this route: messages: Input should be a valid list."
    )
    status, body = post(url + "/completions", b"[1, 2]")
    assert status == 422
    asked = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "model": path}
    status, body = post(url + "/chat/completions", json.dumps(asked).encode())
    assert status == 200
    assert json.loads(body)["model"] == "tiny.Q2_K"
    _, _, body = request(url + "/models")
    assert [m["id"] for m in json.loads(body)["data"]] == ["tiny.Q2_K"]
    for text in (body, *(post(url + "/chat/completions", b)[1] for b in (b"{", b"[]", b"{}"))):
        assert path.encode() not in text and b".py" not in text and b"/" not in text


def test_loopback_host_names() -> None:
    for name in (
        b"localhost",
        b"localhost:8080",
        b"127.0.0.1:1",
        b"127.8.9.10",
        b"[::1]:80",
        b"::1",
    ):
        assert is_loopback_name(name), name
    for name in (b"example.com", b"127.0.0.1.nip.io:80", b"[::2]:80", b"0.0.0.0", b"", b"\xff"):
        assert not is_loopback_name(name), name


class _Ask(BaseModel):
    """The body of the one route of :func:`_guarded_app`."""

    text: str
    model: str | None = None


async def _answer(body: _Ask) -> dict[str, str | None]:
    return {"text": body.text, "model": body.model}


def _guarded_app(host: str) -> Any:
    """A FastAPI app with one JSON route, secured as ``mixdesk serve`` secures llama's."""
    from fastapi import APIRouter, FastAPI

    router = APIRouter()
    router.post("/ask")(_answer)
    app = FastAPI()
    app.include_router(router)
    secure_app(
        app,
        api_key=None,
        cors_origins=(),
        host=host,
        model_alias="alias",
        routes=router.routes,
        max_request_bytes=1 << 20,
    )
    return app


def _ask(app: Any, body: bytes | Iterator[bytes], host: str = "127.0.0.1") -> tuple[int, Any]:
    import asyncio

    import httpx

    async def run() -> tuple[int, Any]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=f"http://{host}") as client:
            content: Any = body
            if not isinstance(body, bytes):
                chunks = list(body)

                async def stream() -> Any:
                    for chunk in chunks:
                        yield chunk

                content = stream()  # no Content-Length: counted as it arrives
            headers = {"Content-Type": "application/json"}
            response = await client.post("/ask", content=content, headers=headers)
            return response.status_code, response.json()

    return asyncio.run(run())


def test_the_body_checks_in_front_of_any_route() -> None:
    app = _guarded_app("127.0.0.1")
    assert _ask(app, b'{"text": "hi", "model": "/models/x.gguf"}') == (
        200,
        {"text": "hi", "model": "alias"},
    )
    status, answer = _ask(app, iter([b'{"text": "', b"x" * (1 << 20), b'"}']))
    assert (status, answer["error"]["code"]) == (413, "request_too_large")
    assert _ask(app, b"\xff")[0] == 400
    assert _ask(app, b'{"text": 1}')[1]["error"]["message"] == (
        "The request does not fit this route: text: Input should be a valid string."
    )
    assert _ask(app, b"{}", host="evil.example")[0] == 403
    status, answer = _ask(app, b"[" * 200_000)  # nested too deep for Python's parser
    assert (status, answer["error"]["code"]) == (400, "invalid_json")
    # open to the network without a key: addresses and local names, never a public name (a
    # DNS-rebinding page's); never started: the check is the app's, not the socket's
    anywhere = _guarded_app("0.0.0.0")
    assert _ask(anywhere, b'{"text": "hi"}', host="evil.example")[0] == 403
    for local in ("192.168.1.20:8080", "desk", "desk.local", "127.0.0.1"):
        assert _ask(anywhere, b'{"text": "hi"}', host=local)[0] == 200, local


def test_local_network_host_names() -> None:
    for name in (b"192.168.1.20:8080", b"[fe80::1]:80", b"desk", b"desk.local", b"nas.lan"):
        assert is_local_network_name(name), name
    for name in (b"evil.example", b"127.0.0.1.nip.io:80", b"desk.local.evil.com", b"", b"\xff"):
        assert not is_local_network_name(name), name
