"""What ``mixdesk serve`` changes in llama-cpp-python's server so it can be left running.

llama-cpp-python's server, as it comes:

- lets any web page the user visits drive the model (``access-control-allow-origin`` for
  every origin, with credentials);
- checks the API key on the OpenAI routes only (``/docs`` and ``/openapi.json`` answer
  anyone), comparing it with ``==``;
- takes its settings from ``CONFIG_FILE`` and from environment variables named like them
  (``API_KEY``, ``MODEL``, ``HOST``...) over the ones it is given;
- runs on after the process that started it is killed.

Here: no cross-origin access unless origins are named; one key check, in constant time, in
front of every route; a server process that ignores those variables; the settings (and the
key) arrive on stdin rather than on the command line, and the server ends when stdin closes,
which happens however its parent ends. Nothing here imports Qt or llama.cpp.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import socket
import sys
import threading
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

from mixdesk.errors import InvalidArgumentError

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

#: Read by llama-cpp-python's ``create_app`` in place of the settings it is given.
CONFIG_FILE_VARIABLE = "CONFIG_FILE"
#: Where ``mixdesk serve`` and ``mixdesk chat --endpoint`` find a key not given as an option.
API_KEY_VARIABLE = "MIXDESK_API_KEY"


def is_loopback(host: str) -> bool:
    """Whether a server listening on ``host`` can be reached from this machine only.

    Only 127.0.0.0/8 and ::1 are loopback; ``""`` (like ``0.0.0.0`` and ``::``) listens on
    every interface. A name counts when every address it resolves to is loopback
    (``localhost``, normally).
    """
    if not host:
        return False
    try:
        return _is_loopback_address(host)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(_is_loopback_address(str(info[4][0])) for info in infos)


def _is_loopback_address(text: str) -> bool:
    address = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone ("fe80::1%eth0")
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def url_host(host: str) -> str:
    """How ``host`` is written in a URL clients of this machine use (wildcards: 127.0.0.1)."""
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - display only
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def check_origins(origins: Iterable[str]) -> tuple[str, ...]:
    """The web origins allowed to call the server (``--cors``), checked and normalised.

    Raises:
        InvalidArgumentError: a value that is not an origin (``scheme://host[:port]``).
    """
    checked: list[str] = []
    for origin in origins:
        text = origin.strip().rstrip("/")
        if text != "*":
            parts = urlsplit(text)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.path:
                raise InvalidArgumentError(
                    f"'{origin}' is not a web origin; write it like https://example.com or "
                    "http://localhost:3000 (no path)."
                )
            text = f"{parts.scheme}://{parts.netloc}".lower()
        checked.append(text)
    return tuple(dict.fromkeys(checked))


class RequireKey:
    """ASGI middleware: every request needs ``Authorization: Bearer <key>``.

    Compared in constant time (of equal-length digests, so not even the key's length leaks).
    Requests without the key get HTTP 401 with an OpenAI-style error body.
    """

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self._digest = hashlib.sha256(key.encode("utf-8")).digest()

    def authorized(self, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        """Whether the request headers carry the key."""
        for name, value in headers:
            if name.lower() == b"authorization":
                scheme, _, token = value.strip().partition(b" ")
                if scheme.lower() == b"bearer":
                    given = hashlib.sha256(token.strip()).digest()
                    return hmac.compare_digest(given, self._digest)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass an authorised request on; answer any other with 401."""
        if scope["type"] not in ("http", "websocket") or self.authorized(scope["headers"]):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps(
            {
                "error": {
                    "message": "Invalid or missing API key.",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                }
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def secure_app(app: Any, *, api_key: str | None, cors_origins: Sequence[str]) -> None:
    """Replace llama-cpp-python's any-origin CORS, and put the key check before every route.

    Args:
        app: the FastAPI app from ``llama_cpp.server.app.create_app`` (not yet started).
        api_key: the key clients must send, or None for none.
        cors_origins: web origins allowed to call the API (none: no cross-origin access).
    """
    from starlette.middleware.cors import CORSMiddleware

    app.user_middleware[:] = [m for m in app.user_middleware if m.cls is not CORSMiddleware]
    if api_key:
        app.add_middleware(RequireKey, key=api_key)
    if cors_origins:  # outermost, so a browser's preflight is answered before the key check
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["authorization", "content-type"],
            allow_credentials=False,  # the key travels in a header, never as a cookie
        )


def server_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment for the server process: this one without ``CONFIG_FILE`` or the key.

    The key reaches the server on its stdin; it need not sit in its environment too.
    """
    dropped = {CONFIG_FILE_VARIABLE, API_KEY_VARIABLE}
    return {k: v for k, v in environ.items() if k.upper() not in dropped}


def drop_setting_variables(
    environ: MutableMapping[str, str], setting_names: Iterable[str]
) -> list[str]:
    """Remove the variables pydantic-settings would read for these settings (any case).

    Returns:
        The names removed (for the log; their values are not logged).
    """
    names = {n.lower() for n in setting_names} | {CONFIG_FILE_VARIABLE.lower()}
    removed = [var for var in environ if var.lower() in names]
    for var in removed:
        del environ[var]
    return removed


def read_settings_line(stream: IO[bytes]) -> str:
    """The settings line the parent writes first on the server's stdin."""
    line = stream.readline()
    if not line.strip():
        raise SystemExit("mixdesk serve: no settings arrived on stdin")
    return line.decode("utf-8")


def exit_when_parent_ends(stream: IO[bytes]) -> threading.Thread:
    """End this process as soon as ``stream`` (stdin, held open by the parent) closes.

    The parent never writes after the settings line, so EOF means it has gone: closed the
    pipe, exited, or was killed (``kill -9`` too: the kernel closes its end).
    """

    def watch() -> None:
        while stream.read(4096):
            pass
        sys.stderr.write("mixdesk serve: the parent process ended; stopping the server.\n")
        sys.stderr.flush()
        os._exit(0)

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread
