"""The worker's side of the handshake: what a connection must do before the front serves it.

A connection to ``mixdesk worker`` starts with TLS (plain only from loopback), then the client
and the worker prove to each other that they hold the worker secret
(:mod:`mixdesk.core.machine.worker_security`) within the client's time limit, and the client's
proof line carries its question (:func:`prove`). Every way of failing that is a
:class:`Refusal`: the short answer the client hears and the reason the worker logs. The
client's side of the same handshake is :mod:`mixdesk.core.machine.worker_channel`; what the
front does with a proven client is :mod:`mixdesk.core.engine.rpc_front`.
"""

from __future__ import annotations

import errno
import socket
import ssl
import time

from mixdesk.core.machine import worker_security as security
from mixdesk.core.machine.net import is_loopback

_LINE_LIMIT = 512
_TLS_RECORD = 0x16  # the first byte of a TLS ClientHello


class Refusal(Exception):  # noqa: N818 - a verdict with the client's answer and the log's reason
    """A client turned away: ``answer`` is what it hears, ``reason`` what the log says."""

    def __init__(self, answer: str, reason: str) -> None:
        super().__init__(reason)
        self.answer = answer
        self.reason = reason


def prove(
    conn: socket.socket,
    *,
    secret: bytes,
    tls: ssl.SSLContext | None,
    certificate: security.WorkerCertificate | None,
    deadline: float,
) -> tuple[socket.socket, list[str]]:
    """TLS (or plain from loopback) and the secret's proofs; returns the stream and the
    question the client asked.

    Args:
        conn: the accepted connection.
        secret: the worker secret.
        tls: the server's TLS context (None: plain connections from loopback only).
        certificate: the certificate ``tls`` serves, whose fingerprint the proofs are bound to.
        deadline: when the client must have finished proving itself (``time.monotonic()``).

    Raises:
        Refusal: the client is not let in; OSError, ValueError: the connection ended or
        was too slow.
    """
    conn.settimeout(_left(deadline))
    first = conn.recv(1, socket.MSG_PEEK)
    if not first:
        raise ConnectionResetError(errno.ECONNRESET, "closed before a byte")
    stream = conn
    bound = security.PLAIN_BINDING
    if first[0] == _TLS_RECORD and tls is not None:
        try:
            stream = tls.wrap_socket(conn, server_side=True)
        except ssl.SSLError as err:
            raise Refusal("authentication required", f"TLS failed ({error_reason(err)})") from None
        assert certificate is not None
        bound = security.binding(certificate.fingerprint)
    elif first != b"M":
        raise Refusal(
            "authentication required",
            "not authenticated (it spoke llama.cpp's RPC or something else first)",
        )
    elif not is_loopback(peer_address(conn).rsplit(":", 1)[0]):
        raise Refusal("authentication required", "plain connection from another machine")
    words = read_words(stream, deadline)
    if words[:2] != [security.PROTOCOL, "AUTH"] or len(words) != 3:
        raise Refusal("authentication required", "not authenticated")
    try:
        theirs = bytes.fromhex(words[2])
    except ValueError:
        raise Refusal("authentication required", "not authenticated") from None
    if len(theirs) != security.NONCE_BYTES:
        raise Refusal("authentication required", "not authenticated")
    mine = security.new_nonce()
    mine_proof = security.proof(secret, "worker", theirs, mine, bound)
    stream.sendall(f"{security.PROTOCOL} CHALLENGE {mine.hex()} {mine_proof.hex()}\n".encode())
    words = read_words(stream, deadline)
    expected = security.proof(secret, "client", theirs, mine, bound)
    if (
        words[:2] != [security.PROTOCOL, "PROOF"]
        or len(words) < 4
        or not security.proofs_match(expected, words[2])
    ):
        raise Refusal("authentication failed", "wrong secret")
    return stream, words[3:]


def read_words(stream: socket.socket, deadline: float) -> list[str]:
    """One line (at most :data:`_LINE_LIMIT` bytes) before ``deadline``, split in words."""
    line = b""
    while not line.endswith(b"\n"):
        if len(line) >= _LINE_LIMIT:
            raise Refusal("authentication required", "a line too long")
        stream.settimeout(_left(deadline))
        byte = stream.recv(1)
        if not byte:
            raise ConnectionResetError(errno.ECONNRESET, "closed mid-line")
        line += byte
    return line.decode("ascii", errors="replace").split()


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(errno.ETIMEDOUT, "too slow to prove itself")
    return left


def peer_address(conn: socket.socket) -> str:
    """``HOST:PORT`` a connection comes from ("?" once it is closed)."""
    try:
        host, port = conn.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"


def error_reason(err: BaseException) -> str:
    """An error in a few words, for the log's line about a client."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__
