"""What ``mixdesk serve`` changes in llama-cpp-python's server so it can be left running.

llama-cpp-python's server, as it comes:

- lets any web page the user visits drive the model (``access-control-allow-origin`` for
  every origin, with credentials);
- checks the API key on the OpenAI routes only (``/docs`` and ``/openapi.json`` answer
  anyone), comparing it with ``==``;
- takes its settings from ``CONFIG_FILE`` and from environment variables named like them
  (``API_KEY``, ``MODEL``, ``HOST``...) over the ones it is given;
- runs on after the process that started it is killed;
- answers any ``Host``, so a web page whose name an attacker points at 127.0.0.1 (DNS
  rebinding) can drive a server that has no key;
- reads a request body of any size (a 200 MiB body peaked at 3.4 times that in memory);
- answers malformed JSON or a field of the wrong type with HTTP 500 and a traceback line
  naming its own source file, and names the model by its file path where no alias is given.

Here: no cross-origin access unless origins are named; one key check, in constant time, in
front of every route; a server on loopback answers only requests addressed to a loopback
name; bodies over :data:`MAX_REQUEST_BYTES` get HTTP 413 before they are read, malformed
JSON 400 and a body that does not fit the route 422, each with an OpenAI-style error that
names no file; every request names the model by its alias. A server process ignores those
variables; the settings (and the key) arrive on stdin rather than on the command line, and
the server ends when stdin closes, which happens however its parent ends. Nothing here
imports Qt or llama.cpp. The checks in front of every route are ASGI middlewares
(:mod:`mixdesk.core.serving.middleware`); this module chooses them for a server and hardens
the server's process.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from typing import IO, Any
from urllib.parse import urlsplit

from mixdesk.core.machine.net import is_loopback
from mixdesk.core.serving.middleware import (
    CheckedBody,
    LoopbackHostOnly,
    RequireKey,
    body_schemas,
    is_local_network_name,
)
from mixdesk.errors import InvalidArgumentError

#: Read by llama-cpp-python's ``create_app`` in place of the settings it is given.
CONFIG_FILE_VARIABLE = "CONFIG_FILE"
#: Where ``mixdesk serve`` and ``mixdesk chat --endpoint`` find a key not given as an option.
API_KEY_VARIABLE = "MIXDESK_API_KEY"
#: The largest request body the server reads: a prompt filling a 128k-token context is
#: about 1 MiB of JSON.
MAX_REQUEST_BYTES = 8 << 20


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


def secure_app(
    app: Any,
    *,
    api_key: str | None,
    cors_origins: Sequence[str],
    host: str,
    model_alias: str,
    routes: Iterable[Any],
    max_request_bytes: int = MAX_REQUEST_BYTES,
) -> None:
    """Replace llama-cpp-python's any-origin CORS, and put MixDesk's checks before every route.

    From the outside in: the ``Host`` check (on loopback), CORS, the key, the body checks.

    Args:
        app: the FastAPI app from ``llama_cpp.server.app.create_app`` (not yet started).
        api_key: the key clients must send, or None for none.
        cors_origins: web origins allowed to call the API (none: no cross-origin access).
        host: the address the server listens on.
        model_alias: the model's name in every request and response.
        routes: the API's routes, whose body types the body check uses.
        max_request_bytes: the largest request body read.
    """
    from starlette.middleware.cors import CORSMiddleware

    app.user_middleware[:] = [m for m in app.user_middleware if m.cls is not CORSMiddleware]
    app.add_middleware(
        CheckedBody, max_bytes=max_request_bytes, schemas=body_schemas(routes), alias=model_alias
    )
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
    if is_loopback(host):
        app.add_middleware(LoopbackHostOnly)
    elif not api_key:  # open to the network without a key: at least no DNS rebinding
        app.add_middleware(
            LoopbackHostOnly,
            allowed=is_local_network_name,
            refusal="This server answers only requests to its address or a local-network "
            "name; use http://ADDRESS:PORT (or set a key to serve public names).",
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
