"""Workers: other machines' GPUs (or CPUs) that a model's layers can be spread over.

A worker is ``mixdesk worker`` on the other machine: llama.cpp's RPC server behind a small
front that speaks MixDesk's own handshake on the same port (:mod:`.engine.rpc_front`). This
module asks that front its questions, in plain Python sockets: no llama.cpp, so it runs
anywhere, and nothing here can abort a process. That matters because llama.cpp's RPC client
ends its whole process (``GGML_ABORT``) on a refused connection, a protocol mismatch or a
server that dies; so before the engine lets llama.cpp connect it asks the front here whether
the worker is there, free, and runs the same MixDesk and llama-cpp-python versions.

The wire protocol, one connection per question. A connection off loopback is TLS first (the
worker's self-signed certificate, pinned on first use); on loopback it may be plain. Then the
client and the worker prove to each other that they hold the worker secret
(:mod:`.worker_security`) and the client asks one question in its proof line (that handshake
is :mod:`.worker_channel`):

- ``HELLO`` -> one JSON line: versions, device, free memory, busy, the tensor cache's cap.
- ``SPEED N`` then N bytes -> one JSON line once all arrived: the link speed.
- ``STATS`` -> one JSON line: bytes llama.cpp's sessions received and sent.
- ``RELAY`` -> ``{"relay": true}``, then the connection carries llama.cpp's RPC session (the
  engine's local relay, :mod:`.engine.rpc_relay`, opens it for llama.cpp's client).

A refusal is one JSON line ``{"refused": REASON}``; a client that has not proven itself hears
nothing but "authentication required".

The app and the terminal commands run :func:`probe_in_child` (a short-lived child process),
so a probe never holds up the window, and whatever happens to it happens to the child.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from importlib import metadata

from mixdesk import __version__
from mixdesk.core.machine.hardware import GpuInfo, HardwareInfo, format_bytes, format_rate
from mixdesk.core.machine.worker_channel import open_channel, parse_endpoint, read_answer
from mixdesk.errors import (
    InvalidArgumentError,
    WorkerBusyError,
    WorkerError,
    WorkerUnreachableError,
    WorkerVersionError,
)

log = logging.getLogger(__name__)

#: Bytes sent to measure the link when a worker is added (about 70 ms on gigabit Ethernet).
SPEED_PROBE_BYTES = 8 << 20
#: llama.cpp sends tensors larger than this as a hash first, so a worker's cache can skip them.
CACHE_THRESHOLD_BYTES = 10 << 20


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker offers, as its front answered the handshake."""

    endpoint: str
    mixdesk_version: str
    llama_cpp_version: str
    device: str  # llama.cpp's device name on the worker: "CUDA0", "CPU"
    description: str  # the GPU's (or CPU's) name
    kind: str  # "gpu", "igpu", "cpu"
    free_bytes: int
    total_bytes: int
    busy: bool
    #: The most the worker's tensor cache keeps (0: no cache).
    cache_bytes: int = 0
    #: Measured bytes per second from here to the worker (0: not measured).
    link_bytes_per_s: float = 0.0

    @property
    def name(self) -> str:
        """How the plan and the window name this worker."""
        return f"{self.description or self.device} on {self.endpoint}"

    def as_gpu(self) -> GpuInfo:
        """This worker as an offload device for the planner (llama.cpp's RPC device)."""
        return GpuInfo(
            name=self.name,
            backend="rpc",
            total_bytes=self.total_bytes,
            free_bytes=self.free_bytes,
            endpoint=self.endpoint,
            link_bytes_per_s=self.link_bytes_per_s,
            cache_bytes=self.cache_bytes,
        )

    def summary(self) -> str:
        """One line: device, free memory, link speed."""
        link = f", link {format_rate(self.link_bytes_per_s)}" if self.link_bytes_per_s else ""
        return (
            f"{self.endpoint}: {self.description or self.device} ({self.device}), "
            f"{format_bytes(self.free_bytes)} free of {format_bytes(self.total_bytes)}{link}"
        )


@dataclass(frozen=True)
class WorkerStats:
    """Bytes llama.cpp's sessions moved through a worker's front since it started."""

    sessions: int
    received_bytes: int
    sent_bytes: int
    active: bool


