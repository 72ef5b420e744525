"""``mixdesk worker``: lend this machine's GPU (or CPU) to MixDesk on another machine.

The model runs on the other machine (``mixdesk chat MODEL --worker THIS-HOST:50052``); this
one holds some of its layers. llama.cpp's RPC protocol has no password and no encryption, so
the worker listens on 127.0.0.1 unless told otherwise, and says what that means when it is.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from mixdesk import paths
from mixdesk.core.hardware import format_bytes, physical_cores
from mixdesk.core.rpc_worker import local_versions
from mixdesk.core.serve_security import is_loopback
from mixdesk.errors import MixdeskError

#: Addresses that listen on every interface (the worker is then reached by this machine's name).
_EVERY_INTERFACE = ("0.0.0.0", "::")  # noqa: S104 - compared with, never bound here


def exposure_warning(host: str, port: int) -> str:
    """The risk of a worker reachable from other machines, and the remedy (an SSH tunnel)."""
    return (
        f"mixdesk worker: warning: listening on {host} lets anyone who can reach port {port} "
        "use this machine's llama.cpp: its RPC protocol has no password and no encryption, so "
        "they can run the code paths of its RPC server (allocate memory, write and read "
        "tensors, compute) and read everything it computes, your prompts' activations "
        "included. Use it only on a network you trust, or keep the default 127.0.0.1 and "
        "reach it through an SSH tunnel from the machine that runs the model:\n"
        f"    ssh -N -L {port}:127.0.0.1:{port} USER@THIS-MACHINE\n"
        f"then use --worker 127.0.0.1:{port} there.\n"
    )


def default_cache_dir() -> Path:
    """Where a worker keeps large tensors it has received, so a second load skips them."""
    return paths.cache_dir() / "rpc"


def _listen(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except OSError:
        raise MixdeskError(f"Cannot listen on '{host}': no such address on this machine.") from None
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(address)
    except OSError:
        listener.close()
        raise MixdeskError(
            f"Port {port} on {host} is already in use; choose another with --port."
        ) from None
    listener.listen(8)
    return listener


def _say(line: str) -> None:
    sys.stderr.write(f"mixdesk worker: {line}\n")
    sys.stderr.flush()


def run_worker(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C; returns the exit status."""
    from mixdesk.core.engine import llama_adapter
    from mixdesk.core.engine.rpc_front import WorkerFront, start_llama_rpc_server

    listener = _listen(args.host, args.port)  # a taken port is said before llama.cpp starts
    try:
        device = llama_adapter.rpc_device(args.device)
    except llama_adapter.AdapterError as err:
        raise MixdeskError(f"{str(err)[0].upper()}{str(err)[1:]}.") from None
    cache = (
        None
        if args.no_cache
        else str(paths.ensure_dir(Path(args.cache_dir or default_cache_dir())))
    )
    threads = args.threads or physical_cores()
    backend_port = start_llama_rpc_server(device=device.name, threads=threads, cache_dir=cache)
    mixdesk_version, llama_version = local_versions()

    def describe() -> dict[str, object]:
        now = next((d for d in llama_adapter.backend_devices() if d.name == device.name), device)
        return {
            "mixdesk": mixdesk_version,
            "llama_cpp_python": llama_version,
            "device": device.name,
            "description": device.description,
            "kind": device.kind,
            "free_bytes": now.free_bytes,
            "total_bytes": now.total_bytes,
            "cache_dir": cache or "",
        }

    address = f"{args.host}:{args.port}"
    wildcard = not args.host or args.host in _EVERY_INTERFACE
    reach = f"{socket.gethostname()}:{args.port}" if wildcard else address
    out = sys.stderr
    out.write(
        f"mixdesk worker: offering {device.name} ({device.description}), "
        f"{format_bytes(device.free_bytes)} free of {format_bytes(device.total_bytes)}, "
        f"at {address} (MixDesk {mixdesk_version}, llama-cpp-python {llama_version}).\n"
        f"mixdesk worker: cache folder {cache or 'none (--no-cache)'}. "
        f"Use it with: mixdesk chat MODEL --worker {reach}. Ctrl-C stops.\n"
    )
    if not is_loopback(args.host):
        out.write(exposure_warning(args.host, args.port))
    out.flush()
    front = WorkerFront(
        listener,
        backend_port,
        describe,
        on_session=_say,
    )
    try:
        front.serve_forever()
    except KeyboardInterrupt:
        out.write("mixdesk worker: stopped.\n")
        out.flush()
    # llama.cpp's server thread never returns: end the process without waiting for it.
    os._exit(0)
