"""The app's hold on the engine's child process: start it, write commands, read events.

:class:`EngineProcess` starts ``python -m mixdesk.core.engine.process`` (or the frozen app's
``--engine-process``) with its own log file, writes commands on its stdin, and reads its
events on a thread into a queue. If the process dies (llama.cpp aborts on a bad file, a GPU
runs out of memory, the kernel kills it), the next read raises an
:class:`~mixdesk.errors.EngineCrashedError` whose sentence comes from the exit status and
llama.cpp's log (:mod:`.diagnose`). What the app asks of the process (load, dry run, chat,
cancel) is :class:`mixdesk.core.engine.client.Engine`, built on this class.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from mixdesk import errors, paths
from mixdesk.core.engine import diagnose
from mixdesk.core.engine.protocol import (
    EngineCommand,
    EngineFailure,
    EngineInfo,
    ModelInfo,
    ShutdownCommand,
)
from mixdesk.core.engine.wire import decode, encode_command
from mixdesk.errors import EngineCrashedError, MixdeskError, NoModelLoadedError

log = logging.getLogger(__name__)

_KEEP_ENGINE_LOGS = 10


class _Died:
    """Queue sentinel: the engine process ended."""

    def __init__(self, returncode: int | None) -> None:
        self.returncode = returncode


def engine_command() -> list[str]:
    """Return the command line that starts an engine process (also inside a frozen bundle)."""
    if getattr(sys, "frozen", False):
        return [sys.executable, "--engine-process"]
    return [sys.executable, "-m", "mixdesk.core.engine.process"]


def failure_to_error(failure: EngineFailure) -> MixdeskError:
    """Rebuild the engine's error as the same MixdeskError class, with the engine's sentence."""
    return errors.from_wire(failure.code, failure.message, failure.details)


class EngineProcess:
    """One engine child process at a time: started, written to, read from, ended.

    Args:
        log_dir: where the engine logs (llama.cpp's stderr) go; the user log dir by default.
        command: the command that starts the engine (tests may wrap it).
        start_timeout: seconds to wait for a new engine to report ready.
    """

    def __init__(
        self,
        *,
        log_dir: Path | None = None,
        command: Sequence[str] | None = None,
        start_timeout: float = 120.0,
    ) -> None:
        self._log_dir = log_dir
        self._command = list(command) if command else engine_command()
        self._start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._events: queue.Queue[object] = queue.Queue()
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._dead: EngineCrashedError | None = None
        self._devices: tuple[str, ...] = ()  # RPC servers registered in the process
        self.info: EngineInfo | None = None
        self.model: ModelInfo | None = None
        self.log_path: Path | None = None

    @property
    def alive(self) -> bool:
        """Whether an engine process is running."""
        return self._proc is not None and self._proc.poll() is None and self._dead is None

    @property
    def pid(self) -> int | None:
        """The engine process's id, if one runs."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> EngineInfo:
        """Start a new engine process (ending any running one) and wait until it is ready."""
        self.close()
        log_dir = paths.ensure_dir(self._log_dir or paths.log_dir())
        _prune_logs(log_dir)
        self.log_path = (
            log_dir / f"engine-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{next(self._ids)}.log"
        )
        env = dict(os.environ)
        env.update(
            # ggml's abort handler would otherwise attach gdb to print a backtrace.
            GGML_NO_BACKTRACE="1",
            # CUDA numbers GPUs fastest-first by default; NVML (the planner's source) by PCI
            # bus. The same order on both sides makes the plan's split the one that loads.
            CUDA_DEVICE_ORDER="PCI_BUS_ID",
            PYTHONUNBUFFERED="1",
            PYTHONIOENCODING="utf-8",
        )
        with self.log_path.open("ab") as log_file:
            self._proc = subprocess.Popen(
                self._command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_file,
                env=env,
                # Out of the terminal's process group: Ctrl-C in the terminal cancels an
                # answer (the app decides) instead of killing the engine.
                start_new_session=os.name == "posix",
            )
        self._events = queue.Queue()
        self._dead = None
        self.model = None
        assert self._proc.stdout is not None
        threading.Thread(
            target=self._read_events,
            args=(self._proc, self._proc.stdout, self._events),
            daemon=True,
        ).start()
        event = self._next_event(during="starting", timeout=self._start_timeout)
        if isinstance(event, EngineFailure):
            self.close()
            raise failure_to_error(event)
        if not isinstance(event, EngineInfo):
            self.close()
            raise errors.EngineError(f"The engine sent an unexpected first message ({event!r}).")
        self.info = event
        log.info(
            "engine %s started (llama-cpp-python %s, GPU offload %s), log %s",
            event.pid,
            event.llama_cpp_version,
            event.supports_gpu_offload,
            self.log_path,
        )
        return event

    def close(self) -> None:
        """End the engine process and free all its memory (RAM and VRAM)."""
        proc, self._proc = self._proc, None
        self.model = None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                self._write(proc, ShutdownCommand())
                assert proc.stdin is not None
                proc.stdin.close()
            except OSError:
                pass
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        log.info("engine %s ended (exit status %s)", proc.pid, proc.returncode)

    def _send(self, message: EngineCommand) -> None:
        if self._dead is not None:
            raise self._dead
        if self._proc is None:
            raise NoModelLoadedError("The engine is not running; load a model first.")
        try:
            self._write(self._proc, message)
        except OSError:
            # The process is gone; the reader thread will report how it ended.
            self._next_event(during="receiving a command", timeout=10)

    def _write(self, proc: subprocess.Popen[bytes], message: EngineCommand) -> None:
        data = encode_command(message)
        with self._send_lock:
            assert proc.stdin is not None
            proc.stdin.write(data)
            proc.stdin.flush()

    def _next_event(
        self, *, during: str, timeout: float | None = None, model_path: str | None = None
    ) -> object:
        if self._dead is not None:
            raise self._dead
        try:
            event = self._events.get(timeout=timeout)
        except queue.Empty:
            raise errors.EngineError(
                f"The engine did not answer within {timeout:.0f} s while {during}; try again."
            ) from None
        if isinstance(event, _Died):
            tail = diagnose.read_tail(self.log_path) if self.log_path else ""
            model = model_path or (self.model.path if self.model else None)
            self._dead = diagnose.engine_death(
                event.returncode, tail, during=during, model_path=model, workers=self._devices
            )
            self.model = None
            log.error(
                "%s\nlast lines of the engine log %s:\n%s",
                self._dead,
                self.log_path,
                "\n".join(tail.splitlines()[-25:]),
            )
            raise self._dead
        return event

    @staticmethod
    def _read_events(
        proc: subprocess.Popen[bytes], stdout: IO[bytes], events: queue.Queue[object]
    ) -> None:
        try:
            for line in stdout:
                try:
                    events.put(decode(line))
                except (ValueError, KeyError, TypeError):
                    log.warning("unreadable engine message: %r", line[:200])
        except (OSError, ValueError):
            pass  # stdout closed by close()
        events.put(_Died(proc.wait()))


def _prune_logs(log_dir: Path) -> None:
    logs = sorted(log_dir.glob("engine-*.log"), key=lambda p: p.stat().st_mtime)
    for old in logs[:-_KEEP_ENGINE_LOGS]:
        with contextlib.suppress(OSError):
            old.unlink()
