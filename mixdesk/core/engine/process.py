"""The engine process: the only place that owns a ``llama_cpp.Llama``.

Started by :class:`mixdesk.core.engine.client.Engine` as a child process. If llama.cpp
aborts (a bad model file, a GPU out of memory) only this process dies; the app reads the
exit status and the log and carries on. This module is the process's plumbing (its file
descriptors, its log, its reader thread and its command loop); what it does with llama.cpp
is :class:`~mixdesk.core.engine.host.ModelHost`.

Commands arrive as JSON lines on stdin (see :mod:`.protocol`); events go out on a private
duplicate of stdout, and file descriptor 1 is pointed at stderr so that nothing llama.cpp
prints can corrupt the protocol. A reader thread watches stdin, so a cancel is seen while
an answer is being generated, and the process exits as soon as the app goes away (EOF).
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import sys
import threading
import time
from typing import IO

from mixdesk.core.engine.host import ModelHost
from mixdesk.core.engine.protocol import (
    CancelCommand,
    ChatCommand,
    DryRunCommand,
    EngineCommand,
    EngineFailure,
    LoadCommand,
    ShutdownCommand,
)
from mixdesk.core.engine.rpc_relay import RELAY_LINE
from mixdesk.core.engine.wire import decode_command, encode, failure
from mixdesk.errors import MixdeskError

log = logging.getLogger(__name__)

_EXIT_GRACE_S = 2.0


class _LogTee:
    """sys.stderr replacement: passes llama.cpp's log through and keeps its last lines, and
    for good the lines saying which relay is which worker: written once per process, they
    name the worker in the buffer lines of every later load (after many dry runs the last
    lines no longer reach back to them)."""

    def __init__(self, target: IO[str], keep: int = 4000) -> None:
        self._target = target
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)
        self.pinned: list[str] = []

    def write(self, text: str) -> int:
        if text.startswith(RELAY_LINE):
            self.pinned.append(text)
        self.lines.append(text)
        return self._target.write(text)

    def flush(self) -> None:
        self._target.flush()

    def text(self) -> str:
        return "".join(self.pinned) + "".join(self.lines)


class _Channel:
    """Writes protocol events; safe to call from any thread."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()

    def send(self, data: bytes) -> None:
        with self._lock:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]


def _reader(host: ModelHost, commands: queue.Queue[EngineCommand]) -> None:
    """Read commands from stdin; cancels act at once, the rest queue for the main thread."""
    for raw in sys.stdin.buffer:
        try:
            command = decode_command(raw)
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable command: %r", raw[:200])
            continue
        if isinstance(command, CancelCommand):
            host.cancelled.add(command.request_id)
            continue
        commands.put(command)
    # The app has gone (closed our stdin or died). Stop any answer and let the main thread
    # finish cleanly; if it is stuck in llama.cpp (a long load), end the process anyway.
    host.cancelled.add(host.current_request)
    commands.put(ShutdownCommand())
    time.sleep(_EXIT_GRACE_S)
    os._exit(0)


def main() -> int:
    """Run the engine until told to shut down or until stdin closes."""
    proto_fd = os.dup(1)
    os.dup2(2, 1)  # stray C-level prints now land in the log, not in the protocol
    sys.stdout = sys.stderr
    tee = _LogTee(sys.stderr)
    sys.stderr = tee
    channel = _Channel(proto_fd)
    try:
        host = ModelHost(channel.send, tee.text)
        channel.send(encode(host.info()))
    except Exception as err:  # noqa: BLE001 - report any import failure to the app, then exit
        channel.send(encode(EngineFailure("engine", f"The engine could not start: {err}.")))
        return 1
    commands: queue.Queue[EngineCommand] = queue.Queue()
    threading.Thread(target=_reader, args=(host, commands), daemon=True).start()
    while True:
        command = commands.get()
        request_id = command.request_id if isinstance(command, ChatCommand) else 0
        try:
            if isinstance(command, LoadCommand):
                host.load(command.config)
            elif isinstance(command, DryRunCommand):
                host.dry_run(command.config)
            elif isinstance(command, ChatCommand):
                host.chat(
                    request_id,
                    command.messages,
                    command.sampling,
                    stream_interval_s=command.stream_interval_s,
                    report_tokens=command.report_tokens,
                    cache=command.cache,
                )
            elif isinstance(command, ShutdownCommand):
                host.close()
                return 0
        except MixdeskError as err:
            channel.send(encode(failure(err, str(err), request_id)))
        except Exception as err:
            log.exception("engine command failed")
            channel.send(encode(EngineFailure("engine", f"The engine failed: {err}.", request_id)))


if __name__ == "__main__":
    sys.exit(main())
