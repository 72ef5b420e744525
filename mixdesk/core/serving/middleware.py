"""The ASGI middlewares ``mixdesk serve`` puts in front of every route of the server.

:class:`LoopbackHostOnly` answers only requests addressed to an allowed ``Host`` (against DNS
rebinding: :func:`is_loopback_name` for a server on loopback, :func:`is_local_network_name`
for one open to the network without a key); :class:`RequireKey` checks the API key in
constant time; :class:`CheckedBody` caps a request body and checks its JSON against the
route's pydantic model (:func:`body_schemas`). Each refusal is an OpenAI-style error that
names no file. Which of them a server gets, and in what order, is
:func:`mixdesk.core.serving.security.secure_app`'s choice.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from mixdesk.core.machine.net import is_loopback_address

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send


def is_loopback_name(host_header: bytes) -> bool:
    """Whether a request's ``Host`` header names this machine by a loopback name.

    ``localhost`` (and ``*.localhost``, which browsers resolve to loopback themselves) or a
    loopback address, with or without a port. Names are not resolved: a rebinding attacker's
    name resolves to 127.0.0.1 by design.
    """
    try:
        text = host_header.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return False
    if text.startswith("["):  # [::1]:8080
        name, _, _ = text[1:].partition("]")
    else:
        name = text.rsplit(":", 1)[0] if text.count(":") == 1 else text
    name = name.rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return is_loopback_address(name)
    except ValueError:
        return False


def _host_name(host_header: bytes) -> str | None:
    """The name in a ``Host`` header, without its port, lower case (None: not ASCII)."""
    try:
        text = host_header.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return None
    if text.startswith("["):  # [::1]:8080
        name, _, _ = text[1:].partition("]")
    else:
        name = text.rsplit(":", 1)[0] if text.count(":") == 1 else text
    return name.rstrip(".")


#: Name endings a public web page cannot make a browser resolve to this machine (DNS
#: rebinding needs a public domain of the attacker's).
_LOCAL_SUFFIXES = (".localhost", ".local", ".lan", ".home.arpa", ".internal")


def is_local_network_name(host_header: bytes) -> bool:
    """Whether a ``Host`` header names this machine as other machines on the network do: an
    address, a name without a dot, or a local-network name (``*.local``, ``*.lan``...). A
    public domain name is refused: that is how a DNS-rebinding web page reaches a server."""
    name = _host_name(host_header)
    if name is None or not name:
        return False
    try:
        ipaddress.ip_address(name.split("%", 1)[0])
        return True
    except ValueError:
        pass
    return "." not in name or name == "localhost" or name.endswith(_LOCAL_SUFFIXES)


async def _send_error(
    send: Send, status: int, message: str, code: str, extra: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """Answer with an OpenAI-style error body."""
    body = json.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "code": code}}
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class LoopbackHostOnly:
    """ASGI middleware: answer only requests whose ``Host`` is a loopback name (HTTP 403).

    For a server listening on loopback: a browser sends the name it looked up, so a page of
    ``attacker.example`` rebound to 127.0.0.1 is refused while ``localhost:PORT`` and
    ``127.0.0.1:PORT`` work. A request without ``Host`` (HTTP/1.0, never a browser) passes.
    """

    def __init__(
        self,
        app: ASGIApp,
        allowed: Callable[[bytes], bool] = is_loopback_name,
        refusal: str = "This server answers only requests to localhost or a loopback address; "
        "use http://127.0.0.1:PORT.",
    ) -> None:
        self.app = app
        self.allowed = allowed
        self.refusal = refusal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass a request addressed to an allowed name on; refuse any other."""
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        hosts = [value for name, value in scope["headers"] if name.lower() == b"host"]
        if all(self.allowed(value) for value in hosts):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await _send_error(send, 403, self.refusal, "invalid_host")


class CheckedBody:
    """ASGI middleware: a request body is capped, parsed and checked before the app sees it.

    A body over ``max_bytes`` (by its ``Content-Length``, or counted as it arrives) gets
    HTTP 413 and is not read further. For the routes in ``schemas`` (path -> pydantic model
    of its JSON body), a body that is not JSON gets 400 and one that does not fit the model
    422, each naming what is wrong and no file; the body's ``model`` is set to ``alias``, so
    responses name the model by its alias whatever the client asked.
    """

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, schemas: Mapping[str, Any], alias: str
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.schemas = schemas
        self.alias = alias

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Read, check and hand on the body; answer 413, 400 or 422 instead where it fails."""
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = [v for n, v in scope["headers"] if n.lower() == b"content-length"]
        if any(v.strip().isdigit() and int(v) > self.max_bytes for v in declared):
            await self._too_large(send)
            return
        body = bytearray()
        more = True
        while more:  # ends: each message adds bytes up to the cap, or ends the body
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            more = bool(message.get("more_body", False))
            if len(body) > self.max_bytes:
                await self._too_large(send)
                return
        schema = self.schemas.get(scope["path"])
        if schema is not None:
            checked = await self._check_json(bytes(body), schema, send)
            if checked is None:
                return
            body = bytearray(checked)
        headers = [(n, v) for n, v in scope["headers"] if n.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await self.app({**scope, "headers": headers}, _replay(bytes(body), receive), send)

    async def _too_large(self, send: Send) -> None:
        limit = self.max_bytes >> 20
        await _send_error(
            send,
            413,
            f"The request body is larger than {limit} MiB, the most this server reads.",
            "request_too_large",
            [(b"connection", b"close")],
        )

    async def _check_json(self, body: bytes, schema: Any, send: Send) -> bytes | None:
        """The body with its model set to the alias, or None once an error is answered."""
        from pydantic import ValidationError

        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as err:  # RecursionError: "[" nested 200,000 deep
            where = (
                f" (line {err.lineno}, column {err.colno})"
                if isinstance(err, json.JSONDecodeError)
                else ""
            )
            await _send_error(
                send, 400, f"The request body is not valid JSON{where}.", "invalid_json"
            )
            return None
        try:
            schema.model_validate(data)
        except RecursionError:
            await _send_error(send, 400, "The request body is nested too deeply.", "invalid_json")
            return None
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in e['loc']) or 'body'}: {e['msg']}"
                for e in err.errors(include_url=False, include_input=False)[:10]
            )
            await _send_error(
                send, 422, f"The request does not fit this route: {problems}.", "invalid_request"
            )
            return None
        data["model"] = self.alias  # a dict: the schemas are objects
        return json.dumps(data).encode()


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` once, then what the client sends (a disconnect)."""
    sent = False

    async def replay() -> MutableMapping[str, Any]:
        nonlocal sent
        if sent:
            return dict(await receive())
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def body_schemas(routes: Iterable[Any]) -> dict[str, Any]:
    """Path -> the pydantic model of the JSON body, for POST routes that take one.

    Args:
        routes: a FastAPI router's routes (``llama_cpp.server.app.router.routes``).
    """
    import typing

    from fastapi.routing import APIRoute
    from pydantic import BaseModel

    schemas: dict[str, Any] = {}
    for route in routes:
        if not isinstance(route, APIRoute) or "POST" not in (route.methods or ()):
            continue
        try:
            hints = typing.get_type_hints(route.endpoint)
        except (NameError, TypeError):  # an annotation that does not resolve: size cap only
            continue
        models = [
            hint
            for name, hint in hints.items()
            if name != "return" and isinstance(hint, type) and issubclass(hint, BaseModel)
        ]
        if len(models) == 1:  # FastAPI reads the whole body as that model
            schemas[route.path] = models[0]
    return schemas


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
