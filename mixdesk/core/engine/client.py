"""The app's side of the engine: start the engine process, load, chat, cancel, survive its death.

Nothing here imports llama_cpp. Every model runs in a child process (see :mod:`.process`),
so whatever llama.cpp does to that process (abort on a bad file, GPU out of memory, a
SIGKILL from the kernel) becomes an :class:`~mixdesk.errors.EngineCrashedError` here, with
the cause read from the exit status and llama.cpp's log, and a new engine can start. Starting
that process, writing to it, reading its events and noticing its death is
:class:`~mixdesk.core.engine.child.EngineProcess`, which :class:`Engine` builds on.

Typical use::

    with Engine() as engine:
        engine.load(plan_load(resolve_file("model.gguf"), hardware.detect()).config)
        stream = engine.chat([ChatMessage("user", "Hello")])
        for delta in stream:
            print(delta.text, end="")
        print(stream.result.stats.eval_tps)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from mixdesk.core.chat.template import ChatMessage
from mixdesk.core.engine.child import EngineProcess, failure_to_error
from mixdesk.core.engine.protocol import (
    BufferReport,
    Buffers,
    CancelCommand,
    ChatCommand,
    ChatDone,
    DeviceMemory,
    DryRunCommand,
    EngineFailure,
    EngineInfo,
    KvCacheRequest,
    LoadCommand,
    LoadConfig,
    LoadProgress,
    ModelInfo,
    SamplingParams,
    TextDelta,
)
from mixdesk.core.engine.stream import AnswerStream
from mixdesk.core.engine.validate import validate_load_config, validate_sampling
from mixdesk.errors import (
    EngineBusyError,
    EngineCrashedError,
    NoModelLoadedError,
)

log = logging.getLogger(__name__)

#: 60 updates a second: smooth to read, and cheap for the app to receive.
DEFAULT_STREAM_INTERVAL_S = 1 / 60


class ChatStream(AnswerStream):
    """The answer of the local engine to one chat request."""

    def __init__(self, engine: Engine, request_id: int) -> None:
        super().__init__()
        self._engine = engine
        self.request_id = request_id

    def __next__(self) -> TextDelta:
        if self.result is not None:
            raise StopIteration
        while True:
            event = self._engine._next_event(during="answering")
            if isinstance(event, TextDelta) and event.request_id == self.request_id:
                self._text.append(event.text)
                return event
            if isinstance(event, ChatDone) and event.request_id == self.request_id:
                self.result = event
                self._engine._active = None
                raise StopIteration
            if isinstance(event, DeviceMemory):
                self._engine._calibrated(event)
            if isinstance(event, EngineFailure):
                self._engine._active = None
                raise failure_to_error(event)

    def cancel(self) -> None:
        """Ask the engine to stop this answer."""
        if self.result is None:
            self._engine._send(CancelCommand(self.request_id))

    def close(self) -> None:
        """Stop the answer if it is still running and wait for the engine to be ready."""
        if self._engine.alive:
            super().close()


class Engine(EngineProcess):
    """One engine process at a time; loading a model starts a fresh one.

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
        super().__init__(log_dir=log_dir, command=command, start_timeout=start_timeout)
        self._active: ChatStream | None = None
        self._fresh = False  # started and never asked to load: a load can reuse it
        #: Runtime overhead measured per device after the last load's first prompt batch.
        self.overheads: dict[str, int] = {}
        #: Called with the loaded model and each device's free memory after the first prompt
        #: batch; returns the overheads it kept. The load service sets
        #: it (the engine reports device memory; planning keeps what it means).
        self.on_device_memory: Callable[[ModelInfo, dict[str, int]], dict[str, int]] | None = None

    # -- lifecycle --------------------------------------------------------------------

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def start(self) -> EngineInfo:
        """Start a new engine process (ending any running one) and wait until it is ready."""
        info = super().start()
        self._fresh = True
        return info

    def close(self) -> None:
        """End the engine process and free all its memory (RAM and VRAM)."""
        self._active = None
        super().close()

    unload = close

    # -- commands ---------------------------------------------------------------------

    def load(
        self, config: LoadConfig, *, on_progress: Callable[[float], None] | None = None
    ) -> ModelInfo:
        """Load a model into a fresh engine process.

        Args:
            config: the model file and how to load it.
            on_progress: called with 0..1 as llama.cpp loads the weights.

        Returns:
            The loaded model's description.

        Raises:
            ModelNotFoundError, NotAGgufError, CorruptModelError, UnsupportedArchitectureError,
            LegacyLayoutError, OutOfMemoryError, ModelLoadError: the load failed (the engine
            lives on, without a model).
            EngineCrashedError: llama.cpp killed the engine while loading.
        """
        validate_load_config(config)
        self._ensure_fresh(config)
        self._fresh = False
        self._devices = config.rpc_servers  # named if one goes away and takes the engine
        self._send(LoadCommand(config))
        while True:
            event = self._next_event(during="loading the model", model_path=config.model_path)
            if isinstance(event, LoadProgress):
                if on_progress is not None:
                    on_progress(event.fraction)
            elif isinstance(event, ModelInfo):
                self.model = event
                log.info("loaded %s: %s", config.model_path, event)
                return event
            elif isinstance(event, EngineFailure):
                raise failure_to_error(event)

    def dry_run(self, config: LoadConfig) -> Buffers:
        """What llama.cpp would allocate for ``config``, without allocating it: the buffers it
        logs in ``no_alloc`` mode (compute buffers exact per backend; model and KV 0).

        The engine stays fresh: the next :meth:`load` of the same devices reuses it.

        Raises:
            ModelLoadError: llama.cpp could not read the model.
            EngineCrashedError: llama.cpp killed the engine.
        """
        validate_load_config(config)
        self._ensure_fresh(config)
        self._send(DryRunCommand(config))
        while True:
            event = self._next_event(during="checking the plan", model_path=config.model_path)
            if isinstance(event, BufferReport):
                self._devices = config.rpc_servers
                return event.buffers
            if isinstance(event, EngineFailure):
                raise failure_to_error(event)

    def _calibrated(self, memory: DeviceMemory) -> None:
        """Keep what the runtime used on each device beyond llama.cpp's buffers (the planner's
        overhead next time); a failure to write it never stops an answer."""
        if self.model is None or self.on_device_memory is None:
            return
        try:
            self.overheads = self.on_device_memory(self.model, memory.free)
        except OSError:
            log.warning("could not keep the measured overhead", exc_info=True)

    def _ensure_fresh(self, config: LoadConfig) -> None:
        """A process with no model and no other devices registered than ``config``'s."""
        if not self._fresh or not self.alive or self._devices not in ((), config.rpc_servers):
            self.start()
            self._devices = ()

    def chat(
        self,
        messages: Sequence[ChatMessage],
        sampling: SamplingParams | None = None,
        *,
        stream_interval_s: float = DEFAULT_STREAM_INTERVAL_S,
        report_tokens: bool = False,
        cache: KvCacheRequest | None = None,
    ) -> ChatStream:
        """Start an answer to ``messages``; returns the stream of its text.

        Args:
            messages: the conversation so far, ending with the user's turn.
            sampling: sampling settings (defaults: :class:`SamplingParams`).
            stream_interval_s: the shortest time between two deltas (0: one per token).
            report_tokens: have the prompt's and the answer's token ids in the
                :class:`ChatDone` (parity checks).
            cache: keep the conversation's KV state and resume from the longest saved
                prefix (:class:`KvCacheRequest`); None: only what the KV cache holds now.

        Raises:
            NoModelLoadedError: no model is loaded.
            EngineBusyError: another answer is still streaming.
        """
        sampling = sampling or SamplingParams()
        validate_sampling(sampling)
        if self._dead is not None:
            raise self._dead
        if not self.alive or self.model is None:
            raise NoModelLoadedError("No model is loaded; load a model first.")
        if self._active is not None and self._active.result is None:
            raise EngineBusyError("The engine is still answering; stop that answer first.")
        request_id = next(self._ids)
        self._send(
            ChatCommand(
                request_id, tuple(messages), sampling, stream_interval_s, report_tokens, cache
            )
        )
        self._active = ChatStream(self, request_id)
        return self._active

    def cancel(self) -> None:
        """Stop the current answer, if any (safe to call from any thread)."""
        active = self._active
        if active is not None:
            active.cancel()


__all__ = [
    "ChatDone",
    "ChatMessage",
    "ChatStream",
    "Engine",
    "EngineCrashedError",
    "LoadConfig",
    "ModelInfo",
    "SamplingParams",
    "TextDelta",
]
