"""The engine's side of a worker link: llama.cpp's RPC client talks plain TCP to a relay here.

llama.cpp's RPC client knows neither MixDesk's secret nor TLS. So before it connects, the engine
starts one relay per worker on a loopback port of its own and gives llama.cpp that address;
each connection llama.cpp opens is carried to the worker over an authenticated (and, off
loopback, TLS) channel (:func:`mixdesk.core.machine.worker_channel.open_channel` with ``RELAY``).

The relay accepts only connections from this very process (on Linux it checks that the
connecting socket is one of this process's file descriptors), so another program on this
machine cannot borrow the engine's proven link. llama.cpp names its devices by the address it
was given: a log line ``mixdesk: llama.cpp reaches the worker W through R`` lets
:func:`mixdesk.core.engine.diagnose.buffer_sizes` put the worker's address back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading

from mixdesk.core.machine import worker_channel
from mixdesk.core.machine.tunnel import relay
from mixdesk.errors import WorkerError

log = logging.getLogger(__name__)

#: How the log line that names a relay's worker begins.
RELAY_LINE = "mixdesk: llama.cpp reaches the worker"
#: endpoint -> the relay address llama.cpp was given, for this process.
_relays: dict[str, str] = {}
_lock = threading.Lock()


def relay_for(endpoint: str, *, timeout: float = 10.0) -> str:
    """The loopback address llama.cpp's RPC client should use for the worker at ``endpoint``
    (a relay started on first use, for the life of this process)."""
    with _lock:
        if endpoint in _relays:
            return _relays[endpoint]
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        local = f"127.0.0.1:{listener.getsockname()[1]}"
        threading.Thread(
            target=_accept_forever,
            args=(listener, endpoint, timeout),
            daemon=True,
            name=f"relay to {endpoint}",
        ).start()
        _relays[endpoint] = local
    # In the engine's log (llama.cpp's log goes there too): which relay is which worker.
    sys.stderr.write(f"{RELAY_LINE} {endpoint} through {local}\n")
    sys.stderr.flush()
    return local


def worker_of(address: str) -> str:
    """The worker endpoint behind a relay ``address`` (``address`` itself if it is none)."""
    with _lock:
        for endpoint, local in _relays.items():
            if local == address:
                return endpoint
    return address


def _accept_forever(listener: socket.socket, endpoint: str, timeout: float) -> None:
    while True:
        try:
            conn, address = listener.accept()
        except OSError as err:
            log.warning("relay to %s: accept failed: %s", endpoint, err)
            continue
        if not _from_this_process(int(address[1]), int(listener.getsockname()[1])):
            log.warning("relay to %s: refused a connection from another process", endpoint)
            conn.close()
            continue
        threading.Thread(
            target=_carry, args=(conn, endpoint, timeout), daemon=True, name="relay session"
        ).start()


def _carry(conn: socket.socket, endpoint: str, timeout: float) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        link = worker_channel.open_channel(endpoint, "RELAY", timeout=timeout)
        answer = worker_channel.read_answer(link, endpoint)
        if answer.get("relay") is not True:
            raise WorkerError(
                f"The worker at {endpoint} did not open a session.", endpoint=endpoint
            )
    except WorkerError as err:
        # llama.cpp's client ends this process on a connection that closes: say why first.
        sys.stderr.write(f"mixdesk: the worker {endpoint} refused the session: {err}\n")
        sys.stderr.flush()
        conn.close()
        return
    link.settimeout(None)
    ending = relay(conn, link)
    log.info("relay to %s ended: %s %s", endpoint, ending.by.value, ending.why)


def _from_this_process(peer_port: int, relay_port: int) -> bool:
    """Whether the connection from 127.0.0.1:``peer_port`` is a socket of this process."""
    inode = None
    try:
        with open("/proc/net/tcp", encoding="ascii") as fh:
            next(fh, None)
            for line in fh:
                fields = line.split()
                local, remote = fields[1], fields[2]
                if (
                    int(local.rsplit(":", 1)[1], 16) == peer_port
                    and int(remote.rsplit(":", 1)[1], 16) == relay_port
                ):
                    inode = fields[9]
                    break
    except (OSError, ValueError, IndexError):
        return _own_connection(peer_port, relay_port)  # not Linux: ask the system (psutil)
    if inode is None:
        return False
    target = f"socket:[{inode}]"
    with contextlib.suppress(OSError):
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/self/fd/{fd}") == target:
                    return True
    return False


def _own_connection(peer_port: int, relay_port: int) -> bool:
    """Whether this process holds the TCP connection 127.0.0.1:``peer_port`` ->
    :``relay_port`` (macOS, Windows: psutil lists a process's own connections without
    privileges). Refuses when it cannot tell: the relay carries a proven link."""
    import psutil

    try:
        connections = psutil.Process().net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return False
    return any(
        c.laddr and c.raddr and c.laddr.port == peer_port and c.raddr.port == relay_port
        for c in connections
    )
