"""The worker process: llama.cpp's RPC server behind a front that only lets proven clients in.

``mixdesk worker`` runs llama.cpp's own RPC server (``ggml_backend_rpc_start_server``) on a
loopback port only this process knows, and listens on the public address itself. Every
connection must first prove that it holds the worker secret (:mod:`mixdesk.core.machine.worker_security`;
TLS first unless it comes from loopback); until then the front answers nothing but
"authentication required" and relays nothing. A proven client then asks one question (hello,
link speed, byte counts; see :mod:`mixdesk.core.machine.rpc_worker`), or ``RELAY``: its connection then
carries llama.cpp's RPC session, every message header checked by
:class:`~mixdesk.core.machine.rpc_frames.FrameGuard` before it reaches llama.cpp's parser.

No client can hold or end the worker: a client that does not finish proving itself, or stops
in the middle of a message, is cut off after ``client_timeout``; a relayed session idle for
``idle_timeout`` is ended; one session at a time (others hear "busy"); at most
``max_pending`` connections still proving themselves (the oldest makes room for a new one);
running out of file descriptors drops the oldest of those instead of the worker. Every refused
client is logged with the reason.

The handshake a client must pass is :mod:`mixdesk.core.engine.rpc_front_handshake`; llama.cpp's
RPC server behind the front is started by :mod:`mixdesk.core.engine.rpc_backend`.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from mixdesk.core.engine.rpc_backend import loopback_clients
from mixdesk.core.engine.rpc_front_handshake import Refusal, error_reason, peer_address, prove
from mixdesk.core.machine import worker_security as security
from mixdesk.core.machine.rpc_frames import MAX_BUFFER_BYTES, FrameGuard, TensorCache
from mixdesk.core.machine.tunnel import Ender, Ending, relay

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
#: The most a link-speed probe may send.
MAX_SPEED_BYTES = 64 << 20
_FD_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


@dataclass(frozen=True)
class FrontLimits:
    """How long and how many (seconds; None: no limit)."""

    #: To finish proving itself, or to go on with a message it started.
    client_timeout: float = 30.0
    #: A relayed session with nothing moving either way for this long is ended.
    idle_timeout: float | None = 3600.0
    #: Connections still proving themselves; a new one closes the oldest beyond this.
    max_pending: int = 32
    #: Proven connections at once (the relayed session and questions).
    max_proven: int = 16


@dataclass
class _Counters:
    sessions: int = 0
    received_bytes: int = 0
    sent_bytes: int = 0
    active: int = 0


#: The stack of a client's thread (Python code moving bytes; the default is 8 MiB).
_CLIENT_STACK = 1 << 20


class WorkerFront:
    """Accepts connections on ``listener``; answers proven clients' questions, relays their
    llama.cpp sessions.

    Args:
        listener: a bound, listening socket (the worker's public address).
        backend_port: the loopback port of llama.cpp's RPC server in this process.
        describe: the hello answer's fields (device, free memory, versions), read at each hello.
        secret: the worker secret clients must prove they hold.
        certificate: the TLS certificate (None: plain connections from loopback only).
        cache: llama.cpp's tensor cache folder, kept under its cap (None: no cache).
        on_session: called with a line to print when a session comes or goes, or a client is
            refused.
    """

    def __init__(
        self,
        listener: socket.socket,
        backend_port: int,
        describe: Callable[[], dict[str, object]],
        *,
        secret: bytes,
        certificate: security.WorkerCertificate | None = None,
        cache: TensorCache | None = None,
        limits: FrontLimits | None = None,
        on_session: Callable[[str], None] | None = None,
    ) -> None:
        self._listener = listener
        self._backend_port = backend_port
        self._describe = describe
        self._secret = secret
        self._certificate = certificate
        self._tls = security.server_context(certificate) if certificate else None
        self._cache = cache
        self._limits = limits or FrontLimits()
        self._on_session = on_session or (lambda _line: None)
        self._lock = threading.Lock()
        self._counters = _Counters()
        self._session = threading.Lock()
        self._pending: collections.OrderedDict[int, socket.socket] = collections.OrderedDict()
        self._proven = 0
        self._backend_ports: set[int] = set()  # our own connections to llama.cpp's port
        self._foreign_seen: set[int] = set()

    # -- accepting ------------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Accept connections until the process ends (each is handled in its own thread)."""
        last_said = 0.0
        while True:
            try:
                conn, address = self._listener.accept()
            except OSError as err:
                if err.errno in _FD_ERRORS:
                    # Out of file descriptors: close the oldest unproven client, not the worker.
                    now = time.monotonic()
                    if now - last_said > 1.0:
                        self._refused(
                            "a new client", f"no file descriptors left ({error_reason(err)})"
                        )
                        last_said = now
                    self._drop_oldest_pending()
                    time.sleep(0.05)
                    continue
                if err.errno in (errno.EBADF, errno.EINVAL):
                    raise  # the listener itself is gone
                # a client's own failure (ECONNABORTED, EPROTO, EPERM, ENETUNREACH...): the
                # worker goes on
                if err.errno in (errno.ECONNABORTED, errno.EINTR):
                    continue
                now = time.monotonic()
                if now - last_said > 1.0:
                    self._refused("a new client", f"its connection failed ({error_reason(err)})")
                    last_said = now
                time.sleep(0.01)
                continue
            self._admit(conn, f"{address[0]}:{address[1]}")

    def _admit(self, conn: socket.socket, who: str) -> None:
        with self._lock:
            crowded = len(self._pending) >= self._limits.max_pending
            self._pending[id(conn)] = conn
        if crowded:
            self._drop_oldest_pending()
        # A client's thread only moves bytes between sockets: a small stack, so that dozens
        # of clients do not reserve 8 MiB of address space each on a device with little room.
        previous = threading.stack_size(_CLIENT_STACK)
        try:
            threading.Thread(target=self._handle, args=(conn, who), daemon=True).start()
        except RuntimeError:  # no thread left: the client goes, the worker stays
            self._done_pending(conn)
            conn.close()
            self._refused(who, "no thread left for it")
        finally:
            threading.stack_size(previous)

    def _drop_oldest_pending(self) -> None:
        """Make room: drop the oldest unproven connection of the address that holds the most
        of them (one host opening connections fast cannot push out everyone else's)."""
        with self._lock:
            if not self._pending:
                return
            hosts = collections.Counter(_peer_host(c) for c in self._pending.values())
            busiest = hosts.most_common(1)[0][0]
            key = next(k for k, c in self._pending.items() if _peer_host(c) == busiest)
            oldest = self._pending.pop(key)
        self._refused(peer_address(oldest), "still unproven when newer connections came")
        with contextlib.suppress(OSError):
            oldest.shutdown(socket.SHUT_RDWR)  # its thread wakes up and closes it

    def _done_pending(self, conn: socket.socket) -> bool:
        """Take ``conn`` off the unproven list; False when it was dropped meanwhile."""
        with self._lock:
            return self._pending.pop(id(conn), None) is not None

    def _refused(self, who: str, reason: str) -> None:
        log.warning("refused %s: %s", who, reason)
        self._on_session(f"refused {who}: {reason}")

    # -- one connection -----------------------------------------------------------------

    def _handle(self, conn: socket.socket, who: str) -> None:
        stream: socket.socket = conn
        proven = False
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            deadline = time.monotonic() + self._limits.client_timeout
            stream, command = prove(
                conn,
                secret=self._secret,
                tls=self._tls,
                certificate=self._certificate,
                deadline=deadline,
            )
            if not self._done_pending(conn):
                return  # dropped to make room, meanwhile
            with self._lock:
                if self._proven >= self._limits.max_proven:
                    raise Refusal("busy", "too many proven connections at once")
                self._proven += 1
            proven = True
            self._answer(stream, command, who)
        except Refusal as refusal:
            self._refused(who, refusal.reason)
            with contextlib.suppress(OSError):
                stream.settimeout(1.0)
                stream.sendall(json.dumps({"refused": refusal.answer}).encode() + b"\n")
        except (OSError, ValueError) as err:
            if self._done_pending(conn):
                self._refused(who, f"connection ended while proving itself ({error_reason(err)})")
            else:
                log.info("connection from %s ended: %s", who, error_reason(err))
        finally:
            self._done_pending(conn)
            if proven:
                with self._lock:
                    self._proven -= 1
            for s in (stream, conn):
                with contextlib.suppress(OSError):
                    s.close()

    # -- proven clients -------------------------------------------------------------------

    def _answer(self, stream: socket.socket, words: list[str], who: str) -> None:
        stream.settimeout(self._limits.client_timeout)
        command = words[0]
        reply: dict[str, object]
        if command == "HELLO":
            with self._lock:
                busy = self._counters.active > 0
            reply = {**self._describe(), "busy": busy or bool(self._foreign_clients())}
        elif command == "SPEED" and len(words) > 1 and words[1].isdigit():
            wanted = int(words[1])
            if wanted > MAX_SPEED_BYTES:
                raise Refusal(f"at most {MAX_SPEED_BYTES} bytes", f"speed probe of {wanted} bytes")
            got, start = 0, time.perf_counter()
            while got < wanted:
                chunk = stream.recv(min(_CHUNK, wanted - got))
                if not chunk:
                    return
                got += len(chunk)
            reply = {"received": got, "seconds": time.perf_counter() - start}
        elif command == "STATS":
            with self._lock:
                c = self._counters
                reply = {
                    "sessions": c.sessions,
                    "received_bytes": c.received_bytes,
                    "sent_bytes": c.sent_bytes,
                    "active": c.active > 0,
                }
        elif command == "RELAY":
            self._relay(stream, who)
            return
        else:
            reply = {"error": f"unknown question {command[:40]!r}"}
        stream.sendall(json.dumps(reply).encode() + b"\n")

    # -- llama.cpp's sessions -----------------------------------------------------------

    def _relay(self, stream: socket.socket, client: str) -> None:
        # A few seconds' grace: llama.cpp reconnects as soon as its last session closed.
        if not self._session.acquire(timeout=5.0):
            raise Refusal("busy", "busy with another session")
        try:
            foreign = self._foreign_clients()
            if foreign:
                raise Refusal(
                    "busy", f"llama.cpp's internal port is in use by 127.0.0.1:{min(foreign)}"
                )
            backend = socket.create_connection(("127.0.0.1", self._backend_port), timeout=10)
            backend.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            own_port = int(backend.getsockname()[1])
            with self._lock:
                self._backend_ports.add(own_port)
                self._counters.sessions += 1
                self._counters.active += 1
                before = (self._counters.received_bytes, self._counters.sent_bytes)
            self._on_session(f"llama.cpp client {client} connected")
            ending = Ending(Ender.RELAY, "did not start")
            try:
                stream.sendall(b'{"relay": true}\n')
                cache = self._cache
                total = self._describe().get("total_bytes")
                guard = FrameGuard(
                    on_hash=cache.touch if cache else None,
                    on_large_tensor=cache.prune_soon if cache else None,
                    max_buffer=total if isinstance(total, int) and total > 0 else MAX_BUFFER_BYTES,
                )
                ending = relay(
                    stream,
                    backend,
                    inspector=guard,
                    on_a_to_b=lambda n: self._count(received=n),
                    on_b_to_a=lambda n: self._count(sent=n),
                    idle_timeout=self._limits.idle_timeout,
                    stall_timeout=self._limits.client_timeout,
                )
            finally:
                with self._lock:
                    self._backend_ports.discard(own_port)
                    self._counters.active -= 1
                    got = self._counters.received_bytes - before[0]
                    sent = self._counters.sent_bytes - before[1]
                if self._cache is not None:
                    self._cache.prune()
            ended = f"{ending.by.value} {ending.why}"
            if ending.by is Ender.RELAY:
                self._refused(client, ending.why)
                ended = f"ended: {ending.why}"
            self._on_session(
                f"llama.cpp client {client} disconnected ({ended}; received "
                f"{got / 2**20:.1f} MiB, sent {sent / 2**20:.1f} MiB)"
            )
        finally:
            self._session.release()

    def _count(self, *, received: int = 0, sent: int = 0) -> None:
        with self._lock:
            self._counters.received_bytes += received
            self._counters.sent_bytes += sent

    def _foreign_clients(self) -> set[int]:
        """Ports of clients of llama.cpp's internal port that are not this front (another
        process on this machine connected to it directly), reported once each."""
        with self._lock:
            own = set(self._backend_ports)
        foreign = loopback_clients(self._backend_port) - own
        for port in foreign - self._foreign_seen:
            self._on_session(
                f"warning: a process on this machine (127.0.0.1:{port}) uses llama.cpp's "
                f"internal port 127.0.0.1:{self._backend_port} directly, bypassing the front; "
                "the worker is busy until it disconnects"
            )
            log.warning("foreign client of llama.cpp's internal port: 127.0.0.1:%d", port)
        self._foreign_seen |= foreign
        return foreign


def _peer_host(conn: socket.socket) -> str:
    """The address a connection comes from ("" once it is closed)."""
    try:
        return str(conn.getpeername()[0])
    except OSError:
        return ""
