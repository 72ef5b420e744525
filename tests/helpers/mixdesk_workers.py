"""`mixdesk worker` child processes for tests: real llama.cpp RPC servers behind MixDesk's front."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mixdesk.core.machine import rpc_worker
from mixdesk.errors import WorkerError
from tests.helpers.net import free_port


@dataclass
class WorkerProcess:
    """A `mixdesk worker` child process."""

    proc: subprocess.Popen[bytes]
    endpoint: str
    log: Path

    def output(self) -> str:
        """What the worker printed so far."""
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """End it at once (SIGKILL), as a machine that goes away would."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_worker(
    tmp_path: Path,
    *extra: str,
    python_prelude: str = "",
    host: str = "127.0.0.1",
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> WorkerProcess:
    """Start `mixdesk worker` on a free loopback port (or ``port``) and wait until it answers
    the handshake (with the secret it shares with this process through the config folder).

    ``python_prelude`` runs before the CLI in the child (to give it another version).
    """
    port = port or free_port()
    log = tmp_path / f"worker-{port}.log"
    args = ["worker", "--host", host, "--port", str(port), "--threads", "1", *extra]
    code = f"{python_prelude}\nimport sys\nfrom mixdesk.cli import main\nsys.exit(main({args!r}))"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env={**os.environ, **(env or {})},
        )
    endpoint = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            rpc_worker.hello(endpoint, timeout=1)
            return WorkerProcess(proc, endpoint, log)
        except WorkerError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"the worker did not start: {log.read_text()}")


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start `mixdesk worker` processes; all end after the test."""
    started: list[WorkerProcess] = []

    def start(*extra: str, **kwargs: Any) -> WorkerProcess:
        worker = start_worker(tmp_path, *extra, **kwargs)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.proc.poll() is None:
            worker.proc.send_signal(signal.SIGINT)
            try:
                worker.proc.wait(5)
            except subprocess.TimeoutExpired:
                worker.kill()
