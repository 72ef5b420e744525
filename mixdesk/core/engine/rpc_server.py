"""A llama.cpp RPC server in its own process: this machine's GPU (or CPU) as an offload device.

llama.cpp's RPC backend makes a device of another process (on this machine or another one):
the engine registers its address before loading and places layers on it like on a local GPU.
MixDesk uses it to pool GPUs, and the test suite uses a loopback server as a real offload
device on machines without a GPU. The server is llama.cpp's own
(``ggml_backend_rpc_start_server``, through :mod:`.llama_adapter`); it serves one client at a
time and has no authentication, so it listens on 127.0.0.1 unless told otherwise.

Run as ``python -m mixdesk.core.engine.rpc_server --port 50052``.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mixdesk.errors import MixdeskError

DEFAULT_PORT = 50052


def server_command(
    host: str, port: int, *, threads: int = 1, cache_dir: str | None = None
) -> list[str]:
    """The command line of an RPC server process (also inside a frozen bundle)."""
    base = (
        [sys.executable, "--rpc-server"]
        if getattr(sys, "frozen", False)
        else [sys.executable, "-m", "mixdesk.core.engine.rpc_server"]
    )
    args = [*base, "--host", host, "--port", str(port), "--threads", str(threads)]
    return args + (["--cache-dir", cache_dir] if cache_dir else [])


@dataclass
class RpcServerProcess:
    """A running RPC server child process."""

    proc: subprocess.Popen[bytes]
    host: str
    port: int
    log_path: Path | None = None

    @property
    def endpoint(self) -> str:
        """``host:port``, as the engine's ``rpc_servers`` takes it."""
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        """End the server."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_rpc_server(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    threads: int = 1,
    cache_dir: str | None = None,
    log_path: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> RpcServerProcess:
    """Start an RPC server process and wait until it accepts connections.

    Raises:
        MixdeskError: it ended or did not listen in time.
    """
    out = log_path.open("ab") if log_path else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(
            server_command(host, port, threads=threads, cache_dir=cache_dir),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env={**os.environ, **(env or {}), "GGML_NO_BACKTRACE": "1"},
        )
    finally:
        if log_path:
            out.close()  # type: ignore[union-attr]
    server = RpcServerProcess(proc, host, port, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise MixdeskError(
                f"The RPC server on {host}:{port} ended at once (exit status {proc.returncode})."
            )
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return server
        except OSError:
            time.sleep(0.05)
    server.stop()
    raise MixdeskError(f"The RPC server on {host}:{port} did not start within {timeout:.0f} s.")


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until killed."""
    parser = argparse.ArgumentParser(prog="mixdesk-rpc-server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir")
    args = parser.parse_args(argv)
    from mixdesk.core.engine import llama_adapter

    print(f"mixdesk rpc server on {args.host}:{args.port}", flush=True)  # noqa: T201
    llama_adapter.serve_rpc(
        f"{args.host}:{args.port}", threads=args.threads, cache_dir=args.cache_dir
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
