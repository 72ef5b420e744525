"""The client side of a worker's handshake: the connection every question to a worker opens.

A worker (``mixdesk worker`` on another machine, :mod:`mixdesk.core.engine.rpc_front`) takes
one question per connection. Opening one: the address (:func:`parse_endpoint`), a TCP
connection, TLS off loopback with the worker's self-signed certificate pinned on first use,
then both sides prove that they hold the worker secret (:mod:`.worker_security`) and the
client asks its question in its proof line (:func:`open_channel`). The answer is one JSON
line (:func:`read_answer`); a refusal (``{"refused": REASON}``), silence, or something that
is not a MixDesk worker each becomes a typed :class:`~mixdesk.errors.WorkerError`. What the
questions are and what their answers mean is :mod:`.rpc_worker`'s business.
"""

from __future__ import annotations

import json
import socket
import ssl

from mixdesk.core.machine import worker_security as security
from mixdesk.errors import (
    InvalidArgumentError,
    NotAWorkerError,
    WorkerAuthError,
    WorkerBusyError,
    WorkerError,
    WorkerUnreachableError,
    WorkerVersionError,
)

DEFAULT_PORT = 50052
_LINE_LIMIT = 64 * 1024


def parse_endpoint(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as (host, port).

    Raises:
        InvalidArgumentError: not HOST:PORT with a port from 1 to 65535.
    """
    host, sep, port_text = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidArgumentError(
            f"Worker '{text}' is not HOST:PORT; write it like 192.168.1.20:{DEFAULT_PORT}."
        )
    return host, int(port_text)


def _connect(endpoint: str, timeout: float) -> socket.socket:
    host, port = parse_endpoint(endpoint)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as err:
        reason = err.strerror or str(err) or type(err).__name__
        raise WorkerUnreachableError(
            f"The worker at {endpoint} cannot be reached ({reason}); start `mixdesk worker` "
            "there, check the address and port, or remove it.",
            endpoint=endpoint,
        ) from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_raw_line(sock: socket.socket, endpoint: str) -> bytes:
    data = b""
    while not data.endswith(b"\n") and len(data) < _LINE_LIMIT:
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            raise WorkerBusyError(
                f"The worker at {endpoint} accepts connections but does not answer (busy with "
                "another client?); try again later, or remove it.",
                endpoint=endpoint,
            ) from None
        except OSError:
            chunk = b""
        if not chunk:
            break
        data += chunk
    return data


def _not_a_worker(endpoint: str) -> NotAWorkerError:
    return NotAWorkerError(
        f"{endpoint} answers, but not as a MixDesk worker (a plain llama.cpp rpc-server?); "
        "run `mixdesk worker` there.",
        endpoint=endpoint,
    )


def _refusal(endpoint: str, reason: str) -> WorkerError:
    """The typed error for a worker's ``{"refused": reason}``."""
    if reason.startswith("authentication"):
        return WorkerAuthError(
            f"The worker at {endpoint} refused this machine's worker secret; copy the secret "
            f"file `mixdesk worker` printed there to {security.default_secret_file()} here, or "
            f"set {security.SECRET_FILE_ENV}.",
            endpoint=endpoint,
        )
    if reason == "busy":
        return WorkerBusyError(
            f"The worker at {endpoint} is serving another MixDesk (llama.cpp serves one at a "
            "time); unload the model there, or remove this worker.",
            endpoint=endpoint,
        )
    return WorkerError(
        f"The worker at {endpoint} refused the connection ({reason}).", endpoint=endpoint
    )


def _read_line(sock: socket.socket, endpoint: str) -> dict[str, object]:
    data = _read_raw_line(sock, endpoint)
    try:
        body = json.loads(data)
        if not isinstance(body, dict):
            raise ValueError("not an object")
    except ValueError:
        raise _not_a_worker(endpoint) from None
    if "refused" in body:
        raise _refusal(endpoint, str(body["refused"]))
    return body


def read_answer(sock: socket.socket, endpoint: str) -> dict[str, object]:
    """The worker's one-line JSON answer on a channel from :func:`open_channel`.

    Raises:
        WorkerAuthError, WorkerBusyError, WorkerError: the worker refused; NotAWorkerError:
        it is not a JSON line.
    """
    return _read_line(sock, endpoint)


def open_channel(endpoint: str, command: str, *, timeout: float) -> socket.socket:
    """Connect to the worker, over TLS unless it is on loopback, prove that both sides hold
    the worker secret, and ask ``command``; the caller reads the answer.

    Raises:
        WorkerUnreachableError: nothing listens there.
        WorkerAuthError: no secret here, or the worker holds another one.
        WorkerFingerprintError: the worker's certificate is not the one pinned.
        WorkerVersionError: an older MixDesk worker (without authentication).
        NotAWorkerError: something else answers.
    """
    host, _ = parse_endpoint(endpoint)
    sock = _connect(endpoint, timeout)  # an unreachable worker is said first
    try:
        bound = security.PLAIN_BINDING
        new_pin = ""  # a first certificate, pinned once the worker has proven the secret
        if security.wants_tls(host):
            try:
                sock = security.client_context().wrap_socket(sock)
            except (ssl.SSLError, OSError):
                raise _not_a_worker(endpoint) from None
            seen = security.fingerprint(sock.getpeercert(binary_form=True) or b"")
            if security.check_pin(endpoint, seen):
                new_pin = seen
            bound = security.binding(seen)
        mine = security.new_nonce()
        try:
            sock.sendall(f"{security.PROTOCOL} AUTH {mine.hex()}\n".encode())
        except OSError:
            raise _not_a_worker(endpoint) from None
        words = _read_raw_line(sock, endpoint).decode("ascii", errors="replace").split()
        if words[:2] != [security.PROTOCOL, "CHALLENGE"] or len(words) != 4:
            _read_challenge_failure(endpoint, words)
        try:
            theirs = bytes.fromhex(words[2])
        except ValueError:
            raise _not_a_worker(endpoint) from None
        secret = security.client_secret(endpoint)  # after the answer: a non-worker is said first
        expected = security.proof(secret, "worker", mine, theirs, bound)
        if not security.proofs_match(expected, words[3]):
            raise WorkerAuthError(
                f"The worker at {endpoint} does not hold this machine's worker secret; copy "
                f"the secret file `mixdesk worker` printed there to "
                f"{security.default_secret_file()} here, or set {security.SECRET_FILE_ENV}.",
                endpoint=endpoint,
            )
        if new_pin:
            security.pin(endpoint, new_pin)
        mine_proof = security.proof(secret, "client", mine, theirs, bound)
        try:
            sock.sendall(f"{security.PROTOCOL} PROOF {mine_proof.hex()} {command}\n".encode())
        except OSError as err:
            raise WorkerUnreachableError(
                f"The worker at {endpoint} closed the connection ({err.strerror or err}); "
                "check that `mixdesk worker` still runs there.",
                endpoint=endpoint,
            ) from None
    except BaseException:
        sock.close()
        raise
    return sock


def _read_challenge_failure(endpoint: str, words: list[str]) -> None:
    """Raise the error for a first answer that is not a challenge."""
    text = " ".join(words)
    try:
        body = json.loads(text)
    except ValueError:
        raise _not_a_worker(endpoint) from None
    if isinstance(body, dict) and "refused" in body:
        raise _refusal(endpoint, str(body["refused"]))
    if isinstance(body, dict) and "error" in body:  # MIXDESK/1: a worker before authentication
        raise WorkerVersionError(
            f"The worker at {endpoint} runs an older MixDesk, without authentication; install "
            "the same MixDesk version on both.",
            endpoint=endpoint,
        )
    raise _not_a_worker(endpoint)
