"""Copy bytes both ways between two sockets (either may be TLS) in one thread.

Used twice for every relayed llama.cpp session: in the engine, between llama.cpp's RPC client
(plain TCP on loopback) and the worker (TLS off loopback); on the worker, between that link
and llama.cpp's RPC server. One thread drives both directions, so a TLS connection is never
read and written by two threads at once (OpenSSL does not allow it), and the timeouts live in
one place.
"""

from __future__ import annotations

import contextlib
import enum
import selectors
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

#: Small buffers: a worker may run with little memory to spare beside llama.cpp's buffers
#: (a session's buffers stay under a third of a MiB, reused from the heap rather than mapped
#: anew), and loopback is fast anyway.
_CHUNK = 64 << 10
#: Stop reading a side while this much is waiting to be written to the other (backpressure).
_HIGH_WATER = 256 << 10
_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class Ender(enum.Enum):
    """Who ended a relayed session."""

    CLIENT = "client"  # the first socket's side closed or went away
    SERVER = "server"  # the second's
    RELAY = "relay"  # a timeout, a refused message, an error here


@dataclass(frozen=True)
class Ending:
    """Why :func:`relay` returned."""

    by: Ender
    why: str  # in a few words: "closed", "idle for 600 s", a refusal


class Refused(Exception):  # noqa: N818 - a verdict, raised by an inspector to end the session
    """An inspector's reason to end the session (an over-size or unknown frame)."""


class Inspector(Protocol):
    """Sees (and may rewrite) the bytes from the first socket before they go on."""

    def feed(self, data: bytes) -> bytes:
        """Return the bytes to pass on; raise :class:`Refused` to end the session."""

    @property
    def mid_frame(self) -> bool:
        """Whether the first socket stopped in the middle of a message."""


def _recv(sock: socket.socket) -> bytes | None:
    """What ``sock`` has now (b"" at its end, None when nothing is there yet)."""
    try:
        data = sock.recv(_CHUNK)
    except _WOULD_BLOCK:
        return None
    except (ssl.SSLZeroReturnError, ssl.SSLEOFError, ConnectionError):
        return b""
    if data and isinstance(sock, ssl.SSLSocket):
        # Decrypted bytes OpenSSL holds back do not make the socket readable: take them now.
        parts = [data]
        while sock.pending():
            try:
                parts.append(sock.recv(_CHUNK))
            except _WOULD_BLOCK:
                break
        data = b"".join(parts)
    return data


def relay(
    a: socket.socket,
    b: socket.socket,
    *,
    inspector: Inspector | None = None,
    on_a_to_b: Callable[[int], None] | None = None,
    on_b_to_a: Callable[[int], None] | None = None,
    idle_timeout: float | None = None,
    stall_timeout: float | None = None,
) -> Ending:
    """Copy ``a`` <-> ``b`` until either side ends, a timeout passes or ``inspector`` refuses;
    both sockets are closed then.

    Args:
        a: the client's side (its bytes go through ``inspector``).
        b: the server's side.
        on_a_to_b, on_b_to_a: told the byte count of each piece passed on.
        idle_timeout: end when nothing moved either way this long (None: never).
        stall_timeout: end when ``a`` stopped mid-message this long (None: never).

    Returns:
        Who ended it and why.
    """
    pipe = _Pipe(a, b, inspector, {a: on_a_to_b, b: on_b_to_a})
    try:
        while True:
            ending = pipe.step() or pipe.timed_out(idle_timeout, stall_timeout)
            if ending is not None:
                return ending
    except Refused as err:
        return Ending(Ender.RELAY, str(err))
    except MemoryError:
        return Ending(Ender.RELAY, "out of memory for its buffers")
    except OSError as err:
        return Ending(Ender.RELAY, f"connection error ({err.strerror or err})")
    finally:
        pipe.close()


class _Pipe:
    """The state of one :func:`relay`: what waits to be written to each side, and when."""

    def __init__(
        self,
        a: socket.socket,
        b: socket.socket,
        inspector: Inspector | None,
        counters: dict[socket.socket, Callable[[int], None] | None],
    ) -> None:
        for s in (a, b):
            s.setblocking(False)
        self.a, self.b = a, b
        self.inspector = inspector
        self.counters = counters
        self.out: dict[socket.socket, bytearray] = {a: bytearray(), b: bytearray()}
        self.other = {a: b, b: a}
        self.sel = selectors.DefaultSelector()
        self.registered: dict[socket.socket, int] = {}
        self.last_move = self.last_from_a = time.monotonic()

    def _register(self) -> None:
        for s in (self.a, self.b):
            events = selectors.EVENT_READ if len(self.out[self.other[s]]) < _HIGH_WATER else 0
            if self.out[s]:
                events |= selectors.EVENT_WRITE
            if self.registered.get(s) == events:
                continue
            if s in self.registered:
                self.sel.unregister(s)
                del self.registered[s]
            if events:
                self.sel.register(s, events)
                self.registered[s] = events

    def step(self) -> Ending | None:
        """Wait up to a second and move what can be moved; returns how it ended, if it did."""
        self._register()
        for key, mask in self.sel.select(timeout=1.0):
            s: socket.socket = key.fileobj  # type: ignore[assignment]
            if mask & selectors.EVENT_READ:
                ending = self._read(s)
                if ending is not None:
                    return ending
            if mask & selectors.EVENT_WRITE and self.out[s]:
                ending = self._write(s)
                if ending is not None:
                    return ending
        return None

    def _ender(self, s: socket.socket) -> Ender:
        return Ender.CLIENT if s is self.a else Ender.SERVER

    def _read(self, s: socket.socket) -> Ending | None:
        data = _recv(s)
        if data == b"":
            return Ending(self._ender(s), "closed")
        if data:
            self.last_move = time.monotonic()
            if s is self.a:
                self.last_from_a = self.last_move
                if self.inspector is not None:
                    data = self.inspector.feed(data)
            counter = self.counters[s]
            if counter is not None:
                counter(len(data))
            self._pass_on(self.other[s], data)
        return None

    def _pass_on(self, dst: socket.socket, data: bytes) -> None:
        """Send ``data`` to ``dst`` now as far as it takes it; keep the rest for later (so
        the buffers stay small: a worker may run under a tight memory limit)."""
        if not self.out[dst]:
            try:
                sent = dst.send(data)
            except _WOULD_BLOCK:
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        self.out[dst] += data

    def _write(self, s: socket.socket) -> Ending | None:
        try:
            with memoryview(self.out[s]) as view, view[:_CHUNK] as piece:
                sent = s.send(piece)
        except _WOULD_BLOCK:
            return None
        except OSError:
            return Ending(self._ender(s), "went away")
        del self.out[s][:sent]
        self.last_move = time.monotonic()
        return None

    def timed_out(self, idle_timeout: float | None, stall_timeout: float | None) -> Ending | None:
        """How the session ends for lack of progress, if it does."""
        now = time.monotonic()
        if idle_timeout is not None and now - self.last_move > idle_timeout:
            return Ending(Ender.RELAY, f"idle for {idle_timeout:.0f} s")
        if (
            stall_timeout is not None
            and self.inspector is not None
            and self.inspector.mid_frame
            and now - self.last_from_a > stall_timeout
        ):
            return Ending(
                Ender.RELAY, f"stopped in the middle of a message for {stall_timeout:.0f} s"
            )
        return None

    def close(self) -> None:
        """Close both sockets."""
        self.sel.close()
        for s in (self.a, self.b):
            with contextlib.suppress(OSError):
                s.close()