def local_versions() -> tuple[str, str]:
    """(MixDesk, llama-cpp-python) versions on this machine, without loading llama.cpp."""
    try:
        llama = metadata.version("llama_cpp_python")
    except metadata.PackageNotFoundError:
        llama = "not installed"
    return __version__, llama


def _ask(endpoint: str, command: str, *, timeout: float, payload: int = 0) -> dict[str, object]:
    with open_channel(endpoint, command, timeout=timeout) as sock:
        try:
            chunk = bytes(1 << 20)
            left = payload
            while left > 0:
                n = min(left, len(chunk))
                sock.sendall(chunk[:n])
                left -= n
        except OSError as err:
            raise WorkerUnreachableError(
                f"The worker at {endpoint} closed the connection ({err.strerror or err}); "
                "check that `mixdesk worker` still runs there.",
                endpoint=endpoint,
            ) from None
        return read_answer(sock, endpoint)


def hello(endpoint: str, *, timeout: float = 5.0) -> WorkerInfo:
    """Ask the worker at ``endpoint`` what it offers (no version check).

    Raises:
        WorkerUnreachableError: nothing listens there.
        WorkerAuthError, WorkerFingerprintError: the secret or the certificate is not right.
        WorkerError: something listens, but not a MixDesk worker.
    """
    body = _ask(endpoint, "HELLO", timeout=timeout)
    try:
        return WorkerInfo(
            endpoint=endpoint,
            mixdesk_version=str(body["mixdesk"]),
            llama_cpp_version=str(body["llama_cpp_python"]),
            device=str(body["device"]),
            description=str(body.get("description", "")),
            kind=str(body.get("kind", "")),
            free_bytes=int(body["free_bytes"]),  # type: ignore[call-overload]
            total_bytes=int(body["total_bytes"]),  # type: ignore[call-overload]
            busy=bool(body.get("busy", False)),
            cache_bytes=int(body.get("cache_bytes") or 0),  # type: ignore[call-overload]
        )
    except (KeyError, TypeError, ValueError):
        raise WorkerError(
            f"The worker at {endpoint} sent an unreadable answer; update MixDesk there.",
            endpoint=endpoint,
        ) from None


def measure_link(endpoint: str, *, nbytes: int = SPEED_PROBE_BYTES, timeout: float = 30.0) -> float:
    """Send ``nbytes`` to the worker and return the measured bytes per second.

    The time runs from the first byte sent to the worker's reply that all arrived, so it
    includes one round trip: slightly pessimistic, like the load it predicts.
    """
    start = time.perf_counter()
    body = _ask(endpoint, f"SPEED {nbytes}", timeout=timeout, payload=nbytes)
    seconds = time.perf_counter() - start
    if int(body.get("received", -1)) != nbytes:  # type: ignore[call-overload]
        raise WorkerError(
            f"The worker at {endpoint} did not receive the speed probe; try again.",
            endpoint=endpoint,
        )
    return nbytes / max(seconds, 1e-6)


def stats(endpoint: str, *, timeout: float = 5.0) -> WorkerStats:
    """The bytes llama.cpp's sessions moved through the worker (for measurements)."""
    body = _ask(endpoint, "STATS", timeout=timeout)
    return WorkerStats(
        sessions=int(body["sessions"]),  # type: ignore[call-overload]
        received_bytes=int(body["received_bytes"]),  # type: ignore[call-overload]
        sent_bytes=int(body["sent_bytes"]),  # type: ignore[call-overload]
        active=bool(body["active"]),
    )


def check_versions(info: WorkerInfo) -> None:
    """Refuse a worker whose MixDesk or llama-cpp-python differs from this machine's.

    Raises:
        WorkerVersionError: naming both versions.
    """
    mixdesk, llama = local_versions()
    if (info.mixdesk_version, info.llama_cpp_version) != (mixdesk, llama):
        raise WorkerVersionError(
            f"The worker at {info.endpoint} runs MixDesk {info.mixdesk_version} with "
            f"llama-cpp-python {info.llama_cpp_version}, but this machine runs MixDesk "
            f"{mixdesk} with llama-cpp-python {llama}; install the same versions on both.",
            endpoint=info.endpoint,
        )


def probe(endpoint: str, *, speed: bool = True, timeout: float = 5.0) -> WorkerInfo:
    """Handshake, version check and (optionally) a link-speed measurement.

    Raises:
        WorkerUnreachableError, WorkerVersionError, WorkerError: the worker cannot be used.
    """
    info = hello(endpoint, timeout=timeout)
    check_versions(info)
    if speed and not info.busy:
        info = replace(info, link_bytes_per_s=measure_link(endpoint))
    return info


