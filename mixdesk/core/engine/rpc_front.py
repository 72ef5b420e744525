"""The worker process: llama.cpp's RPC server behind a front that speaks MixDesk's handshake.

``mixdesk worker`` runs llama.cpp's own RPC server (``ggml_backend_rpc_start_server``) on a
loopback port only this process knows, and listens on the public address itself. Each
connection's first byte decides: ``M`` is a MixDesk question (hello, link speed, byte counts;
see :mod:`mixdesk.core.rpc_worker`) answered here in Python; anything else is llama.cpp's
client, whose bytes go through to the RPC server unchanged (and are counted). So a probe never
reaches llama.cpp, never blocks the engine that holds the worker, and the address and port
stay the ones the user gave.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


@dataclass
class _Counters:
    sessions: int = 0
    received_bytes: int = 0
    sent_bytes: int = 0
    active: int = 0


class WorkerFront:
    """Accepts connections on ``listener``; answers MixDesk's questions, relays the rest.

    Args:
        listener: a bound, listening socket (the worker's public address).
        backend_port: the loopback port of llama.cpp's RPC server in this process.
        describe: the hello answer's fields (device, free memory, versions), read at each hello.
        on_session: called with a line to print when a llama.cpp client comes or goes.
    """

    def __init__(
        self,
        listener: socket.socket,
        backend_port: int,
        describe: Callable[[], dict[str, object]],
        *,
        on_session: Callable[[str], None] | None = None,
    ) -> None:
        self._listener = listener
        self._backend = ("127.0.0.1", backend_port)
        self._describe = describe
        self._on_session = on_session or (lambda _line: None)
        self._lock = threading.Lock()
        self._counters = _Counters()

    def serve_forever(self) -> None:
        """Accept connections until the process ends (each is handled in its own thread)."""
        while True:
            conn, address = self._listener.accept()
            threading.Thread(target=self._handle, args=(conn, address), daemon=True).start()

    def _handle(self, conn: socket.socket, address: tuple[str, int]) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            first = conn.recv(1)
            if first == b"M":
                with conn:
                    self._answer(conn)
            elif first:
                self._relay(conn, first, f"{address[0]}:{address[1]}")
            else:
                conn.close()
        except OSError as err:
            log.info("connection from %s ended: %s", address, err)
            with contextlib.suppress(OSError):
                conn.close()

    # -- MixDesk's questions ------------------------------------------------------------

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        line = b"M"
        while not line.endswith(b"\n") and len(line) < 256:
            chunk = conn.recv(1)
            if not chunk:
                return
            line += chunk
        words = line.decode("ascii", errors="replace").split()
        command = words[1] if len(words) > 1 else ""
        reply: dict[str, object]
        if command == "HELLO":
            with self._lock:
                busy = self._counters.active > 0
            reply = {**self._describe(), "busy": busy}
        elif command == "SPEED" and len(words) > 2 and words[2].isdigit():
            wanted = int(words[2])
            got, start = 0, time.perf_counter()
            while got < wanted:
                chunk = conn.recv(min(_CHUNK, wanted - got))
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
        else:
            reply = {"error": f"unknown question {command!r}"}
        conn.sendall(json.dumps(reply).encode() + b"\n")

    # -- llama.cpp's sessions -----------------------------------------------------------

    def _relay(self, conn: socket.socket, first: bytes, client: str) -> None:
        backend = socket.create_connection(self._backend)
        backend.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._counters.sessions += 1
            self._counters.active += 1
            before = (self._counters.received_bytes, self._counters.sent_bytes)
        self._on_session(f"llama.cpp client {client} connected")
        backend.sendall(first)
        self._count(received=len(first))
        back = threading.Thread(target=self._pump, args=(backend, conn, False), daemon=True)
        back.start()
        self._pump(conn, backend, True)
        back.join()
        for s in (conn, backend):
            with contextlib.suppress(OSError):
                s.close()
        with self._lock:
            self._counters.active -= 1
            got = self._counters.received_bytes - before[0]
            sent = self._counters.sent_bytes - before[1]
        self._on_session(
            f"llama.cpp client {client} disconnected (received {got / 2**20:.1f} MiB, "
            f"sent {sent / 2**20:.1f} MiB)"
        )

    def _pump(self, src: socket.socket, dst: socket.socket, inbound: bool) -> None:
        """Copy ``src`` to ``dst`` until either side closes; then close both directions."""
        try:
            while True:
                data = src.recv(_CHUNK)
                if not data:
                    break
                dst.sendall(data)
                self._count(**({"received": len(data)} if inbound else {"sent": len(data)}))
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def _count(self, *, received: int = 0, sent: int = 0) -> None:
        with self._lock:
            self._counters.received_bytes += received
            self._counters.sent_bytes += sent


def start_llama_rpc_server(
    *, device: str | None, threads: int, cache_dir: str | None, timeout: float = 30.0
) -> int:
    """Start llama.cpp's RPC server on a free loopback port in a thread; return the port.

    Raises:
        AdapterError: no RPC backend or no such device.
        OSError: it did not start listening in time.
    """
    from mixdesk.core.engine import llama_adapter

    llama_adapter.rpc_device(device)  # an unknown device is said here, not in the thread
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    thread = threading.Thread(
        target=llama_adapter.serve_rpc,
        args=(f"127.0.0.1:{port}",),
        kwargs={"threads": threads, "cache_dir": cache_dir, "device": device},
        daemon=True,  # it never returns; the process ends it
        name="llama.cpp RPC server",
    )
    thread.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and thread.is_alive():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return port
        except OSError:
            time.sleep(0.05)
    raise OSError(f"llama.cpp's RPC server did not start on 127.0.0.1:{port}")
