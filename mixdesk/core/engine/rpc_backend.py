"""llama.cpp's RPC server inside ``mixdesk worker``, on a loopback port only this process knows.

:func:`start_llama_rpc_server` starts it in a thread (through
:mod:`mixdesk.core.engine.llama_adapter`) and waits until it listens; :func:`loopback_clients`
tells who is connected to its port, so the front (:mod:`mixdesk.core.engine.rpc_front`) can
see another process on this machine that bypasses it.
"""

from __future__ import annotations

import socket
import threading
import time


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
        # Wait for the port to listen without connecting (llama.cpp would serve a connection).
        if _listening(port):
            return port
        time.sleep(0.05)
    raise OSError(f"llama.cpp's RPC server did not start on 127.0.0.1:{port}")


def _listening(port: int) -> bool:
    """Whether this very process listens on 127.0.0.1:``port``: llama.cpp's server, not
    another program that took the port between its choice and llama.cpp's bind (asked of the
    system, without connecting: llama.cpp would serve a connection)."""
    import psutil

    try:
        connections = psutil.Process().net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return False
    return any(
        c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in connections
    )


def loopback_clients(port: int) -> set[int]:
    """The ports of established IPv4 loopback connections to ``port`` (Linux; elsewhere
    none are seen)."""
    found = set()
    try:
        with open("/proc/net/tcp", encoding="ascii") as fh:
            next(fh, None)
            for line in fh:
                fields = line.split()
                local, remote, state = fields[1], fields[2], fields[3]
                if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                    found.add(int(remote.rsplit(":", 1)[1], 16))
    except (OSError, ValueError, IndexError):
        return set()
    return found