#: Endpoints this process has checked and let llama.cpp connect to (the connection stays).
_connected: set[str] = set()


def check_before_connecting(endpoint: str, *, timeout: float = 5.0) -> None:
    """What the engine calls before llama.cpp connects to ``endpoint``.

    llama.cpp aborts the process on a refused connection or a protocol mismatch, and waits
    forever for a server busy with another client; this turns each into a sentence first. An
    endpoint this process already connected to is not asked again: its own session makes it
    busy.

    Raises:
        WorkerUnreachableError, WorkerVersionError, WorkerBusyError, NotAWorkerError (a plain
        llama.cpp rpc-server: its versions cannot be checked), WorkerAuthError,
        WorkerFingerprintError, WorkerError.
    """
    if endpoint in _connected:
        return
    info = hello(endpoint, timeout=timeout)  # a plain llama.cpp rpc-server: NotAWorkerError
    check_versions(info)
    if info.busy:
        raise WorkerBusyError(
            f"The worker at {endpoint} is serving another MixDesk (llama.cpp serves one at a "
            "time); unload the model there, or remove this worker.",
            endpoint=endpoint,
        )
    _connected.add(endpoint)


def gone(endpoints: Sequence[str], *, timeout: float = 1.0) -> list[str]:
    """The endpoints whose worker no longer answers (after the engine died using them)."""
    missing = []
    for endpoint in endpoints:
        try:
            hello(endpoint, timeout=timeout)
        except WorkerError:
            missing.append(endpoint)
    return missing


def with_devices(hw: HardwareInfo, workers: Sequence[GpuInfo]) -> HardwareInfo:
    """``hw`` with ``workers`` as its RPC devices (in place of any it had), ahead of the local
    GPUs as llama.cpp orders them."""
    local = [g for g in hw.gpus if g.backend != "rpc"]
    return replace(hw, gpus=[*workers, *local])


# -- the probe child -----------------------------------------------------------------


def probe_command(endpoint: str, *, speed: bool) -> list[str]:
    """The command line of a probe child (also inside a frozen bundle)."""
    base = (
        [sys.executable, "--worker-probe"]
        if getattr(sys, "frozen", False)
        else [sys.executable, "-m", "mixdesk.core.machine.rpc_worker"]
    )
    return [*base, endpoint, *([] if speed else ["--no-speed"])]


def probe_in_child(endpoint: str, *, speed: bool = True, timeout: float = 60.0) -> WorkerInfo:
    """:func:`probe` in a short-lived child process: the caller never blocks on the network
    in its own process and is never touched by what happens there.

    Raises:
        WorkerUnreachableError, WorkerVersionError, WorkerError: as :func:`probe`.
    """
    parse_endpoint(endpoint)  # a bad address is the user's, said at once
    try:
        done = subprocess.run(
            probe_command(endpoint, speed=speed),
            capture_output=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        )
    except subprocess.TimeoutExpired:
        raise WorkerUnreachableError(
            f"The worker at {endpoint} did not answer within {timeout:.0f} s; check the "
            "network, or remove it.",
            endpoint=endpoint,
        ) from None
    try:
        body = json.loads(done.stdout.decode("utf-8").strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise WorkerError(
            f"Checking the worker at {endpoint} failed (exit status {done.returncode}); "
            "the log has the details.",
            endpoint=endpoint,
        ) from None
    if "error" in body:
        from mixdesk import errors

        cls = getattr(errors, str(body["error"]), WorkerError)
        if not (isinstance(cls, type) and issubclass(cls, WorkerError)):
            cls = WorkerError
        raise cls(str(body["message"]), endpoint=endpoint)
    return WorkerInfo(**body)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mixdesk.core.machine.rpc_worker HOST:PORT [--no-speed]``: one JSON line on stdout."""
    args = list(sys.argv[1:] if argv is None else argv)
    endpoint = args[0] if args else ""
    try:
        info = probe(endpoint, speed="--no-speed" not in args)
        out: dict[str, object] = asdict(info)
    except (WorkerError, InvalidArgumentError) as err:
        out = {"error": type(err).__name__, "message": str(err)}
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
