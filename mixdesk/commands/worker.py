"""``mixdesk worker``: lend this machine's GPU (or CPU) to MixDesk on another machine.

The model runs on the other machine (``mixdesk chat MODEL --worker THIS-HOST:50052``); this
one holds some of its layers. llama.cpp's RPC protocol has no password and no encryption, so
the worker puts a front before it: only clients that prove they hold the worker's secret get
in, over TLS with the worker's own certificate when they come from another machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path

from mixdesk import paths
from mixdesk.core.machine import worker_security as security
from mixdesk.core.machine.hardware import format_bytes, parse_size, physical_cores
from mixdesk.core.machine.net import is_loopback
from mixdesk.core.machine.rpc_worker import local_versions
from mixdesk.errors import MixdeskError

#: Addresses that listen on every interface (the worker is then reached by this machine's name).
_EVERY_INTERFACE = ("0.0.0.0", "::")  # noqa: S104 - compared with, never bound here


def _home_relative(path: Path) -> str:
    """``path`` as ``~/...`` when it is under the home folder (the same place on another
    machine, usually)."""
    try:
        return f"~/{path.relative_to(Path.home()).as_posix()}"
    except ValueError:
        return str(path)


def how_to_connect(secret_file: Path, made: bool, fingerprint: str, reach: str) -> str:
    """What the worker prints at start: where its secret is, how the other machine uses it,
    and the certificate fingerprint that machine pins on first use."""
    return (
        f"mixdesk worker: secret in {secret_file}{' (made now)' if made else ''}; on the machine "
        f"that runs the model, copy that file to {_home_relative(security.default_secret_file())} "
        f"(or point {security.SECRET_FILE_ENV} at it), then: mixdesk chat MODEL --worker {reach}\n"
        f"mixdesk worker: TLS certificate {fingerprint} (each machine pins it on its first "
        f"connection, in {_home_relative(security.pins_file())}: compare it there once).\n"
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
    listener.listen(128)
    return listener


def _say(line: str) -> None:
    sys.stderr.write(f"mixdesk worker: {line}\n")
    sys.stderr.flush()


def _more_file_descriptors() -> None:
    """Raise the soft limit on open files to the hard one: llama.cpp's own server stops for
    good when its accept() runs out of descriptors (the front survives that; llama.cpp not)."""
    if sys.platform != "win32":
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and soft < hard:
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_worker(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C; returns the exit status."""
    from mixdesk.core.engine import llama_adapter
    from mixdesk.core.engine.rpc_backend import start_llama_rpc_server
    from mixdesk.core.engine.rpc_front import FrontLimits, WorkerFront
    from mixdesk.core.machine.rpc_frames import TensorCache

    # A client that goes away makes llama.cpp's send() raise SIGPIPE (it passes no
    # MSG_NOSIGNAL): ignored, the send fails and only that session ends.
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    _more_file_descriptors()
    listener = _listen(args.host, args.port)  # a taken port is said before llama.cpp starts
    try:
        device = llama_adapter.rpc_device(args.device)
    except llama_adapter.AdapterError as err:
        raise MixdeskError(f"{str(err)[0].upper()}{str(err)[1:]}.") from None
    secret, secret_file, made = security.worker_secret(
        Path(args.secret_file).expanduser() if args.secret_file else None
    )
    certificate = security.worker_certificate()
    cache_max = parse_size(args.cache_max)
    cache_dir = (
        None if args.no_cache else paths.ensure_dir(Path(args.cache_dir or default_cache_dir()))
    )
    cache = TensorCache(cache_dir, cache_max) if cache_dir else None
    if cache is not None:
        cache.prune()
    threads = args.threads or physical_cores()
    backend_port = start_llama_rpc_server(
        device=device.name, threads=threads, cache_dir=str(cache_dir) if cache_dir else None
    )
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
            "cache_bytes": cache_max if cache else 0,
        }

    address = f"{args.host}:{args.port}"
    wildcard = not args.host or args.host in _EVERY_INTERFACE
    reach = f"{socket.gethostname()}:{args.port}" if wildcard else address
    out = sys.stderr
    out.write(
        f"mixdesk worker: offering {device.name} ({device.description}), "
        f"{format_bytes(device.free_bytes)} free of {format_bytes(device.total_bytes)}, "
        f"at {address} (MixDesk {mixdesk_version}, llama-cpp-python {llama_version}).\n"
        f"mixdesk worker: cache folder {cache_dir or 'none (--no-cache)'}"
        f"{f', at most {format_bytes(cache_max)}' if cache else ''}; llama.cpp's RPC server "
        f"listens on 127.0.0.1:{backend_port} for this front only. Ctrl-C stops.\n"
    )
    out.write(how_to_connect(secret_file, made, certificate.fingerprint, reach))
    if not is_loopback(args.host):
        out.write(
            f"mixdesk worker: listening on {args.host}: other machines reach it over TLS, "
            "and only with the secret.\n"
        )
    out.flush()
    front = WorkerFront(
        listener,
        backend_port,
        describe,
        secret=secret,
        certificate=certificate,
        cache=cache,
        limits=FrontLimits(
            client_timeout=float(args.client_timeout),
            idle_timeout=float(args.idle_timeout) or None,
        ),
        on_session=_say,
    )
    try:
        front.serve_forever()
    except KeyboardInterrupt:
        out.write("mixdesk worker: stopped.\n")
        out.flush()
    # llama.cpp's server thread never returns: end the process without waiting for it.
    os._exit(0)
