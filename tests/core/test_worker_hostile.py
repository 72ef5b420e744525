"""Hostile clients against a real `mixdesk worker` process on loopback.

Each test does one bad thing to a worker (raw llama.cpp RPC without the secret, garbage, a frame
length of 2^63 or 1 GiB, a client that sends a byte and waits, many idle connections, running
it out of file descriptors, resets at every stage, a wrong secret, a changed certificate, a
direct connection to llama.cpp's internal port) and then checks that the worker still runs and
serves a legitimate client. Traffic goes to 127.0.0.1 only; every loop is bounded.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mixdesk.core.machine import rpc_worker, worker_channel
from mixdesk.core.machine import worker_security as security
from mixdesk.core.machine.rpc_frames import (
    CMD_ALLOC_BUFFER,
    CMD_GRAPH_COMPUTE,
    CMD_HELLO,
    CMD_SET_TENSOR,
    CMD_SET_TENSOR_HASH,
    SET_TENSOR_HASH_BYTES,
    SET_TENSOR_HEADER,
    FrameGuard,
    TensorCache,
)
from mixdesk.core.machine.tunnel import Refused
from mixdesk.errors import WorkerAuthError, WorkerBusyError, WorkerFingerprintError
from tests.helpers.mixdesk_workers import WorkerProcess

HELLO = bytes([CMD_HELLO]) + struct.pack("<Q", 24) + bytes(24)
REFUSED = b'{"refused": "authentication required"}\n'


def frame(cmd: int, body: bytes = b"", *, size: int | None = None) -> bytes:
    """One llama.cpp RPC message (``size`` overrides the header's length)."""
    return bytes([cmd]) + struct.pack("<Q", len(body) if size is None else size) + body


def connect(endpoint: str, timeout: float = 10.0) -> socket.socket:
    host, port = worker_channel.parse_endpoint(endpoint)
    return socket.create_connection((host, port), timeout=timeout)


def read_all(sock: socket.socket, limit: int = 1 << 16) -> bytes:
    """What the worker sends until it closes the connection (bounded)."""
    data = b""
    with contextlib.suppress(OSError):
        while len(data) < limit:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data


def reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashed client does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def still_serves(worker: WorkerProcess) -> None:
    """The worker process runs and a legitimate client gets its handshake and a session."""
    assert worker.proc.poll() is None, worker.output()
    info = rpc_worker.hello(worker.endpoint, timeout=10)
    assert info.device == "CPU"
    with relay_session(worker.endpoint) as link:
        link.sendall(HELLO)
        size = struct.unpack("<Q", recv_exactly(link, 8))[0]
        assert size == 28  # llama.cpp's HELLO answer: the session reached llama.cpp
        recv_exactly(link, size)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"closed after {len(data)} of {n} bytes"
        data += chunk
    return data


@contextlib.contextmanager
def relay_session(endpoint: str) -> Iterator[socket.socket]:
    """A proven connection that carries a llama.cpp session."""
    link = worker_channel.open_channel(endpoint, "RELAY", timeout=10)
    try:
        assert worker_channel.read_answer(link, endpoint) == {"relay": True}
        yield link
    finally:
        link.close()


def wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


# -- without the secret -------------------------------------------------------------------


def test_raw_llama_cpp_hello_gets_only_authentication_required(
    workers: Callable[..., WorkerProcess],
) -> None:
    worker = workers()
    with connect(worker.endpoint) as sock:
        sock.sendall(HELLO)
        assert read_all(sock) == REFUSED  # never llama.cpp's 8-byte size and 28-byte answer
    # GET_DEVICE_MEMORY and ALLOC_BUFFER straight away: the same.
    with connect(worker.endpoint) as sock:
        sock.sendall(frame(11, struct.pack("<I", 0)) + frame(CMD_ALLOC_BUFFER, bytes(12)))
        assert read_all(sock) == REFUSED
    assert re.search(r"refused 127\.0\.0\.1:\d+: not authenticated", worker.output())
    still_serves(worker)


def test_the_handshake_without_the_secret_reveals_nothing(
    workers: Callable[..., WorkerProcess],
) -> None:
    worker = workers()
    for question in (b"MIXDESK/1 HELLO\n", b"MIXDESK/2 HELLO\n", b"MIXDESK/2 AUTH zz\n"):
        with connect(worker.endpoint) as sock:
            sock.sendall(question)
            answer = read_all(sock)
        assert answer == REFUSED, answer
    # A well-formed start gets a challenge, and nothing else until the proof.
    with connect(worker.endpoint) as sock:
        sock.sendall(f"MIXDESK/2 AUTH {'00' * 32}\n".encode())
        words = sock.recv(4096).decode().split()
        assert words[:2] == ["MIXDESK/2", "CHALLENGE"] and len(words) == 4
        sock.sendall(f"MIXDESK/2 PROOF {'00' * 32} HELLO\n".encode())
        assert read_all(sock) == b'{"refused": "authentication failed"}\n'
    assert "wrong secret" in worker.output()
    still_serves(worker)


def test_garbage_and_a_wrong_secret_are_refused(
    workers: Callable[..., WorkerProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = workers()
    for junk in (b"\x00" * 64, bytes(range(256)), b"GET / HTTP/1.1\r\n\r\n", b"M" * 4096):
        with connect(worker.endpoint) as sock:
            with contextlib.suppress(OSError):
                sock.sendall(junk)
            assert read_all(sock) in (REFUSED, b"")
    monkeypatch.setenv(security.SECRET_ENV, "ab" * 32)
    with pytest.raises(WorkerAuthError) as refused:
        rpc_worker.hello(worker.endpoint)
    assert str(refused.value).startswith(
        f"The worker at {worker.endpoint} does not hold this machine's worker secret; copy the "
        "secret file `mixdesk worker` printed there to "
    )
    monkeypatch.delenv(security.SECRET_ENV)
    still_serves(worker)


def test_no_secret_here_is_said_before_anything_is_sent(
    workers: Callable[..., WorkerProcess], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    worker = workers()
    monkeypatch.setenv(security.SECRET_FILE_ENV, str(tmp_path / "none"))
    with pytest.raises(
        WorkerAuthError, match=r"There is no worker secret in .*none for the worker at"
    ):
        rpc_worker.hello(worker.endpoint)


def test_the_secret_file_is_private_and_made_once(workers: Callable[..., WorkerProcess]) -> None:
    worker = workers()
    secret = security.default_secret_file()
    assert secret.stat().st_mode & 0o777 == 0o600
    assert f"secret in {secret} (made now)" in worker.output()
    first = secret.read_text()
    again = workers()
    assert secret.read_text() == first and "(made now)" not in again.output()
    key = security.default_tls_dir() / "worker-key.pem"
    assert key.stat().st_mode & 0o777 == 0o600


# -- frames that would crash or pin llama.cpp --------------------------------------------


@pytest.mark.parametrize(
    ("cmd", "size"),
    [(CMD_SET_TENSOR, 1 << 63), (CMD_SET_TENSOR, 1 << 30), (CMD_GRAPH_COMPUTE, 1 << 40), (99, 8)],
)
def test_an_oversized_or_unknown_frame_is_refused_before_llama_cpp_sees_it(
    workers: Callable[..., WorkerProcess], cmd: int, size: int
) -> None:
    worker = workers()
    # Without the secret it never gets near llama.cpp.
    with connect(worker.endpoint) as sock:
        sock.sendall(frame(cmd, size=size))
        assert read_all(sock) == REFUSED
    # With it, the front reads the header and ends the session instead of relaying it.
    with relay_session(worker.endpoint) as link:
        link.sendall(HELLO)
        recv_exactly(link, 8 + 28)
        link.sendall(frame(cmd, size=size))
        assert read_all(link) == b""
    assert wait_for(
        lambda: (
            f"a message of {size} bytes" in worker.output()
            or f"unknown command {cmd}" in worker.output()
        ),
        5,
    ), worker.output()
    still_serves(worker)


def test_the_first_message_of_a_session_must_be_hello(
    workers: Callable[..., WorkerProcess],
) -> None:
    worker = workers()
    with relay_session(worker.endpoint) as link:
        link.sendall(frame(CMD_ALLOC_BUFFER, bytes(12)))
        assert read_all(link) == b""
    assert wait_for(lambda: "its first message is not llama.cpp's HELLO" in worker.output(), 5)
    still_serves(worker)


def test_a_client_that_sends_one_byte_and_waits_holds_nothing(
    workers: Callable[..., WorkerProcess],
) -> None:
    worker = workers("--client-timeout", "2")
    # Before proving itself: others are served meanwhile, and it is cut off.
    lurker = connect(worker.endpoint)
    lurker.sendall(b"M")
    still_serves(worker)
    assert read_all(lurker) == b""
    lurker.close()
    # Inside a session, mid-message: the worker is busy for others until the cut-off.
    with relay_session(worker.endpoint) as link:
        link.sendall(HELLO[:1])
        time.sleep(0.5)
        assert rpc_worker.hello(worker.endpoint).busy
        with pytest.raises(WorkerBusyError, match="is serving another MixDesk"):
            rpc_worker.check_before_connecting(worker.endpoint)
        assert read_all(link) == b""
    assert wait_for(lambda: "stopped in the middle of a message for 2 s" in worker.output(), 5)
    assert wait_for(lambda: not rpc_worker.hello(worker.endpoint).busy, 5)
    still_serves(worker)


def test_an_idle_session_is_ended(workers: Callable[..., WorkerProcess]) -> None:
    worker = workers("--idle-timeout", "2")
    with relay_session(worker.endpoint) as link:
        link.sendall(HELLO)
        recv_exactly(link, 36)
        assert read_all(link) == b""  # nothing moved for 2 s
    assert wait_for(lambda: "ended: idle for 2 s" in worker.output(), 5)
    still_serves(worker)


def test_sixty_idle_connections_do_not_lock_anyone_out(
    workers: Callable[..., WorkerProcess],
) -> None:
    worker = workers()
    idle = [connect(worker.endpoint) for _ in range(60)]
    try:
        still_serves(worker)
        assert "still unproven when newer connections came" in worker.output()
    finally:
        for sock in idle:
            sock.close()
    still_serves(worker)


def test_running_out_of_file_descriptors_does_not_end_the_worker(
    workers: Callable[..., WorkerProcess],
) -> None:
    # Few descriptors: 60 connections run the worker out of them (EMFILE on accept).
    worker = workers(
        python_prelude="import resource\nresource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))"
    )
    idle = [connect(worker.endpoint) for _ in range(60)]
    try:
        assert wait_for(lambda: "no file descriptors left" in worker.output(), 10)
        assert worker.proc.poll() is None
    finally:
        for sock in idle:
            sock.close()
    still_serves(worker)


def test_resets_at_every_stage_leave_the_worker_running(
    workers: Callable[..., WorkerProcess],
) -> None:
    worker = workers()
    for _ in range(4):  # the old worker died of SIGPIPE by the third raw HELLO and reset
        sock = connect(worker.endpoint)
        sock.sendall(HELLO)
        reset(sock)
        reset(connect(worker.endpoint))
        sock = connect(worker.endpoint)
        sock.sendall(f"MIXDESK/2 AUTH {'11' * 32}\n".encode())
        sock.recv(4096)
        reset(sock)
        # A proven session that asks llama.cpp for something and leaves before the answer:
        # llama.cpp's send() then meets a closed socket (SIGPIPE without MSG_NOSIGNAL).
        link = worker_channel.open_channel(worker.endpoint, "RELAY", timeout=10)
        worker_channel.read_answer(link, worker.endpoint)
        link.sendall(HELLO + frame(11, struct.pack("<I", 0)) * 64)
        reset(link)
        link = worker_channel.open_channel(worker.endpoint, "RELAY", timeout=10)
        worker_channel.read_answer(link, worker.endpoint)
        link.sendall(HELLO + frame(CMD_SET_TENSOR, bytes(100), size=1000))
        reset(link)
        time.sleep(0.2)
        assert worker.proc.poll() is None, worker.output()
    still_serves(worker)


def test_a_direct_client_of_llama_cpps_internal_port_is_reported(
    workers: Callable[..., WorkerProcess],
) -> None:
    worker = workers()
    found = re.search(r"listens on 127\.0\.0\.1:(\d+) for this front only", worker.output())
    assert found, worker.output()
    internal = int(found.group(1))
    with socket.create_connection(("127.0.0.1", internal), timeout=10) as direct:
        direct.sendall(HELLO)
        recv_exactly(direct, 36)  # llama.cpp serves it: the front cannot stop that, but says so
        assert rpc_worker.hello(worker.endpoint).busy
        with pytest.raises(WorkerBusyError), relay_session(worker.endpoint):
            pass
        assert f"uses llama.cpp's internal port 127.0.0.1:{internal} directly" in worker.output()
    assert wait_for(lambda: not rpc_worker.hello(worker.endpoint).busy, 5)
    still_serves(worker)


# -- TLS and the pinned certificate --------------------------------------------------------


def test_tls_link_pins_the_certificate_and_refuses_a_changed_one(
    workers: Callable[..., WorkerProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(security.TLS_ENV, "always")
    worker = workers()
    printed = re.search(r"TLS certificate (SHA256:[0-9a-f:]+)", worker.output())
    assert printed
    still_serves(worker)  # over TLS: hello and a llama.cpp session
    pins = json.loads(security.pins_file().read_text())
    assert pins == {worker.endpoint: printed.group(1)}
    assert security.pins_file().stat().st_mode & 0o777 == 0o600
    # The same address, another certificate (a new machine, or someone in between).
    port = int(worker.endpoint.rsplit(":", 1)[1])
    worker.kill()
    shutil.rmtree(security.default_tls_dir())
    monkeypatch.delenv(security.TLS_ENV)  # the fixture's own check goes plain, over loopback
    again = workers(port=port)
    newer = re.search(r"TLS certificate (SHA256:[0-9a-f:]+)", again.output())
    assert newer and newer.group(1) != printed.group(1)
    monkeypatch.setenv(security.TLS_ENV, "always")
    with pytest.raises(WorkerFingerprintError) as refused:
        rpc_worker.hello(worker.endpoint)
    assert str(refused.value) == (
        f"The worker at {worker.endpoint} presents a certificate ({newer.group(1)}) other than "
        f"the one pinned on first use ({printed.group(1)}), so MixDesk does not connect: someone "
        "may be intercepting the link; if the worker's certificate was made anew, remove its "
        f"line from {security.pins_file()}."
    )
    assert json.loads(security.pins_file().read_text()) == pins  # the pin stays


def test_tls_carries_a_chat_through_two_workers(
    models: dict[str, Path], workers: Callable[..., WorkerProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine's relay: llama.cpp's plain RPC client, carried over TLS with the secret."""
    import subprocess
    import sys

    monkeypatch.setenv(security.TLS_ENV, "always")
    a, b = workers(), workers()
    done = subprocess.run(
        [
            *(sys.executable, "-m", "mixdesk", "chat", str(models["q4_k_m"])),
            *("--worker", a.endpoint, "--worker", b.endpoint, "--ngl", "all"),
            *("--prompt", "Hello", "--max-tokens", "8", "--json"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["text"]
    for worker in (a, b):  # llama.cpp's buffers named by the worker's address, not the relay's
        assert any(d["buffer_name"] == f"RPC0[{worker.endpoint}]" for d in result["devices"])
        assert rpc_worker.stats(worker.endpoint).received_bytes > 0
    assert set(json.loads(security.pins_file().read_text())) == {a.endpoint, b.endpoint}


# -- the tensor cache ---------------------------------------------------------------------


def test_the_tensor_cache_stays_under_its_cap_least_recently_used_first(tmp_path: Path) -> None:
    cache = TensorCache(tmp_path, max_bytes=3000)
    for i, name in enumerate([f"{n:016x}" for n in (1, 2, 3, 4)]):
        path = tmp_path / name
        path.write_bytes(bytes(1000))
        stamp = 1_000_000 + i
        import os

        os.utime(path, (stamp, stamp))
    (tmp_path / "notes.txt").write_bytes(bytes(5000))  # not llama.cpp's: never deleted
    guard = FrameGuard(on_hash=cache.touch)
    body = bytes(SET_TENSOR_HEADER) + struct.pack("<Q", 1)
    assert len(body) == SET_TENSOR_HASH_BYTES
    guard.feed(HELLO + frame(CMD_SET_TENSOR_HASH, body))  # tensor 1 used now
    assert cache.prune() == 1000
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [f"{1:016x}", f"{3:016x}", f"{4:016x}", "notes.txt"]


def test_a_frame_guard_refuses_tensors_larger_than_any_buffer() -> None:
    guard = FrameGuard()
    guard.feed(HELLO)
    with pytest.raises(Refused, match="a message of 4096 bytes"):
        guard.feed(frame(CMD_SET_TENSOR, size=4096))
    guard = FrameGuard()
    guard.feed(HELLO + frame(CMD_ALLOC_BUFFER, struct.pack("<IQ", 0, 1 << 20)))
    out = guard.feed(frame(CMD_SET_TENSOR, bytes(SET_TENSOR_HEADER + 1000)))
    assert len(out) == 9 + SET_TENSOR_HEADER + 1000 and not guard.mid_frame


def test_nothing_reaches_the_cache_without_the_secret(
    workers: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    cache = tmp_path / "tensor-cache"
    worker = workers("--cache-dir", str(cache), "--cache-max", "1MiB")
    with connect(worker.endpoint) as sock:
        with contextlib.suppress(OSError):  # refused at the first byte: the rest meets a reset
            sock.sendall(HELLO + frame(CMD_SET_TENSOR, bytes(SET_TENSOR_HEADER + (11 << 20))))
        assert read_all(sock) in (REFUSED, b"")
    assert list(cache.iterdir()) == []
    assert rpc_worker.hello(worker.endpoint).cache_bytes == 1 << 20
    assert "cache folder" in worker.output() and "at most 1.0 MiB" in worker.output()


# -- SIGPIPE ------------------------------------------------------------------------------


def sigpipe_ignored(pid: int) -> bool:
    """Whether process ``pid`` ignores SIGPIPE (its SigIgn mask in /proc)."""
    found = re.search(r"SigIgn:\s*([0-9a-f]+)", Path(f"/proc/{pid}/status").read_text())
    assert found
    return bool(int(found.group(1), 16) & (1 << (signal.SIGPIPE - 1)))


def test_worker_and_serve_ignore_sigpipe(
    workers: Callable[..., WorkerProcess], models: dict[str, Path]
) -> None:
    """llama.cpp's send() has no MSG_NOSIGNAL: a client gone mid-answer must cost a session,
    never the process. `mixdesk plan | head` keeps the default."""
    import subprocess
    import sys

    from tests.helpers.net import free_port

    assert sigpipe_ignored(workers().proc.pid)
    serve = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mixdesk",
            "serve",
            str(models["q4_k_m"]),
            "--port",
            str(free_port()),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert serve.stderr is not None
        for line in serve.stderr:  # bounded: serve ends its stderr when it exits
            if "serving" in line:
                break
        assert serve.poll() is None
        assert sigpipe_ignored(serve.pid)
    finally:
        serve.send_signal(signal.SIGINT)
        serve.communicate(timeout=30)


def test_the_engines_relay_serves_only_its_own_process(
    workers: Callable[..., WorkerProcess],
) -> None:
    """The relay llama.cpp's client talks to holds a proven link: another process on this
    machine must not borrow it."""
    import subprocess
    import sys

    from mixdesk.core.engine import rpc_relay

    worker = workers()
    local = rpc_relay.relay_for(worker.endpoint)
    assert rpc_relay.worker_of(local) == worker.endpoint
    host, port = worker_channel.parse_endpoint(local)
    assert host == "127.0.0.1" and local != worker.endpoint
    with socket.create_connection((host, port), timeout=10) as mine:  # this process: carried
        mine.sendall(HELLO)
        assert len(recv_exactly(mine, 36)) == 36
    other = subprocess.run(
        [
            sys.executable,
            "-c",
            "import socket, sys\n"
            f"s = socket.create_connection(('127.0.0.1', {port}), timeout=10)\n"
            f"s.sendall({HELLO!r})\n"
            "try:\n    data = s.recv(64)\nexcept OSError:\n    data = b''\n"
            "sys.stdout.write(repr(data))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert other.stdout == "b''", other.stderr  # closed without a byte of llama.cpp's answer
    still_serves(worker)


def test_a_failed_huge_allocation_does_not_let_a_huge_tensor_through() -> None:
    """An ALLOC_BUFFER of 2^63 fails quietly in llama.cpp; a SET_TENSOR of that size after it
    would make llama.cpp throw an uncaught length_error (abort). The cap is the device's size."""
    guard = FrameGuard(max_buffer=1 << 30)
    guard.feed(HELLO + frame(CMD_ALLOC_BUFFER, struct.pack("<IQ", 0, 1 << 63)))
    with pytest.raises(Refused, match="a message of"):
        guard.feed(frame(CMD_SET_TENSOR, size=SET_TENSOR_HEADER + (1 << 62)))
    guard = FrameGuard()  # unknown device size: at most a terabyte
    guard.feed(HELLO + frame(CMD_ALLOC_BUFFER, struct.pack("<IQ", 0, 1 << 63)))
    with pytest.raises(Refused):
        guard.feed(frame(CMD_SET_TENSOR, size=SET_TENSOR_HEADER + (1 << 62)))


def test_a_certificate_is_pinned_only_once_the_worker_proved_the_secret(
    workers: Callable[..., WorkerProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever answers first is not trusted for that: a worker that cannot prove the secret
    (here, this machine holds another one) leaves no pin behind."""
    monkeypatch.setenv(security.TLS_ENV, "always")
    worker = workers()
    security.pins_file().unlink(missing_ok=True)
    monkeypatch.setenv(security.SECRET_ENV, "ab" * 32)
    with pytest.raises(WorkerAuthError):
        rpc_worker.hello(worker.endpoint)
    pinned = json.loads(security.pins_file().read_text()) if security.pins_file().exists() else {}
    assert worker.endpoint not in pinned
    monkeypatch.delenv(security.SECRET_ENV)
    rpc_worker.hello(worker.endpoint)  # the right secret: pinned now
    assert worker.endpoint in json.loads(security.pins_file().read_text())


def test_the_relays_portable_owner_check_knows_its_own_connections() -> None:
    """Where /proc is missing (macOS, Windows) the relay asks psutil who holds a connection,
    and refuses when it is not this process (it used to let everyone through there)."""
    import subprocess
    import sys

    from mixdesk.core.engine.rpc_relay import _own_connection

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as mine:
            listener.accept()[0].close()
            assert _own_connection(mine.getsockname()[1], port)
        code = (
            "import socket,sys,time; s=socket.create_connection(('127.0.0.1',int(sys.argv[1])));"
            "print(s.getsockname()[1], flush=True); time.sleep(30)"
        )
        child = subprocess.Popen(
            [sys.executable, "-c", code, str(port)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout is not None
            theirs = int(child.stdout.readline())
            listener.accept()[0].close()
            assert not _own_connection(theirs, port)
        finally:
            child.kill()
            child.wait()
            if child.stdout is not None:
                child.stdout.close()


def test_the_front_trusts_only_its_own_llama_cpp_listener() -> None:
    """Between choosing llama.cpp's internal port and llama.cpp's bind, another program could
    take the port; the front asks who listens there, and a listener of another process is not
    llama.cpp's (it used to accept any listener on that port number)."""
    import subprocess
    import sys

    from mixdesk.core.engine.rpc_backend import _listening

    with socket.socket() as mine:
        mine.bind(("127.0.0.1", 0))
        mine.listen()
        assert _listening(mine.getsockname()[1])
    code = (
        "import socket,time; s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen();"
        "print(s.getsockname()[1], flush=True); time.sleep(30)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert not _listening(int(child.stdout.readline()))
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()


def test_one_host_opening_connections_fast_cannot_push_out_another(
    workers: Callable[..., WorkerProcess],
) -> None:
    """The room for unproven connections is made at the expense of the address holding the
    most of them: a flood from 127.0.0.2 drops its own, not 127.0.0.1's handshake."""
    worker = workers()
    host, port = worker_channel.parse_endpoint(worker.endpoint)
    patient = connect(worker.endpoint)  # from 127.0.0.1, slow to prove itself
    flood = []
    try:
        for _ in range(60):
            sock = socket.socket()
            sock.settimeout(10)
            sock.bind(("127.0.0.2", 0))
            sock.connect((host, port))
            flood.append(sock)
        assert wait_for(lambda: "still unproven when newer connections came" in worker.output(), 5)
        patient.settimeout(0.5)
        with pytest.raises(TimeoutError):
            patient.recv(1)  # still open: nothing was said to it, it was not closed
    finally:
        patient.close()
        for sock in flood:
            sock.close()
    dropped = [line for line in worker.output().splitlines() if "still unproven" in line]
    assert dropped and not [line for line in dropped if "127.0.0.1:" in line]
    still_serves(worker)


def test_the_worker_raises_its_open_file_limit(workers: Callable[..., WorkerProcess]) -> None:
    """llama.cpp's own server stops for good when its accept() runs out of descriptors: the
    worker takes all the descriptors it may have (the soft limit up to the hard one)."""
    worker = workers(
        python_prelude="import resource\nresource.setrlimit(resource.RLIMIT_NOFILE, (64, 4096))"
    )
    limits = Path(f"/proc/{worker.proc.pid}/limits").read_text()
    line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
    assert line.split()[3:5] == ["4096", "4096"], line
    still_serves(worker)


def test_a_damaged_pins_file_is_refused_not_overwritten(
    workers: Callable[..., WorkerProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(security.TLS_ENV, "always")
    worker = workers()
    security.pins_file().write_text("{not json")
    with pytest.raises(WorkerFingerprintError, match="cannot be read"):
        rpc_worker.hello(worker.endpoint)
    assert security.pins_file().read_text() == "{not json"
